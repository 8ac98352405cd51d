"""Generated bodies at every route (Hypothesis), and schemathesis driven by the published
/openapi.json: never a 5xx, every error in the OpenAI envelope, every response as documented.

Bounded: a few dozen examples per test against one live server backed by the fast shape model."""

from __future__ import annotations

import io
import json
import string

import httpx
import pytest
from api_support import ShapeBackend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from canvasd.api import rules

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server(live_server):
    return live_server(backend=ShapeBackend())


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def assert_no_5xx_and_envelope(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


# --- strategies --------------------------------------------------------------------------------

ALL_KEYS = sorted(set().union(*rules.DOCUMENTED.values()) | set(rules.PARAM_ALIASES))
# any text, and text with a lone surrogate inside (json.dumps writes it as a \udXXX escape)
wild_text = st.one_of(
    st.text(max_size=20),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=8), st.integers(0xD800, 0xDFFF).map(chr),
              st.text(max_size=8)))
scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                   st.floats(allow_nan=True, allow_infinity=True), wild_text,
                   st.sampled_from(["auto", "png", "webp", "jpeg", "svg", "transparent", "opaque",
                                    "low", "high", "hd", "256x256", "1024x1024", "64x64", "0x0",
                                    "99999x1", "gpt-image-1", "gpt-image-2", "dall-e-2", "dall-e-3",
                                    "test-model", "url", "b64_json", "true", "-1", "1e9"]))
json_value = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(ALL_KEYS), wild_text),
                                                 inner, max_size=4)), max_leaves=12)
small_counts = {"n": st.integers(1, 2), "partial_images": st.integers(0, 1),
                "num_inference_steps": st.integers(1, 3), "steps": st.integers(1, 3)}
json_body = st.dictionaries(
    st.one_of(st.sampled_from(ALL_KEYS), wild_text),
    json_value, max_size=8,
).flatmap(lambda d: st.fixed_dictionaries(
    {k: small_counts.get(k, st.just(v)) for k, v in d.items()}))


def _image_bytes(fmt: str, size: tuple[int, int], mode: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 30, 128)[: len(mode)]).save(buf, fmt)
    return buf.getvalue()


file_bytes = st.one_of(
    st.binary(max_size=64),
    st.builds(_image_bytes, st.sampled_from(["PNG", "JPEG", "WEBP"]),
              st.tuples(st.integers(1, 80), st.integers(1, 80)), st.just("RGB")),
    st.builds(_image_bytes, st.sampled_from(["PNG", "WEBP"]),
              st.tuples(st.integers(1, 80), st.integers(1, 80)), st.just("RGBA")),
)
mime = st.one_of(st.sampled_from(["image/png", "image/jpeg", "image/webp", "image/mpo", "image/gif",
                                  "application/octet-stream", "text/plain", ""]), wild_text)
field_name = st.one_of(st.sampled_from(ALL_KEYS + ["image[]", "svg[model]", "svg[reasoning][effort]",
                                                   "image[0]", "mask[]", "[]", "a[b"]),
                       st.text(string.printable, max_size=12))
form_text_value = st.one_of(
    st.text(max_size=20), st.sampled_from(["1", "2", "0", "true", "false", "auto", "png", "svg",
                                          "256x256", "gpt-image-1", "dall-e-2", "test-model"]))
# one multipart part: (name, text value) or (name, (filename, bytes, content type))
part = st.one_of(
    st.tuples(field_name, form_text_value),
    st.tuples(st.sampled_from(["image", "image[]", "mask", "markup"]) | field_name,
              st.tuples(st.text(string.ascii_letters, min_size=1, max_size=8), file_bytes, mime)),
)


def _encode_multipart(parts: list[tuple[str, object]], boundary: str) -> bytes:
    out = bytearray()
    for name, value in parts:
        safe = name.replace("\r", "").replace("\n", "").replace('"', "")
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, tuple):
            filename, data, ctype = value
            out += f'Content-Disposition: form-data; name="{safe}"; filename="{filename}"\r\n'.encode()
            if ctype:
                out += f"Content-Type: {ctype}\r\n".encode("utf-8", "surrogatepass")
            out += b"\r\n" + data + b"\r\n"
        else:
            out += f'Content-Disposition: form-data; name="{safe}"\r\n\r\n'.encode()
            out += str(value).encode("utf-8", "surrogatepass") + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


# --- hand-rolled property tests ----------------------------------------------------------------

@FUZZ
@given(body=json_body, path=st.sampled_from(["/v1/images/generations", "/v1/images/edits",
                                             "/images/generations", "/v1/images/variations"]))
def test_generated_json_bodies_never_5xx(http, body, path):
    raw = json.dumps(body, ensure_ascii=True, allow_nan=True)
    assert_no_5xx_and_envelope(http.post(path, content=raw, headers={"content-type": "application/json"}))


@FUZZ
@given(raw=st.binary(max_size=200), ctype=st.sampled_from(
    ["application/json", "multipart/form-data; boundary=x", "multipart/form-data", "text/plain",
     "application/x-www-form-urlencoded", "multipart/form-data; boundary=" + "b" * 300]),
    path=st.sampled_from(["/v1/images/generations", "/v1/images/edits", "/v1/images/variations"]))
def test_arbitrary_bytes_never_5xx(http, raw, ctype, path):
    assert_no_5xx_and_envelope(http.post(path, content=raw, headers={"content-type": ctype}))


@FUZZ
@given(parts=st.lists(part, max_size=6), with_prompt=st.booleans(), with_image=st.booleans(),
       path=st.sampled_from(["/v1/images/edits", "/v1/images/variations"]))
def test_generated_multipart_bodies_never_5xx(http, parts, with_prompt, with_image, path):
    if with_prompt:
        parts = [("prompt", "an apple")] + parts
    if with_image:
        parts = [("image", ("a.png", _image_bytes("PNG", (64, 64), "RGBA"), "image/png"))] + parts
    boundary = "fuzzboundary7MA4YWxkTrZu0gW"
    r = http.post(path, content=_encode_multipart(parts, boundary),
                  headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_no_5xx_and_envelope(r)


@FUZZ
@given(segment=wild_text.filter(lambda s: s not in ("", ".", "..")), query=st.dictionaries(
    st.sampled_from(["expires", "sig", "x"]), wild_text, max_size=3),
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
    prefix=st.sampled_from(["/v1/images/files/", "/images/files/", "/v1/models/", "/models/", "/v1/",
                            "/v1/images/", "/"]))
def test_generated_paths_and_queries_never_5xx(http, segment, query, method, prefix):
    from urllib.parse import quote

    path = prefix + quote(segment.encode("utf-8", "surrogatepass"), safe="")
    q = {k: v.encode("utf-8", "surrogatepass").decode("latin-1") for k, v in query.items()}
    assert_no_5xx_and_envelope(http.request(method, path, params=q))


# --- schemathesis from the published document -------------------------------------------------

def test_openapi_document_describes_the_request_bodies(http):
    doc = http.get("/openapi.json").json()
    gen = doc["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]
    assert list(gen) == ["application/json"]
    edits = doc["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert set(edits) == {"multipart/form-data", "application/json"}
    schemas = doc["components"]["schemas"]
    assert set(schemas["CreateImageRequest"]["properties"]) == set(
        rules.DOCUMENTED[("generations", "json")]) | set(rules.PARAM_ALIASES)
    assert schemas["CreateImageRequest"]["additionalProperties"] is False
    assert schemas["CreateImageVariationRequest"]["required"] == ["image"]
    assert "ImagesResponse" in schemas and "Error" in schemas


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_from_openapi(server, mode):
    import schemathesis
    from schemathesis import checks
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    strategy = schema.as_strategy(GenerationMode(mode))
    wanted = [checks.not_a_server_error, checks.status_code_conformance,
              checks.content_type_conformance, checks.response_schema_conformance]

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        case.call_and_validate(base_url=server.url, checks=wanted, timeout=60)

    run()
