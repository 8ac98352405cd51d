"""Running the app under uvicorn with the guards a lone server needs, and a shutdown that keeps
its deadline.

Connections (`GuardedH11Protocol`, uvicorn's h11 protocol with three additions):
- a connection that has not sent a complete request head within `header_timeout_s` of opening
  (or of its first byte after an idle keep-alive pause) is closed: slowloris clients and idle
  sockets that never send a request cannot pile up;
- at most `max_connections` open connections: the next one gets a 503 in the OpenAI error
  envelope and is closed before anything is read;
- the request head is limited to `max_header_bytes` (h11 answers 400 beyond it).
A slow request *body* is the app's business (`canvasd.api.bodytimeout`); idle keep-alive
connections close after `keepalive_timeout_s` (uvicorn's own timer).

Shutdown (SIGTERM or SIGINT, `CanvasdServer`): at once the listening sockets close, idle
connections close, the engine stops admitting (new requests on open connections get a 503), its
queued jobs fail with a retryable 503, and running jobs get `shutdown_timeout_s` to finish; then
they are cancelled with an OpenAI error (an `error` event in streams), their responses are
written, and the process exits 0. uvicorn's own graceful timeout is only a backstop behind the
engine's deadline. Forwarded headers are never applied by uvicorn (`proxy_headers=False`): the
app decides whom to trust (`canvasd.api.urls`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from canvasd.settings import Settings

log = logging.getLogger("canvasd.server")

# the engine checks its deadline between denoising steps: a step already running finishes first
STEP_GRACE_S = 5.0


def _overloaded_response() -> bytes:
    body = json.dumps({"error": {
        "message": "The server has too many open connections; retry shortly.",
        "type": "server_error", "param": None, "code": "server_overloaded"}}).encode()
    head = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: 1\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n")
    return head + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a request-head deadline and a connection cap."""

    header_timeout_s: float = 10.0
    max_connections: int = 1000

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            log.warning("refusing a connection: %d open (max_connections)", len(self.connections) - 1)
            transport.write(_overloaded_response())
            transport.close()
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # bytes of a new request head arrived after a keep-alive pause: its head has a deadline too
        if self.conn.their_state is h11.IDLE and self._head_timer is None and not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        # still waiting for a complete request head: a fresh connection that sent nothing or a
        # partial head (idle keep-alive connections are left to uvicorn's keep-alive timer)
        waiting = self.conn.their_state is h11.IDLE
        fresh = self.cycle is None
        partial = bool(self.conn.trailing_data[0])
        if waiting and (fresh or partial):
            log.info("closing a connection that sent no complete request head in %.0fs", self.header_timeout_s)
            self.transport.close()


def guarded_protocol(settings: Settings) -> type[GuardedH11Protocol]:
    """The protocol class with this server's limits (uvicorn instantiates it per connection)."""
    return type("CanvasdH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": settings.header_timeout_s, "max_connections": settings.max_connections})


class CanvasdServer(uvicorn.Server):
    """uvicorn.Server whose shutdown starts the app's drain at once and exits 0 afterwards."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]):
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: Any = None) -> None:
        # runs on the event loop within 0.1 s of the signal, before uvicorn waits for connections
        self._on_shutdown()
        await super().shutdown(sockets)
        # uvicorn re-raises the captured signal after a graceful stop (exit status 143 for
        # SIGTERM); a shutdown that kept its deadline is a clean exit
        self._captured_signals.clear()


def uvicorn_config(app: Any, settings: Settings, *, log_level: str = "info", **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = dict(
        host=settings.host, port=settings.port, log_level=log_level, lifespan="on",
        http=guarded_protocol(settings), proxy_headers=False,
        timeout_keep_alive=settings.keepalive_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=settings.shutdown_timeout_s + STEP_GRACE_S,
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(settings: Settings, *, log_level: str = "info") -> None:
    from canvasd.api.app import create_app

    app = create_app(settings)
    server = CanvasdServer(uvicorn_config(app, settings, log_level=log_level),
                           on_shutdown=app.state.service.begin_drain)
    server.run()
