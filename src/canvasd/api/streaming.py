"""Server-sent events for ``stream=true`` (spec §6.4).

Wire format: ``event: <type>`` + one ``data: <json>`` line + a blank line per event; no
``[DONE]`` sentinel — the body ends after the last ``*.completed`` event. Partial images are the
engine's `PartialImage` events (decoded intermediate predictions of the sampler), fitted and
encoded like the final image. Errors found before generation are ordinary HTTP JSON errors (the
route raises them before this response starts); a failure mid-stream is ``event: error`` with
``data: {"type": "error", "error": {...}}`` and then the stream ends.

``n > 1`` (undocumented upstream): partial events are sent as each image produces them (their
``partial_image_index`` counts per image, 0-based), then one ``*.completed`` event per image in
index order. Each completed event's usage covers its own image; input tokens are counted on the
first one, so summing the events gives the request's usage.

A `: keepalive` comment goes out every `keepalive_s` seconds (setting `sse_keepalive_s`) without
events, while the job waits in the queue or steps, so proxies don't cut idle streams; SSE parsers
(the SDKs' included) skip comment lines. A client disconnect cancels the job (Starlette cancels this generator).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable

import anyio
from fastapi.responses import StreamingResponse

from canvasd.api import errors as E
from canvasd.api.protocol import (
    CompletedEvent,
    ErrorEvent,
    PartialImageEvent,
    StreamError,
    Usage,
    event_prefix,
    per_image_usage,
)
from canvasd.api.render import Renderer, b64
from canvasd.api.rules import Plan
from canvasd.engine.client import JobHandle
from canvasd.engine.events import JobFailed, JobFinished, PartialImage

log = logging.getLogger("canvasd.api")

KEEPALIVE_S = 15.0  # default of the `sse_keepalive_s` setting


def frame(event_type: str, payload: str) -> bytes:
    return f"event: {event_type}\ndata: {payload}\n\n".encode()


def error_frame(err: E.OpenAIError) -> bytes:
    ev = ErrorEvent(error=StreamError(message=err.message, type=err.type, param=err.param, code=err.code))
    return frame("error", ev.model_dump_json())


def sse_response(
    handle: JobHandle,
    plan: Plan,
    usage_for: Callable[[int], Usage],
    map_error: Callable[[BaseException], E.OpenAIError],
    access: dict[str, Any],
    renderer: Renderer,
    keepalive_s: float = KEEPALIVE_S,
) -> StreamingResponse:
    """`usage_for(n_images)` computes the request usage (off-loop); `map_error` turns an engine
    failure into the OpenAI error to report."""
    out = plan.out
    prefix = event_prefix(out)
    common = dict(size=out.size, quality=out.quality, background=out.background,
                  output_format=out.output_format)

    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            async for ev in handle.events():
                await queue.put(ev)

        pump_task = asyncio.create_task(pump())
        partial_counts: dict[int, int] = {}
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(queue.get(), keepalive_s)
                except asyncio.TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if isinstance(ev, PartialImage):
                    data = await renderer.one(ev.image, out)
                    idx = partial_counts.get(ev.image_index, 0)
                    partial_counts[ev.image_index] = idx + 1
                    body = PartialImageEvent(
                        type=f"{prefix}.partial_image", b64_json=b64(data), created_at=int(time.time()),
                        partial_image_index=idx, **common)
                    yield frame(body.type, body.model_dump_json())
                elif isinstance(ev, JobFinished):
                    access.update({f"{k}": round(v, 3) for k, v in ev.timings.items()})
                    t0 = time.perf_counter()
                    encoded = await renderer.all(ev.images, out)
                    usage = await anyio.to_thread.run_sync(usage_for, len(encoded))
                    access["encode_s"] = round(time.perf_counter() - t0, 3)
                    for i, data in enumerate(encoded):
                        body = CompletedEvent(
                            type=f"{prefix}.completed", b64_json=b64(data), created_at=int(time.time()),
                            usage=per_image_usage(usage, i, out),
                            safety_identifier=plan.safety_identifier or None, **common)
                        yield frame(body.type, body.model_dump_json(exclude_none=True))
                    return
                elif isinstance(ev, JobFailed):
                    err = map_error(ev.error)
                    access["error"] = err.code or err.type
                    yield error_frame(err)
                    return
        except (asyncio.CancelledError, GeneratorExit):
            access["disconnected"] = True
            raise
        except Exception as exc:  # noqa: BLE001 - report mid-stream, then end the stream
            log.exception("stream failed")
            yield error_frame(map_error(exc))
        finally:
            pump_task.cancel()
            if not handle.done:
                handle.cancel()

    return StreamingResponse(
        events(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )

