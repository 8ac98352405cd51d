"""End to end with the official `openai` SDK (strict response validation) against a live server."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from PIL import Image

from canvasd.settings import EMBEDDED_MODEL_ID  # noqa: F401 - documents what the lead switches to


@pytest.fixture(scope="module")
def server(live_server):
    return live_server()


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", _strict_response_validation=True,
                  max_retries=0)


@pytest.fixture
def aclient(server) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", _strict_response_validation=True,
                       max_retries=0)


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def png_bytes(size=(64, 64), colour=(200, 30, 30, 255), mode="RGBA", fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGBA" else colour[:3]).save(buf, fmt)
    return buf.getvalue()


def test_generate_b64_reports_resolved_settings(client):
    r = client.images.generate(model="gpt-image-1", prompt="a red apple", size="1024x1024", quality="low")
    assert len(r.data) == 1 and r.data[0].url is None
    img = decode(r.data[0].b64_json)
    assert img.format == "PNG" and img.size == (1024, 1024)
    assert (r.size, r.quality, r.output_format, r.background) == ("1024x1024", "low", "png", "transparent")
    u = r.usage
    assert u.input_tokens_details.text_tokens == 3  # the fake tokenizer counts words
    assert u.output_tokens == 272 and u.total_tokens == u.input_tokens + u.output_tokens
    assert r._request_id and r._request_id.startswith("req_")


def test_generate_url_is_fetchable(client, server):
    r = client.images.generate(model="gpt-image-1", prompt="a cat", size="1024x1024", response_format="url",
                               output_format="webp")
    url = r.data[0].url
    assert url.startswith(server.url + "/v1/images/files/") and r.data[0].b64_json is None
    got = httpx.get(url)
    assert got.status_code == 200 and got.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(got.content)).size == (1024, 1024)


def test_n_images_differ_and_same_seed_repeats(client):
    kw = dict(model="test-model", prompt="two discs", size="256x256", n=2, extra_body={"seed": 42})
    a = client.images.generate(**kw)
    b = client.images.generate(**kw)
    assert len(a.data) == 2
    assert a.data[0].b64_json != a.data[1].b64_json
    assert [d.b64_json for d in a.data] == [d.b64_json for d in b.data]
    c = client.images.generate(**{**kw, "extra_body": {"seed": 43}})
    assert c.data[0].b64_json != a.data[0].b64_json


@pytest.mark.parametrize("fmt,pil", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_formats(client, fmt, pil):
    kw = {"output_compression": 60} if fmt != "png" else {}
    r = client.images.generate(model="test-model", prompt="x", size="256x256", output_format=fmt, **kw)
    img = decode(r.data[0].b64_json)
    assert img.format == pil and img.size == (256, 256) and r.output_format == fmt


def test_compression_changes_size(client):
    sizes = []
    for c in (100, 10):
        r = client.images.generate(model="test-model", prompt="x", size="256x256", output_format="jpeg",
                                   output_compression=c, extra_body={"seed": 1})
        sizes.append(len(base64.b64decode(r.data[0].b64_json)))
    assert sizes[1] < sizes[0]


def test_background_transparent_and_opaque(client):
    t = client.images.generate(model="test-model", prompt="x", size="256x256", background="transparent")
    img = decode(t.data[0].b64_json)
    assert t.background == "transparent" and img.mode == "RGBA"
    lo, hi = img.getchannel("A").getextrema()
    assert lo == 0 and hi == 255  # the disc is opaque, the corners transparent
    o = client.images.generate(model="test-model", prompt="x", size="256x256", background="opaque")
    img = decode(o.data[0].b64_json)
    assert o.background == "opaque" and img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)  # flattened onto white


@pytest.mark.parametrize("size,expected", [
    ("1024x1536", (1024, 1536)), ("1536x1024", (1536, 1024)), ("auto", (1024, 1024)), (None, (1024, 1024)),
])
def test_gpt_image_sizes(client, size, expected):
    kw = {"size": size} if size else {}
    r = client.images.generate(model="gpt-image-1.5", prompt="x", quality="low", output_format="jpeg", **kw)
    assert decode(r.data[0].b64_json).size == expected
    assert r.size == f"{expected[0]}x{expected[1]}"


@pytest.mark.parametrize("model", [None, "test-model", "gpt-image-1", "gpt-image-2", "dall-e-2"])
def test_auto_size_is_what_the_real_api_gives_on_every_model(client, model):
    """No model and no size (`client.images.generate(prompt=...)`) is 1024x1024, as upstream;
    the strict response validation of older SDKs accepts the echoed size."""
    kw = {"model": model} if model else {}
    r = client.images.generate(prompt="x", response_format="b64_json", **kw)
    assert decode(r.data[0].b64_json).size == (1024, 1024)
    if model in (None, "test-model", "gpt-image-1", "gpt-image-2"):
        assert r.size == "1024x1024"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # create_variation is deprecated in the SDK
def test_variation_without_model_is_dalle2(client, server):
    """DALL-E 2 sample code: `create_variation(image=...).data[0].url` is a fetchable 1024x1024 image."""
    r = client.images.create_variation(image=("v.png", png_bytes((64, 64)), "image/png"))
    assert r.usage is None and r.size is None and r.quality is None
    assert r.data[0].url and r.data[0].b64_json is None
    got = httpx.get(r.data[0].url, timeout=30)
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (1024, 1024)


def test_stream_partial_images(client):
    stream = client.images.generate(model="gpt-image-1", prompt="a dog", size="1024x1024", quality="high",
                                    stream=True, partial_images=2, output_format="jpeg")
    events = list(stream)
    types = [e.type for e in events]
    assert types == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for e in events:
        img = decode(e.b64_json)
        assert img.format == "JPEG" and img.size == (1024, 1024)
        assert (e.size, e.quality, e.output_format) == ("1024x1024", "high", "jpeg")
    done = events[-1]
    assert done.usage.output_tokens == 4160 and done.usage.input_tokens_details.text_tokens == 2
    # partials are real intermediate states: the disc grows
    assert events[0].b64_json != events[1].b64_json != done.b64_json


def test_stream_n2_emits_one_completed_per_image(client):
    events = list(client.images.generate(model="test-model", prompt="a b", size="256x256", n=2, stream=True,
                                         partial_images=1))
    types = [e.type for e in events]
    assert types.count("image_generation.partial_image") == 2
    assert types[-2:] == ["image_generation.completed"] * 2
    completed = events[-2:]
    assert completed[0].b64_json != completed[1].b64_json
    assert completed[0].usage.input_tokens == 2 and completed[1].usage.input_tokens == 0


def test_edit_single_image(client, server):
    r = client.images.edit(model="gpt-image-1", image=("in.png", png_bytes((256, 256)), "image/png"),
                           prompt="add a disc", size="1024x1024", quality="low")
    img = decode(r.data[0].b64_json)
    assert img.size == (1024, 1024)
    assert r.usage.input_tokens_details.image_tokens > 0
    job = server.backend.jobs[-1]
    assert job.kind == "edit" and len(job.init_images) == 1 and job.init_images[0].size == (64, 64)


def test_edit_image_list_and_mask(client, server):
    mask = Image.new("RGBA", (128, 128), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 64, 128))  # left half transparent = repaint
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    r = client.images.edit(
        model="test-model", prompt="edit",
        image=[("a.png", png_bytes((128, 128)), "image/png"), ("b.jpg", png_bytes((128, 128), fmt="JPEG", mode="RGB"), "image/jpeg")],
        mask=("mask.png", buf.getvalue(), "image/png"), size="128x128",
    )
    assert decode(r.data[0].b64_json).size == (128, 128)
    job = server.backend.jobs[-1]
    assert len(job.init_images) == 2 and job.mask is not None and job.mask.mode == "L"
    assert job.mask.getpixel((5, 32)) == 255 and job.mask.getpixel((60, 32)) == 0


def test_edit_raw_bytes_are_sniffed_in_permissive_mode(client):
    # the SDK sends application/octet-stream for bytes
    r = client.images.edit(model="test-model", image=png_bytes(), prompt="x")
    assert len(r.data) == 1


def test_edit_stream_event_names(client):
    events = list(client.images.edit(model="gpt-image-1", image=("a.png", png_bytes(), "image/png"),
                                     prompt="x", stream=True, partial_images=1, quality="low"))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]


def test_json_edit_with_data_url(server):
    data_url = "data:image/png;base64," + base64.b64encode(png_bytes((96, 96))).decode()
    r = httpx.post(f"{server.url}/v1/images/edits", json={
        "model": "test-model", "prompt": "x", "images": [{"image_url": data_url}], "size": "128x128"})
    assert r.status_code == 200, r.text
    assert decode(r.json()["data"][0]["b64_json"]).size == (128, 128)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # create_variation is deprecated in the SDK
def test_variation(client):
    r = client.images.create_variation(image=("v.png", png_bytes((256, 256)), "image/png"), model="dall-e-2",
                                       size="256x256", response_format="b64_json", n=2)
    assert len(r.data) == 2 and r.usage is None and r.quality is None  # dall-e shape
    assert decode(r.data[0].b64_json).size == (256, 256)


def test_dalle3_shape_has_revised_prompt_and_url_default(client):
    r = client.images.generate(model="dall-e-3", prompt="a lighthouse", size="1024x1024")
    assert r.data[0].url and r.data[0].revised_prompt == "a lighthouse"
    assert r.usage is None and r.background is None


def test_sdk_errors(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(model="gpt-image-1", prompt="x", quality="ultra")
    err = exc.value
    assert err.status_code == 400 and err.code == "invalid_value" and err.param == "quality"
    assert err.body["message"] == "Invalid value: 'ultra'. Supported values are: 'low', 'medium', 'high', and 'auto'."
    assert err.request_id and err.request_id.startswith("req_")
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.generate(model="gpt-image-1", prompt="x", n=11)
    assert exc.value.code == "integer_above_max_value"
    with pytest.raises(openai.NotFoundError) as exc:
        client.images.generate(model="no-such-model", prompt="x")
    assert exc.value.code == "model_not_found"


def test_sdk_edit_error_param(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.images.edit(model="test-model", prompt="x",
                           image=[("a.png", png_bytes(), "image/png"), ("b.txt", b"hello", "text/plain")])
    assert exc.value.param == "image[1]" and exc.value.code == "unsupported_file_mimetype"


async def test_async_client_generate_and_stream(aclient):
    r = await aclient.images.generate(model="test-model", prompt="x", size="256x256")
    assert decode(r.data[0].b64_json).size == (256, 256)
    stream = await aclient.images.generate(model="test-model", prompt="x", size="256x256", stream=True,
                                           partial_images=1)
    types = [e.type async for e in stream]
    assert types == ["image_generation.partial_image", "image_generation.completed"]
    r = await aclient.images.edit(model="test-model", prompt="x", image=("a.png", png_bytes(), "image/png"))
    assert len(r.data) == 1


def test_auth(live_server):
    srv = live_server(api_keys=["sk-test-secret-key-1234"])
    good = OpenAI(base_url=f"{srv.url}/v1", api_key="sk-test-secret-key-1234", max_retries=0,
                  _strict_response_validation=True)
    assert good.images.generate(model="test-model", prompt="x").data
    assert good.models.list().data
    bad = OpenAI(base_url=f"{srv.url}/v1", api_key="sk-wrong-key-9876xy", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        bad.images.generate(model="test-model", prompt="x")
    assert exc.value.code == "invalid_api_key"
    assert exc.value.body["message"].startswith("Incorrect API key provided: sk-wr***xy.")
    r = httpx.post(f"{srv.url}/v1/images/generations", json={"prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] is None
    assert r.json()["error"]["message"].startswith("You didn't provide an API key.")
    assert httpx.get(f"{srv.url}/health").status_code == 200  # ops endpoints stay open


def test_models_list(client):
    models = client.models.list()
    ids = {m.id for m in models.data}
    assert {"test-model", "gpt-image-1", "dall-e-3"} <= ids
    assert client.models.retrieve("gpt-image-2").id == "gpt-image-2"
