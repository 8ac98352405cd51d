"""Turn engine images into response bytes: fit to the requested size, encode.

CPU work, so it runs on worker threads (never on the event loop), and through one `Renderer` per
server whose limiter bounds how many images are encoded at once: on a 2-core machine every
extra encoding thread takes a core from the engine's torch threads, and a torch parallel region
waits for its slowest thread, so unbounded encoding under load slows every batch in flight."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import weakref
from typing import TYPE_CHECKING

import anyio

from canvasd import metrics
from canvasd.api.rules import OutputOptions
from canvasd.host import usable_cores

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

log = logging.getLogger("canvasd.api")


def render_one(image: "Image", out: OutputOptions) -> bytes:
    from canvasd.media.encode import encode_image
    from canvasd.media.resize import fit_image

    t0 = time.perf_counter()
    if out.output_format == "svg":  # traced at the generated size, scaled by the SVG itself
        from canvasd.media.vectorize import vectorize

        data = vectorize(image, out.width, out.height, out.transparent, out.svg_effort)
        metrics.ENCODE_SECONDS.observe(time.perf_counter() - t0)
        return data
    if image.size != (out.width, out.height):
        image = fit_image(image, out.width, out.height)
    data = encode_image(image, out.output_format, out.compression, out.transparent)
    metrics.ENCODE_SECONDS.observe(time.perf_counter() - t0)
    return data


def default_render_threads() -> int:
    return max(1, usable_cores() // 2)


class Renderer:
    """`render_one` on worker threads, at most `threads` images at a time."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or default_render_threads()
        # anyio limiters belong to one event loop; tests and the bench run several loops.
        self._limiters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _limiter(self) -> anyio.CapacityLimiter:
        loop = asyncio.get_running_loop()
        if (lim := self._limiters.get(loop)) is None:
            lim = self._limiters[loop] = anyio.CapacityLimiter(self.threads)
        return lim

    async def one(self, image: "Image", out: OutputOptions) -> bytes:
        return await anyio.to_thread.run_sync(render_one, image, out, limiter=self._limiter())

    async def all(self, images: list["Image"], out: OutputOptions) -> list[bytes]:
        return [await self.one(im, out) for im in images]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

