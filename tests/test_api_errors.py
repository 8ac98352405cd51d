"""The error catalogue over raw HTTP: exact messages, params, codes, fault order, both compat modes."""

from __future__ import annotations

import httpx
import pytest

from api_support import ShapeBackend


@pytest.fixture(scope="module")
def url(live_server) -> str:
    return live_server().url


@pytest.fixture(scope="module")
def strict_url(live_server) -> str:
    return live_server(compat="strict").url


def gen(url: str, body, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/images/generations", json=body, **kw)


def err(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) >= {"message", "type", "param", "code"}
    assert r.headers["x-request-id"].startswith("req_")
    return body["error"]


def test_fault_order_generations(url):
    body = {"model": "gpt-image-1", "prompt": "", "n": 0, "quality": "ultra", "bogus": 1}
    e = err(gen(url, body))
    assert (e["message"], e["param"], e["code"]) == ("Unknown parameter: 'bogus'.", "bogus", "unknown_parameter")
    del body["bogus"]
    assert err(gen(url, body))["code"] == "empty_string"
    body["prompt"] = "x"
    e = err(gen(url, body))
    assert e["code"] == "integer_below_min_value"
    assert e["message"] == "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead."
    body["n"] = 1
    assert err(gen(url, body))["param"] == "quality"


def test_fault_order_edits_prompt_before_images_before_n(url):
    r = httpx.post(f"{url}/v1/images/edits", data={"model": "test-model", "n": "0"},
                   files={"dummy": ("a.txt", b"x", "text/plain")})
    assert err(r)["message"] == "Unknown parameter: 'dummy'."
    r = httpx.post(f"{url}/v1/images/edits", data={"model": "test-model", "n": "0"},
                   files={"mask": ("m.png", b"x", "image/png")})
    e = err(r)
    assert (e["code"], e["param"]) == ("missing_required_parameter", "prompt")
    assert e["message"] == "Missing required parameter: 'prompt'."
    r = httpx.post(f"{url}/v1/images/edits", data={"model": "test-model", "n": "0", "prompt": "x"},
                   files={"mask": ("m.png", b"x", "image/png")})
    assert err(r)["param"] == "image"
    r = httpx.post(f"{url}/v1/images/edits", data={"model": "test-model", "n": "0", "prompt": "x"},
                   files={"image": ("a.png", b"not an image", "image/png")})
    assert err(r)["code"] == "invalid_image_file"


def test_nulls_mean_not_given(url):
    r = gen(url, {"model": "test-model", "prompt": "x", "n": None, "quality": None, "size": None,
                  "user": None, "output_compression": None, "partial_images": None, "background": None,
                  "stream": None, "response_format": None, "seed": None})
    assert r.status_code == 200, r.text
    e = err(gen(url, {"model": "test-model", "prompt": None}))
    assert e["message"] == "Invalid type for 'prompt': expected a string, but got null instead."
    assert e["code"] == "invalid_type"


@pytest.mark.parametrize("value,got", [("2", "a string"), (2.5, "a decimal number"), (True, "a boolean"),
                                       ([1], "an array"), ({}, "an object")])
def test_wrong_type_for_integer(url, value, got):
    e = err(gen(url, {"model": "test-model", "prompt": "x", "n": value}))
    assert e["message"] == f"Invalid type for 'n': expected an integer, but got {got} instead."
    assert (e["param"], e["code"]) == ("n", "invalid_type")


def test_enum_wrong_type_and_value(url):
    e = err(gen(url, {"model": "gpt-image-1", "prompt": "x", "quality": 5}))
    assert e["message"] == ("Invalid type for 'quality': expected one of 'low', 'medium', 'high', or 'auto', "
                            "but got an integer instead.")
    e = err(gen(url, {"model": "gpt-image-1", "prompt": "x", "output_format": "gif"}))
    # the test model has alpha, so it offers svg (tests/test_svg_output.py: models without alpha do not)
    assert e["message"] == "Invalid value: 'gif'. Supported values are: 'png', 'webp', 'jpeg', and 'svg'."
    e = err(gen(url, {"model": "gpt-image-1", "prompt": "x", "moderation": "high"}))
    assert e["message"] == "Invalid value: 'high'. Supported values are: 'auto' and 'low'."
    e = err(gen(url, {"model": "gpt-image-1", "prompt": "x", "background": "clear"}))
    assert e["message"] == "Invalid value: 'clear'. Supported values are: 'transparent', 'opaque', and 'auto'."
    e = err(gen(url, {"model": "dall-e-3", "prompt": "x", "quality": "low"}))
    assert e["param"] == "quality" and "'standard', 'hd', and 'auto'" in e["message"]


@pytest.mark.parametrize("param,value,code,expected", [
    ("n", 11, "integer_above_max_value", "Expected a value <= 10, but got 11 instead."),
    ("output_compression", 101, "integer_above_max_value", "Expected a value <= 100, but got 101 instead."),
    ("output_compression", -1, "integer_below_min_value", "Expected a value >= 0, but got -1 instead."),
    ("partial_images", 4, "integer_above_max_value", "Expected a value <= 3, but got 4 instead."),
    ("guidance_scale", 99, "decimal_above_max_value", "Expected a value <= 50, but got 99 instead."),
    ("num_inference_steps", 0, "integer_below_min_value", "Expected a value >= 1, but got 0 instead."),
])
def test_ranges(url, param, value, code, expected):
    e = err(gen(url, {"model": "gpt-image-1", "prompt": "x", "output_format": "webp", param: value}))
    assert (e["param"], e["code"]) == (param, code) and e["message"].endswith(expected)


def test_dalle3_n_is_one(url):
    e = err(gen(url, {"model": "dall-e-3", "prompt": "x", "n": 5}))
    assert e["message"].startswith("Invalid 'n': integer above maximum value. Expected a value <= 1")


@pytest.mark.parametrize("model,limit", [("gpt-image-1", 32000), ("dall-e-2", 1000), ("dall-e-3", 4000)])
def test_prompt_length_per_profile(url, model, limit):
    e = err(gen(url, {"model": model, "prompt": "a" * (limit + 1)}))
    assert e["code"] == "string_above_max_length"
    assert e["message"] == (f"Invalid 'prompt': string too long. Expected a string with maximum length {limit}, "
                            f"but got a string with length {limit + 1} instead.")


def test_missing_prompt_and_whitespace_prompt(url):
    e = err(gen(url, {"model": "test-model"}))
    assert (e["code"], e["param"]) == ("missing_required_parameter", "prompt")
    assert gen(url, {"model": "test-model", "prompt": "   "}).status_code == 200


def test_sizes(url, strict_url):
    """Strict mode mirrors each model's own size list; permissive mode honours any size the backend
    can render on every model (Open WebUI sends 512x512 to gpt-image-1)."""
    e = err(gen(strict_url, {"model": "gpt-image-1", "prompt": "x", "size": "1254x836"}))
    assert e["message"] == ("Invalid value: '1254x836'. Supported values are: '1024x1024', '1024x1536', "
                            "'1536x1024', and 'auto'.")
    e = err(gen(url, {"model": "gpt-image-2", "prompt": "x", "size": "bogus"}))
    assert e["message"] == "Invalid size 'bogus'. Expected WIDTHxHEIGHT, for example '1824x1024'."
    assert e["type"] == "image_generation_user_error"
    e = err(gen(strict_url, {"model": "gpt-image-2", "prompt": "x", "size": "1000x1000"}))
    assert e["message"] == "Invalid size '1000x1000'. Width and height must both be divisible by 16."
    assert err(gen(strict_url, {"model": "gpt-image-2", "prompt": "x", "size": "3840x640"}))["param"] == "size"
    assert err(gen(strict_url, {"model": "gpt-image-2", "prompt": "x", "size": "512x512"}))["param"] == "size"
    r = gen(strict_url, {"model": "gpt-image-2", "prompt": "x", "size": "1536x864", "output_format": "jpeg"})
    assert r.status_code == 200 and r.json()["size"] == "1536x864"
    e = err(gen(strict_url, {"model": "dall-e-2", "prompt": "x", "size": "1024x1536"}))
    assert "'256x256', '512x512', and '1024x1024'" in e["message"]
    for model, size in (("gpt-image-1", "512x512"), ("gpt-image-2", "256x256"), ("dall-e-2", "1024x1536"),
                        ("gpt-image-1", "1254x836")):
        r = gen(url, {"model": model, "prompt": "x", "size": size, "response_format": "b64_json"})
        assert r.status_code == 200, r.text[:300]
    assert err(gen(url, {"model": "test-model", "prompt": "x", "size": "4096x4096"}))["param"] == "size"
    assert err(gen(url, {"model": "gpt-image-1", "prompt": "x", "size": "4096x4096"}))["param"] == "size"


def test_cross_field_rules(url):
    e = err(gen(url, {"model": "gpt-image-1", "prompt": "x", "background": "transparent", "output_format": "jpeg"}))
    assert "png" in e["message"] and "webp" in e["message"]
    e = err(gen(url, {"model": "gpt-image-1", "prompt": "x", "output_compression": 50}))
    assert (e["param"], e["code"]) == ("output_compression", "invalid_png_output_compression")
    assert gen(url, {"model": "test-model", "prompt": "x", "output_compression": 100}).status_code == 200


def test_unsupported_gif_svg_options(url):
    e = err(gen(url, {"model": "gpt-image-1", "prompt": "x", "frame_count": 4}))
    assert e["param"] == "frame_count"
    e = err(gen(url, {"model": "gpt-image-1", "prompt": "x", "svg": "yes"}))
    assert e["code"] == "invalid_type"


def test_permissive_accepts_documented_params_everywhere(url):
    r = gen(url, {"model": "gpt-image-2", "prompt": "x", "style": "vivid", "response_format": "url",
                  "background": "transparent", "partial_images": 1, "stream": False, "moderation": "low",
                  "size": "1024x1024"})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["url"].startswith("http")
    # input_fidelity is unknown on generations in both modes, even as null
    assert err(gen(url, {"model": "gpt-image-1", "prompt": "x", "input_fidelity": None}))["code"] == "unknown_parameter"


def test_strict_mode_mirrors_the_real_api(strict_url):
    e = err(gen(strict_url, {"model": "gpt-image-1", "prompt": "x", "response_format": "url"}))
    assert (e["message"], e["param"], e["code"]) == (
        "Unknown parameter: 'response_format'.", "response_format", "unknown_parameter")
    assert err(gen(strict_url, {"model": "gpt-image-2", "prompt": "x", "style": "vivid"}))["param"] == "style"
    assert err(gen(strict_url, {"model": "dall-e-2", "prompt": "x", "background": "opaque"}))["param"] == "background"
    e = err(gen(strict_url, {"model": "gpt-image-2", "prompt": "x", "quality": "xhigh"}))
    assert e["message"] == "The model 'gpt-image-2' does not support quality 'xhigh'."
    e = err(httpx.post(f"{strict_url}/v1/images/edits", data={"model": "gpt-image-2", "prompt": "x",
                                                              "input_fidelity": "high"},
                       files={"image": ("a.png", _png(), "image/png")}))
    assert (e["type"], e["code"]) == ("image_generation_user_error", "invalid_input_fidelity_model")
    assert e["message"] == "The model 'gpt-image-2' does not support the 'input_fidelity' parameter."
    e = err(httpx.post(f"{strict_url}/v1/images/variations", data={"model": "gpt-image-1"},
                       files={"image": ("a.png", b"x", "image/png")}))
    assert (e["param"], e["message"]) == ("model", "Invalid value: 'gpt-image-1'. Supported values are: 'dall-e-2'.")
    e = err(httpx.post(f"{strict_url}/v1/images/edits", data={"model": "dall-e-3", "prompt": "x"},
                       files={"image": ("a.png", b"x", "image/png")}))
    assert e["param"] == "model"
    # the real API's valid requests still work, and local ids stay permissive
    assert gen(strict_url, {"model": "gpt-image-1", "prompt": "x", "quality": "low"}).status_code == 200
    assert gen(strict_url, {"model": "test-model", "prompt": "x", "style": "natural",
                            "response_format": "url"}).status_code == 200
    assert gen(strict_url, {"model": "dall-e-3", "prompt": "x", "style": "natural",
                            "response_format": "b64_json"}).status_code == 200


def test_transport_errors_use_the_envelope(url):
    e = err(httpx.post(f"{url}/v1/images/generations", content=b"{not json",
                       headers={"content-type": "application/json"}))
    assert e["message"].startswith("We could not parse the JSON body of your request.")
    assert err(httpx.post(f"{url}/v1/images/generations", content=b"[1, 2]"))["code"] == "invalid_type"
    e = err(httpx.post(f"{url}/v1/images/generations", data={"prompt": "x"}, files={"f": ("a", b"x")}))
    assert e["code"] == "invalid_content_type"
    e = err(httpx.post(f"{url}/v1/images/variations", json={"model": "dall-e-2"}))
    assert e["code"] == "invalid_content_type"
    e = err(httpx.get(f"{url}/v1/images/generations"), 405)
    assert e["message"] == "Invalid method for URL (GET /v1/images/generations)"
    e = err(httpx.post(f"{url}/v1/images/nothing", json={}), 404)
    assert e["message"] == "Invalid URL (POST /v1/images/nothing)"
    e = err(gen(url, {"model": "gpt-9", "prompt": "x"}), 404)
    assert e["message"] == "The model `gpt-9` does not exist or you do not have access to it."
    assert e["code"] == "model_not_found"
    e = err(gen(url, {"model": 7, "prompt": "x"}))
    assert e["message"] == "Invalid type for 'model': expected a string, but got an integer instead."


def test_routes_without_v1_prefix(url):
    r = httpx.post(f"{url}/images/generations", json={"model": "test-model", "prompt": "x"})
    assert r.status_code == 200 and r.json()["data"][0]["b64_json"]


def test_capabilities_refuse_what_the_backend_cannot_do(live_server):
    srv = live_server(backend=ShapeBackend("plain", alpha=False, inpaint=False, upscales=False, max_side=1024))
    e = err(gen(srv.url, {"model": "plain", "prompt": "x", "background": "transparent"}))
    assert e["param"] == "background" and "transparent" in e["message"]
    r = gen(srv.url, {"model": "plain", "prompt": "x", "size": "128x64"})
    assert r.status_code == 200 and r.json()["background"] == "opaque"  # auto -> opaque without alpha
    e = err(gen(srv.url, {"model": "plain", "prompt": "x", "size": "100x100"}))
    assert e["param"] == "size" and "multiples of 8" in e["message"]
    # valid for the gpt-image-1 profile, but beyond what this local model generates
    e = err(gen(srv.url, {"model": "gpt-image-1", "prompt": "x", "size": "1536x1024"}))
    assert e["param"] == "size" and "between 64 and 1024" in e["message"]
    png = _png()
    e = err(httpx.post(f"{srv.url}/v1/images/edits", data={"model": "plain", "prompt": "x"},
                       files={"image": ("a.png", png, "image/png"), "mask": ("m.png", png, "image/png")}))
    assert e["param"] == "mask" and "inpainting" in e["message"]
    r = httpx.post(f"{srv.url}/v1/images/edits", data={"model": "plain", "prompt": "x"},
                   files={"image": ("a.png", png, "image/png")})
    assert r.status_code == 200, r.text
    t2i = live_server(backend=ShapeBackend("t2i", image_to_image=False))
    e = err(httpx.post(f"{t2i.url}/v1/images/edits", data={"model": "t2i", "prompt": "x"},
                       files={"image": ("a.png", png, "image/png")}))
    assert e["param"] == "image" and "image input" in e["message"]


def _png(size=(64, 64)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", size, (10, 20, 30, 255)).save(buf, "PNG")
    return buf.getvalue()


def test_engine_failure_is_a_500_envelope(live_server):
    backend = ShapeBackend("broken")
    backend.fail_when = lambda samples: True
    srv = live_server(backend=backend)
    r = gen(srv.url, {"model": "broken", "prompt": "x"})
    e = err(r, 500)
    assert e["type"] == "server_error" and r.headers["x-should-retry"] == "false"
    # and the server keeps serving
    assert httpx.get(f"{srv.url}/health").status_code == 200
