"""The renderer bounds how many images are fitted/encoded at once, and encodes real bytes."""

from __future__ import annotations

import asyncio
import io
import threading
import time

from PIL import Image

from canvasd.api import render
from canvasd.api.render import Renderer
from canvasd.api.rules import OutputOptions
from canvasd.settings import load_settings


def out_options(**kw) -> OutputOptions:
    base = dict(endpoint="generations", shape="gpt", response_format="b64_json", output_format="png",
                compression=None, transparent=True, width=256, height=128, quality="low",
                background="transparent", stream=False, partial_images=0)
    base.update(kw)
    return OutputOptions(**base)


async def test_renderer_runs_at_most_threads_at_once(monkeypatch):
    active, peak, lock = 0, 0, threading.Lock()

    def slow_render(image, out):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return b"x"

    monkeypatch.setattr(render, "render_one", slow_render)
    image = Image.new("RGBA", (8, 8))
    for threads in (1, 2):
        peak = 0
        results = await asyncio.gather(*(Renderer(threads).one(image, out_options()) for _ in range(3)))
        assert results == [b"x"] * 3
        # three separate renderers do not share a limit: peak is 3 whatever `threads` says
        assert peak == 3
        peak = 0
        shared = Renderer(threads)
        await asyncio.gather(*(shared.one(image, out_options()) for _ in range(6)))
        assert peak == threads


async def test_renderer_fits_and_encodes_every_image():
    images = [Image.new("RGBA", (64, 64), (255, 0, 0, 255)), Image.new("RGBA", (64, 64), (0, 0, 255, 0))]
    blobs = await Renderer(1).all(images, out_options())
    decoded = [Image.open(io.BytesIO(b)) for b in blobs]
    assert [d.format for d in decoded] == ["PNG", "PNG"]
    assert [d.size for d in decoded] == [(256, 128), (256, 128)]
    assert decoded[0].convert("RGBA").getpixel((128, 64)) == (255, 0, 0, 255)
    assert decoded[1].convert("RGBA").getpixel((128, 64))[3] == 0


def test_render_threads_setting(monkeypatch):
    monkeypatch.setenv("CANVASD_RENDER_THREADS", "3")
    assert load_settings().render_threads == 3
    assert Renderer(None).threads == render.default_render_threads() >= 1
