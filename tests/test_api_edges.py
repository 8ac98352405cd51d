"""Defaults and edges real clients meet: SSE keep-alives with the official SDK, forwarded headers
only from trusted proxies, phone (MPO) JPEG uploads."""

from __future__ import annotations

import io

import httpx
import pytest
from api_support import ShapeBackend
from openai import OpenAI
from PIL import Image


def mpo_bytes() -> bytes:
    buf = io.BytesIO()
    first = Image.new("RGB", (64, 48), (200, 0, 0))
    first.save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (64, 48), (0, 200, 0))])
    return buf.getvalue()


def test_stream_keepalives_and_the_sdk_still_parses(live_server):
    server = live_server(backend=ShapeBackend(step_s=0.15), sse_keepalive_s=0.05)
    body = {"model": "test-model", "prompt": "x", "stream": True, "quality": "high", "size": "64x64"}
    with httpx.stream("POST", f"{server.url}/v1/images/generations", json=body, timeout=60) as r:
        text = r.read().decode()
    assert text.count(": keepalive\n\n") >= 3  # 4 steps of 0.15 s, a comment every 0.05 s
    assert "event: image_generation.completed" in text
    client = OpenAI(base_url=f"{server.url}/v1", api_key="x", _strict_response_validation=True)
    events = list(client.images.generate(model="test-model", prompt="x", stream=True, partial_images=1,
                                         quality="high", size="64x64"))
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    assert events[-1].b64_json


def _url_of(server, headers: dict) -> str:
    r = httpx.post(f"{server.url}/v1/images/generations", headers=headers, timeout=60,
                   json={"model": "dall-e-2", "prompt": "x", "size": "256x256"})
    assert r.status_code == 200, r.text
    return r.json()["data"][0]["url"]


FORWARDED = {"x-forwarded-host": "evil.example", "x-forwarded-proto": "https", "x-forwarded-prefix": "/p"}


def test_forwarded_headers_ignored_by_default(live_server):
    server = live_server()
    host = server.url.removeprefix("http://")
    assert _url_of(server, FORWARDED).startswith(f"http://{host}/v1/images/files/")
    assert _url_of(server, {"host": "img.local:9"}).startswith("http://img.local:9/v1/images/files/")
    configured = live_server(public_base_url="https://img.example.com/base")
    assert _url_of(configured, FORWARDED).startswith("https://img.example.com/base/v1/images/files/")


def test_forwarded_headers_from_a_trusted_proxy(live_server):
    server = live_server(forwarded_allow_ips=["10.0.0.0/8", "127.0.0.1"])
    url = _url_of(server, FORWARDED)
    assert url.startswith("https://evil.example/p/v1/images/files/")
    other = live_server(forwarded_allow_ips=["10.0.0.1"])
    assert not _url_of(other, FORWARDED).startswith("https://evil.example")
    # the url served through the (here: pretend) proxy path still resolves on the server itself
    local = url.replace("https://evil.example/p", server.url)
    assert httpx.get(local, timeout=30).status_code == 200


@pytest.mark.parametrize("declared", ["image/mpo", "application/octet-stream"])
def test_mpo_uploads_are_jpeg(live_server, declared):
    server = live_server()
    r = httpx.post(f"{server.url}/v1/images/edits", timeout=60,
                   data={"model": "test-model", "prompt": "x", "response_format": "b64_json"},
                   files={"image": ("phone.jpg", mpo_bytes(), declared)})
    assert r.status_code == 200, r.text
