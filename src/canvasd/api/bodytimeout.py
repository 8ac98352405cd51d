"""A request body that stops arriving is refused, not waited for forever.

Pure ASGI middleware: while the body is incomplete, each wait for its next chunk may last at most
`timeout_s`; past that the route's read raises a 408 in the OpenAI envelope (a body that promises
1000 bytes and sends 10 ties up a connection and a task for `timeout_s` only). Once the body is
complete, `receive` is passed through untouched: the routes then wait on it for the client's
disconnect, which may take as long as a generation.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from canvasd.api import errors as E


class BodyReadTimeout:
    def __init__(self, app: ASGIApp, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.timeout_s <= 0:
            await self.app(scope, receive, send)
            return
        complete = False

        async def guarded_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                raise E.OpenAIError(
                    408, f"The request body was not received in time (no data for {self.timeout_s:g} "
                    "seconds).", code="request_timeout") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        await self.app(scope, guarded_receive, send)
