"""Helpers for the playground's browser tests and its screenshot script: a live server with the
packaged embedded model, the system chromium for Playwright, and decoding what the page shows."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
from pathlib import Path

import httpx
from conftest import LiveServer, make_settings, start_server
from PIL import Image

from canvasd.settings import EMBEDDED_MODEL_ID, ModelSettings
from canvasd.backends.registry import ModelRegistry

# Playwright's own browser download cannot run here: tests use Debian's chromium (see .ci/run).
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
READY_TIMEOUT_S = 300  # the embedded model loads in seconds; a busy CI machine can be slow


def chromium_path() -> str | None:
    if os.environ.get("CANVASD_CHROMIUM"):
        return os.environ["CANVASD_CHROMIUM"]
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def launch_chromium(playwright):  # -> playwright Browser
    return playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])


def start_embedded_server(tmp: Path, **overrides) -> LiveServer:
    """uvicorn on a loopback port serving the packaged embedded model, as `canvasd serve` does."""
    settings = make_settings(tmp, **overrides)
    settings.models = [ModelSettings(id=EMBEDDED_MODEL_ID, backend="emoji")]
    for attempt in range(3):  # a free port can be taken by another process before uvicorn binds it
        try:
            server = start_server(settings, ModelRegistry(settings), wait_ready=False)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    deadline = time.monotonic() + READY_TIMEOUT_S
    while httpx.get(f"{server.url}/ready", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError("the embedded model did not load")
        time.sleep(0.2)
    return server


def data_url_image(src: str) -> Image.Image:
    """A `data:image/...;base64,` URL (what the page's <img> shows) decoded."""
    assert src.startswith("data:image/"), src[:40]
    img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    img.load()
    return img


def sse_completed_images(text: str) -> list[Image.Image]:
    """The final images of a text/event-stream body (its `*.completed` events)."""
    images = []
    for line in text.splitlines():
        if line.startswith("data: "):
            event = json.loads(line[6:])
            if event.get("type", "").endswith(".completed"):
                img = Image.open(io.BytesIO(base64.b64decode(event["b64_json"])))
                img.load()
                images.append(img)
    return images
