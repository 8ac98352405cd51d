"""Bodies that used to reach a 500: lone surrogates, deep nesting, over-long multipart boundaries.

Each must be a 400 in the OpenAI envelope, answered before any generation starts (the backend's
job list stays empty)."""

from __future__ import annotations

import io

import httpx
import pytest
from api_support import ShapeBackend
from PIL import Image


@pytest.fixture(scope="module")
def server(live_server):
    return live_server(backend=ShapeBackend())


def envelope(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    r.content.decode("utf-8")  # the error itself must be valid UTF-8
    return body["error"]


def post_raw(server, path: str, text: str, **headers) -> httpx.Response:
    # raw bytes: a JSON encoder would refuse to write the lone surrogate escapes
    return httpx.post(f"{server.url}{path}", content=text.encode("ascii"),
                      headers={"content-type": "application/json", **headers}, timeout=30)


def png_data_url() -> str:
    import base64

    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), (10, 20, 30, 255)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


SURROGATE_BODIES = {
    "prompt": '{"prompt": "an apple \\ud800"}',
    "user": '{"prompt": "an apple", "user": "u\\udfff"}',
    "model": '{"prompt": "an apple", "model": "\\ud83d"}',
    "value_in_unknown_key": '{"prompt": "an apple", "bogus": "\\ud800"}',
    "key": '{"prompt": "an apple", "\\ud800": 1}',
    "nested_key": '{"prompt": "an apple", "svg": {"\\udc00": "x"}}',
    "stream": '{"prompt": "an apple \\ud800", "stream": true}',
    "stream_user": '{"prompt": "an apple", "stream": true, "partial_images": 1, "user": "\\ud800"}',
}


@pytest.mark.parametrize("case", sorted(SURROGATE_BODIES))
def test_lone_surrogate_in_generation_is_400_before_work(server, case):
    before = len(server.backend.jobs)
    e = envelope(post_raw(server, "/v1/images/generations", SURROGATE_BODIES[case]))
    assert e["code"] == "invalid_unicode"
    assert "surrogate" in e["message"]
    assert len(server.backend.jobs) == before  # refused before any generation


def test_lone_surrogate_param_is_named_when_the_key_is_clean(server):
    e = envelope(post_raw(server, "/v1/images/generations", SURROGATE_BODIES["user"]))
    assert e["param"] == "user"
    e = envelope(post_raw(server, "/v1/images/generations", SURROGATE_BODIES["key"]))
    assert e["param"] is None


def test_lone_surrogate_in_json_edit_data_url(server):
    url = png_data_url()
    body = '{"prompt": "x", "images": [{"image_url": "%s\\ud800"}]}' % url
    e = envelope(post_raw(server, "/v1/images/edits", body))
    assert (e["code"], e["param"]) == ("invalid_unicode", "images")


def test_escaped_pair_is_still_accepted(server):
    """A correctly paired surrogate escape is an ordinary astral character (an emoji)."""
    r = post_raw(server, "/v1/images/generations", '{"prompt": "an apple \\ud83c\\udf4e"}')
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("depth", [40, 1000, 100_000])
def test_deep_nesting_is_400(server, depth):
    body = '{"prompt": "x", "svg": ' + "[" * depth + "]" * depth + "}"
    e = envelope(post_raw(server, "/v1/images/generations", body))
    assert e["type"] == "invalid_request_error"
    e = envelope(post_raw(server, "/v1/images/edits", body))
    assert e["type"] == "invalid_request_error"


def test_nesting_within_the_limit_reaches_the_validator(server):
    body = '{"prompt": "x", "svg": ' + "[" * 10 + "]" * 10 + "}"
    e = envelope(post_raw(server, "/v1/images/generations", body))
    assert e["param"] == "svg" and e["code"] == "invalid_type"


@pytest.mark.parametrize("path", ["/v1/images/edits", "/v1/images/variations"])
@pytest.mark.parametrize("length", [257, 2000])
def test_long_multipart_boundary_is_400(server, path, length):
    boundary = "b" * length
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n"
            f"--{boundary}--\r\n").encode()
    r = httpx.post(f"{server.url}{path}", content=body,
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"}, timeout=30)
    e = envelope(r)
    assert "boundary" in e["message"]


def test_boundary_of_256_is_accepted(server):
    boundary = "b" * 256
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n"
            f"--{boundary}--\r\n").encode()
    r = httpx.post(f"{server.url}/v1/images/edits", content=body,
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"}, timeout=30)
    assert envelope(r)["param"] == "image"  # parsed; the missing image is the fault
