"""`output_format: "svg"` end to end with the official SDK: a real SVG (parsed and rasterised by
cairosvg) that looks like the PNG of the same seed, the API's SVG rules, and the refusal on
models without alpha."""

from __future__ import annotations

import base64
import io

import cairosvg
import httpx
import numpy as np
import pytest
from api_support import ShapeBackend
from openai import OpenAI
from PIL import Image


@pytest.fixture(scope="module")
def server(live_server):
    return live_server(backend=ShapeBackend())


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="x", _strict_response_validation=True)


def on_white(img: Image.Image) -> np.ndarray:
    rgba = img.convert("RGBA")
    return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                      .convert("RGB"), dtype=np.float32)


def rasterise(svg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(cairosvg.svg2png(bytestring=svg))).convert("RGBA")


@pytest.mark.parametrize("size", ["1024x1024", "1536x1024"])
def test_svg_matches_the_png_of_the_same_seed(client, size):
    common = dict(model="test-model", prompt="a red apple", size=size, extra_body={"seed": 11})
    svg_r = client.images.generate(output_format="svg", **common)
    png_r = client.images.generate(output_format="png", **common)
    assert (svg_r.output_format, svg_r.background, svg_r.size) == ("svg", "transparent", size)
    assert svg_r.svg_usage is not None and svg_r.svg_usage.model == "vtracer"
    svg = base64.b64decode(svg_r.data[0].b64_json)
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg and b"<path" in svg
    raster = rasterise(svg)
    png = Image.open(io.BytesIO(base64.b64decode(png_r.data[0].b64_json))).convert("RGBA")
    w, h = (int(v) for v in size.split("x"))
    assert raster.size == png.size == (w, h)
    diff = np.abs(on_white(raster) - on_white(png))
    print(f"\nsvg vs png ({size}): mean abs diff {diff.mean():.2f}/255, 99th pct {np.percentile(diff, 99):.0f}")
    assert diff.mean() < 8  # same picture; only the traced edges differ
    # transparency survives: the corners are clear in both, the disc opaque in both
    assert raster.getpixel((2, 2))[3] == png.getpixel((2, 2))[3] == 0
    assert raster.getpixel((w // 2, h // 2))[3] == png.getpixel((w // 2, h // 2))[3] == 255


def test_svg_url_is_served_as_svg(client):
    r = client.images.generate(model="test-model", prompt="x", output_format="svg",
                               extra_body={"response_format": "url"})
    got = httpx.get(r.data[0].url, timeout=30)
    assert got.status_code == 200 and got.headers["content-type"].startswith("image/svg+xml")
    assert rasterise(got.content).size == (1024, 1024)


def test_svg_effort_changes_the_detail(server):
    def paths(effort: str) -> int:
        r = httpx.post(f"{server.url}/v1/images/generations", timeout=60, json={
            "model": "test-model", "prompt": "x", "output_format": "svg", "seed": 3,
            "svg": {"model": "vtracer", "reasoning": {"effort": effort}}})
        assert r.status_code == 200, r.text
        return base64.b64decode(r.json()["data"][0]["b64_json"]).count(b"<path")

    assert paths("none") <= paths("max")


@pytest.mark.parametrize("extra,param", [
    ({"n": 2}, "n"), ({"stream": True}, "stream"), ({"partial_images": 2}, "partial_images"),
    ({"output_compression": 80}, "output_compression"),
    ({"svg": {"model": "gpt-svg-1"}}, "svg.model"),
    ({"svg": {"reasoning": {"effort": "huge"}}}, "svg.reasoning.effort"),
])
def test_svg_rules(server, extra, param):
    r = httpx.post(f"{server.url}/v1/images/generations", timeout=60,
                   json={"model": "test-model", "prompt": "x", "output_format": "svg", **extra})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_svg_options_need_svg_output(server):
    r = httpx.post(f"{server.url}/v1/images/generations", timeout=60,
                   json={"model": "test-model", "prompt": "x", "svg": {"model": "vtracer"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "svg"


def test_models_without_alpha_keep_refusing_svg(live_server):
    opaque = live_server(backend=ShapeBackend(alpha=False))
    r = httpx.post(f"{opaque.url}/v1/images/generations", timeout=60,
                   json={"model": "test-model", "prompt": "x", "output_format": "svg"})
    e = r.json()["error"]
    assert r.status_code == 400 and e["param"] == "output_format"
    assert e["message"] == "Invalid value: 'svg'. Supported values are: 'png', 'webp', and 'jpeg'."
