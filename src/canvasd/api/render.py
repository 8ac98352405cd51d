"""Turn engine images into response bytes: fit to the requested size, encode. CPU work — callers
run these on a worker thread, never on the event loop."""

from __future__ import annotations

import base64
import logging
import time
from typing import TYPE_CHECKING, Any

from canvasd import metrics
from canvasd.api.rules import OutputOptions

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

log = logging.getLogger("canvasd.api")


def render_one(image: "Image", out: OutputOptions) -> bytes:
    from canvasd.media.encode import encode_image
    from canvasd.media.resize import fit_image

    t0 = time.perf_counter()
    if image.size != (out.width, out.height):
        image = fit_image(image, out.width, out.height)
    data = encode_image(image, out.output_format, out.compression, out.transparent)
    metrics.ENCODE_SECONDS.observe(time.perf_counter() - t0)
    return data


def render_all(images: list["Image"], out: OutputOptions) -> list[bytes]:
    return [render_one(im, out) for im in images]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def count_tokens(backend: Any, prompt: str) -> int:
    """Prompt tokens from the backend's own tokenizer; a word count if it cannot tell."""
    if not prompt:
        return 0
    try:
        return int(backend.count_tokens(prompt))
    except Exception:  # noqa: BLE001 - usage must never fail a finished generation
        log.warning("count_tokens failed for %s; using a word count", getattr(backend, "id", "?"),
                    exc_info=True)
        return len(prompt.split())
