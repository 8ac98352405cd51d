"""End to end through REAL diffusion backends: the official `openai` SDK (sync and async, strict
response validation) against a live uvicorn serving

- ``emoji``: the embedded model (`EmojiBackend`) with tiny random weights — 64 px RGBA, upscales
  to the requested size, real alpha, inpainting;
- ``diffusers``: `DiffusersBackend` on the tiny random-weight Stable Diffusion pipeline from
  tiny_pipelines.py — opaque RGB, generates at the requested size (multiples of 8, >= 32 px),
  one input image.

Every test runs on both models (unless it is about one model's limits). Random weights make noise,
not pictures, so the tests check what the server promises: formats, sizes, alpha, counts, usage,
real intermediate previews, seeded reproducibility, and the spec's errors for what a model can't do.
Two denoising steps (``extra_body={"num_inference_steps": 2}``) keep every request in the
milliseconds-to-a-second range.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from e2e_support import (
    EMOJI_MODEL_ID,
    SD_MODEL_ID,
    decode,
    image_bytes,
    mask_bytes,
    max_visible_diff,
    write_tiny_emoji_weights,
)
from tiny_pipelines import build_tiny_sd_pipeline

# diffusers' schedulers call np.array(tensor, copy=False) under numpy 2: noise, not our concern
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FAST = {"num_inference_steps": 2}


@dataclass
class Case:
    """One model behind one live server, and what a client may expect of it."""

    name: str
    url: str
    model: str
    size: tuple[int, int]  # requested output size used throughout
    alpha: bool  # native transparency: background=auto on png/webp -> RGBA
    max_input_images: int
    client: OpenAI

    @property
    def size_str(self) -> str:
        return f"{self.size[0]}x{self.size[1]}"

    def aclient(self) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0,
                           _strict_response_validation=True)


def _sdk(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, _strict_response_validation=True)


@pytest.fixture(scope="session")
def tiny_emoji_weights(tmp_path_factory):
    return write_tiny_emoji_weights(tmp_path_factory.mktemp("tiny-emoji") / "weights")


@pytest.fixture(scope="session")
def tiny_sd_pipeline(tmp_path_factory):
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd-e2e"))


@pytest.fixture(scope="module", params=["emoji", "diffusers"])
def case(request, live_server) -> Case:
    if request.param == "emoji":
        from canvasd.backends.emoji.backend import EmojiBackend

        weights = request.getfixturevalue("tiny_emoji_weights")
        srv = live_server(backend=EmojiBackend(EMOJI_MODEL_ID, str(weights)))
        caps = srv.backend.capabilities
        assert caps.alpha and caps.upscales and caps.native_size == (64, 64)
        return Case("emoji", srv.url, EMOJI_MODEL_ID, (128, 128), True, caps.max_input_images,
                    _sdk(srv.url))
    from canvasd.backends.diffusers import DiffusersBackend

    pipeline = request.getfixturevalue("tiny_sd_pipeline")
    srv = live_server(backend=DiffusersBackend(SD_MODEL_ID, str(pipeline)))
    caps = srv.backend.capabilities
    assert not caps.alpha and not caps.upscales and caps.native_size == (32, 32)
    # non-square on purpose: width and height must not be swapped anywhere on the way
    return Case("diffusers", srv.url, SD_MODEL_ID, (48, 32), False, caps.max_input_images, _sdk(srv.url))


def _alpha_range(img) -> tuple[int, int]:
    return img.getchannel("A").getextrema()


# --- generations --------------------------------------------------------------------------------


def test_generate_n2_b64(case: Case):
    r = case.client.images.generate(model=case.model, prompt="a red apple", n=2, size=case.size_str,
                                    extra_body=FAST)
    assert len(r.data) == 2 and all(d.url is None for d in r.data)
    images = [decode(d.b64_json) for d in r.data]
    for img in images:
        assert img.format == "PNG" and img.size == case.size
        assert img.mode == ("RGBA" if case.alpha else "RGB")
    if case.alpha:
        assert _alpha_range(images[0])[0] < 255  # real alpha, not an opaque RGBA
    assert (r.size, r.output_format, r.background) == (
        case.size_str, "png", "transparent" if case.alpha else "opaque")
    assert r.quality in ("low", "medium", "high")
    assert r.data[0].b64_json != r.data[1].b64_json  # image i uses seed + i
    u = r.usage
    assert u.input_tokens_details.text_tokens > 0 and u.output_tokens > 0
    assert u.total_tokens == u.input_tokens + u.output_tokens


def test_response_format_url_is_fetchable(case: Case):
    r = case.client.images.generate(model=case.model, prompt="a cat", size=case.size_str,
                                    response_format="url", output_format="webp", extra_body=FAST)
    url = r.data[0].url
    assert url and r.data[0].b64_json is None and url.startswith(f"{case.url}/v1/images/files/")
    got = httpx.get(url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/webp"
    img = decode(got.content)
    assert img.format == "WEBP" and img.size == case.size
    assert (img.mode == "RGBA") == case.alpha


@pytest.mark.parametrize("fmt,pil", [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_lossy_formats_honour_compression(case: Case, fmt, pil):
    sizes = []
    for compression in (100, 5):
        r = case.client.images.generate(model=case.model, prompt="noise", size=case.size_str,
                                        output_format=fmt, output_compression=compression,
                                        extra_body={**FAST, "seed": 3})
        img = decode(r.data[0].b64_json)
        assert img.format == pil and img.size == case.size and r.output_format == fmt
        assert r.background == ("transparent" if case.alpha and fmt == "webp" else "opaque")
        sizes.append(len(r.data[0].b64_json))
    assert sizes[1] < sizes[0]  # same seeded image, harder compression, fewer bytes


def test_seed_repeats_bytes_and_another_seed_differs(case: Case):
    kw = dict(model=case.model, prompt="a blue star", size=case.size_str, n=2)
    a = case.client.images.generate(**kw, extra_body={**FAST, "seed": 1234})
    b = case.client.images.generate(**kw, extra_body={**FAST, "seed": 1234})
    assert [d.b64_json for d in a.data] == [d.b64_json for d in b.data]
    # image 1 of seed 1234 is image 0 of seed 1235: each image is reproducible on its own
    c = case.client.images.generate(**{**kw, "n": 1}, extra_body={**FAST, "seed": 1235})
    # alone it ran in a batch of one, and batched CPU GEMMs may round differently
    assert max_visible_diff(decode(c.data[0].b64_json), decode(a.data[1].b64_json)) <= 3
    d = case.client.images.generate(**{**kw, "n": 1}, extra_body={**FAST, "seed": 99})
    assert d.data[0].b64_json != a.data[0].b64_json


def test_background_transparent(case: Case):
    kw = dict(model=case.model, prompt="a ghost", size=case.size_str, background="transparent",
              extra_body=FAST)
    if case.alpha:
        r = case.client.images.generate(**kw)
        img = decode(r.data[0].b64_json)
        assert r.background == "transparent" and img.mode == "RGBA"
        return
    with pytest.raises(openai.BadRequestError) as exc:
        case.client.images.generate(**kw)
    err = exc.value
    assert err.status_code == 400 and err.param == "background" and err.code == "invalid_value"
    assert err.body["type"] == "invalid_request_error" and "transparent" in err.body["message"]
    assert err.request_id and err.request_id.startswith("req_")
    # opaque / auto are fine on the same model
    r = case.client.images.generate(**{**kw, "background": "opaque"})
    assert decode(r.data[0].b64_json).mode == "RGB" and r.background == "opaque"


def test_stream_real_partial_images(case: Case):
    stream = case.client.images.generate(model=case.model, prompt="a dog", size=case.size_str,
                                         stream=True, partial_images=2,
                                         extra_body={"num_inference_steps": 4, "seed": 5})
    events = list(stream)
    assert [e.type for e in events] == (["image_generation.partial_image"] * 2
                                        + ["image_generation.completed"])
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for e in events:
        img = decode(e.b64_json)
        assert img.format == "PNG" and img.size == case.size and e.size == case.size_str
        assert img.mode == ("RGBA" if case.alpha else "RGB")
    done = events[-1]
    assert done.usage.input_tokens_details.text_tokens > 0 and done.usage.output_tokens > 0
    # partials are the sampler's intermediate predictions: they differ from each other and the end
    blobs = [e.b64_json for e in events]
    assert len(set(blobs)) == 3
    # the streamed final image is the very image a non-streamed request with that seed returns
    plain = case.client.images.generate(model=case.model, prompt="a dog", size=case.size_str,
                                        extra_body={"num_inference_steps": 4, "seed": 5})
    assert decode(plain.data[0].b64_json).tobytes() == decode(done.b64_json).tobytes()


async def test_async_client_generate_and_stream_concurrently(case: Case):
    aclient = case.aclient()

    async def streamed() -> list[Any]:
        stream = await aclient.images.generate(model=case.model, prompt="x", size=case.size_str,
                                               stream=True, partial_images=1, output_format="jpeg",
                                               extra_body={"num_inference_steps": 3})
        return [e async for e in stream]

    plain, events = await asyncio.gather(
        aclient.images.generate(model=case.model, prompt="y", n=2, size=case.size_str, extra_body=FAST),
        streamed(),
    )
    assert [decode(d.b64_json).size for d in plain.data] == [case.size] * 2
    assert [e.type for e in events] == ["image_generation.partial_image", "image_generation.completed"]
    assert all(decode(e.b64_json).format == "JPEG" for e in events) and events[-1].output_format == "jpeg"
    await aclient.close()


# --- edits and variations -----------------------------------------------------------------------


def test_edit_single_image(case: Case):
    r = case.client.images.edit(model=case.model, prompt="make it blue", size=case.size_str,
                                image=("in.png", image_bytes(case.size), "image/png"),
                                extra_body={**FAST, "seed": 8})
    img = decode(r.data[0].b64_json)
    assert img.format == "PNG" and img.size == case.size
    assert r.usage.input_tokens_details.image_tokens > 0
    # the input matters: the same seed on another image gives another result
    other = case.client.images.edit(model=case.model, prompt="make it blue", size=case.size_str,
                                    image=("in.png", image_bytes(case.size, (10, 200, 10, 255)), "image/png"),
                                    extra_body={**FAST, "seed": 8})
    assert other.data[0].b64_json != r.data[0].b64_json


def test_edit_image_list(case: Case):
    one = ("a.png", image_bytes(case.size), "image/png")
    two = ("b.jpg", image_bytes(case.size, fmt="JPEG"), "image/jpeg")
    if case.max_input_images >= 2:
        r = case.client.images.edit(model=case.model, prompt="combine", size=case.size_str,
                                    image=[one, two], n=2, extra_body=FAST)
        assert [decode(d.b64_json).size for d in r.data] == [case.size] * 2
        return
    # one input image only: a one-element list (sent as image[]) works, two are refused
    r = case.client.images.edit(model=case.model, prompt="combine", size=case.size_str, image=[one],
                                extra_body=FAST)
    assert decode(r.data[0].b64_json).size == case.size
    with pytest.raises(openai.BadRequestError) as exc:
        case.client.images.edit(model=case.model, prompt="combine", image=[one, two], extra_body=FAST)
    assert exc.value.param == "image" and exc.value.code == "array_above_max_length"


def test_edit_with_mask(case: Case):
    red = (200, 30, 30, 255)
    kw = dict(model=case.model, prompt="a hat", size=case.size_str,
              image=("in.png", image_bytes(case.size, red), "image/png"), extra_body={**FAST, "seed": 4})
    masked = case.client.images.edit(**kw, mask=("mask.png", mask_bytes(case.size), "image/png"))
    unmasked = case.client.images.edit(**kw)
    img = decode(masked.data[0].b64_json)
    assert img.size == case.size and masked.data[0].b64_json != unmasked.data[0].b64_json
    if case.name == "emoji":
        # the embedded model keeps the unmasked (right) half exactly; resizing 64 -> 128 px only
        # touches the pixels next to the seam
        px = np.asarray(img.convert("RGBA"), dtype=np.int16)
        w = case.size[0]
        keep = px[:, w // 2 + 4:]
        assert np.abs(keep - np.array(red)).max() <= 2


async def test_async_edit_stream(case: Case):
    aclient = case.aclient()
    stream = await aclient.images.edit(model=case.model, prompt="x", size=case.size_str,
                                       image=("a.png", image_bytes(case.size), "image/png"),
                                       stream=True, partial_images=1, extra_body={"num_inference_steps": 3})
    events = [e async for e in stream]
    await aclient.close()
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert all(decode(e.b64_json).size == case.size for e in events)
    assert events[-1].usage.input_tokens_details.image_tokens > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK deprecates create_variation
def test_variation(case: Case):
    square = (case.size[1], case.size[1])
    r = case.client.images.create_variation(model=case.model, n=2, size=f"{square[0]}x{square[1]}",
                                            image=("v.png", image_bytes(square), "image/png"),
                                            response_format="b64_json", extra_body={**FAST, "seed": 2})
    images = [decode(d.b64_json) for d in r.data]
    assert [im.size for im in images] == [square] * 2 and all(im.format == "PNG" for im in images)
    assert r.data[0].b64_json != r.data[1].b64_json
    if case.name != "emoji":
        return  # dall-e-2 sizes start at 256 px: far too big for the tiny SD's full-res attention
    # the dall-e-2 alias reaches the same model, with dall-e-2's response shape (url, no usage)
    d2 = case.client.images.create_variation(model="dall-e-2", size="256x256",
                                             image=("v.png", image_bytes((256, 256)), "image/png"),
                                             extra_body=FAST)
    assert d2.usage is None and d2.data[0].url
    got = httpx.get(d2.data[0].url)
    assert got.status_code == 200 and decode(got.content).size == (256, 256)
