"""/v1/models' `capabilities` extension (what the playground shapes its form with) agrees with what
the validator honours, and the playground's files are served beside the API."""

from __future__ import annotations

import httpx
import pytest
from openai import OpenAI


@pytest.fixture(scope="module")
def server(live_server):
    return live_server()


@pytest.fixture(scope="module")
def strict_server(live_server):
    return live_server(compat="strict")


def models(url: str) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}


def test_local_model_capabilities_come_from_the_backend(server):
    caps = models(server.url)["test-model"]["capabilities"]
    assert caps["endpoints"] == ["generations", "edits", "variations"]
    assert caps["alpha"] is True and caps["inpaint"] is True and caps["negative_prompt"] is True
    assert caps["guidance_scale"] is True and caps["loras"] == []
    assert caps["native_size"] == "64x64" and caps["sizes"][:2] == ["auto", "64x64"]
    assert caps["refined_size"] is None  # no second stage
    assert caps["quality_steps"] == {"low": 2, "medium": 3, "high": 4}
    assert caps["default_quality"] == "medium" and caps["n_max"] == 10
    assert "strength" in caps["parameters"]["edits"] and "strength" not in caps["parameters"]["generations"]
    assert "prompt" not in caps["parameters"]["variations"]
    assert caps["partial_images_max"] == 3


def test_alias_capabilities_follow_the_openai_profile(server, strict_server):
    by_id = models(strict_server.url)  # strict: each model's own size list
    assert by_id["gpt-image-1"]["capabilities"]["sizes"] == ["auto", "1024x1024", "1024x1536", "1536x1024"]
    assert by_id["gpt-image-1"]["capabilities"]["custom_sizes"] is False
    assert by_id["gpt-image-2"]["capabilities"]["custom_sizes"] is True
    assert by_id["dall-e-3"]["capabilities"]["n_max"] == 1
    assert by_id["dall-e-2"]["capabilities"]["sizes"] == ["auto", "256x256", "512x512", "1024x1024"]
    # permissive: every preset the backend can render, and free sizes, on every model
    by_id = models(server.url)
    for model in ("gpt-image-1", "gpt-image-2", "dall-e-2", "dall-e-3"):
        caps = by_id[model]["capabilities"]
        assert caps["sizes"][:8] == ["auto", "256x256", "512x512", "1024x1024", "1536x1024", "1024x1536",
                                     "1792x1024", "1024x1792"]
        assert caps["custom_sizes"] is True
    assert by_id["test-model"]["capabilities"]["output_formats"] == ["png", "webp", "jpeg", "svg"]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("model", ["test-model", "gpt-image-1", "gpt-image-2", "dall-e-2", "dall-e-3"])
def test_every_offered_size_and_quality_is_accepted(server, strict_server, model, strict):
    server = strict_server if strict else server
    caps = models(server.url)[model]["capabilities"]
    b64 = {"response_format": "b64_json"} if "response_format" in caps["parameters"]["generations"] else {}
    for size in caps["sizes"]:
        r = httpx.post(f"{server.url}/v1/images/generations", timeout=60,
                       json={"model": model, "prompt": "x", "size": size, **b64})
        assert r.status_code == 200, (size, r.text)
    for quality in caps["quality"]:
        r = httpx.post(f"{server.url}/v1/images/generations", timeout=60,
                       json={"model": model, "prompt": "x", "quality": quality, "size": caps["sizes"][1]})
        assert r.status_code == 200, (quality, r.text)


def test_strict_mode_lists_only_what_the_real_api_takes(strict_server):
    by_id = models(strict_server.url)
    assert by_id["dall-e-3"]["capabilities"]["endpoints"] == ["generations"]
    gpt = by_id["gpt-image-1"]["capabilities"]["parameters"]["generations"]
    assert "response_format" not in gpt and "stream" in gpt and "seed" in gpt
    body = {"model": "gpt-image-1", "prompt": "x", "size": "1024x1024"}
    # what it leaves out is what the server refuses
    refused = httpx.post(f"{strict_server.url}/v1/images/generations", json={**body, "response_format": "url"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unknown_parameter"
    # the local model keeps every parameter, strict or not
    assert "response_format" in by_id["test-model"]["capabilities"]["parameters"]["generations"]


def test_sdk_reads_models_with_the_extension(server):
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                    _strict_response_validation=True)
    entry = client.models.retrieve("test-model")
    assert entry.id == "test-model" and entry.model_extra["capabilities"]["alpha"] is True


def test_playground_is_served_and_unknown_paths_keep_the_openai_404(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="web/app.js">' in page.text
    for asset in ("app.js", "api.js", "mask.js", "history.js", "snippets.js", "style.css"):
        r = httpx.get(f"{server.url}/web/{asset}")
        assert r.status_code == 200 and len(r.content) > 100, asset
        assert r.headers["cache-control"] == "no-cache" and r.headers["etag"]
    missing = httpx.get(f"{server.url}/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
