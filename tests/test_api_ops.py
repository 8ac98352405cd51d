"""Operations around the image routes: readiness, metrics, signed urls, back-pressure, cancellation,
access log, and the api package staying torch-free."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time

import httpx
import pytest
from api_support import ShapeBackend

from canvasd.media.store import ImageStore


@pytest.fixture(scope="module")
def server(live_server):
    return live_server()


def wait_until(cond, timeout=10.0, interval=0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return False


def gen(url, body, **kw):
    return httpx.post(f"{url}/v1/images/generations", json={"model": "test-model", "prompt": "x", **body}, **kw)


def test_ready_is_503_until_models_are_loaded_and_requests_wait_for_the_load(live_server):
    from concurrent.futures import ThreadPoolExecutor

    gate = threading.Event()

    class SlowLoad(ShapeBackend):
        def load(self) -> None:
            gate.wait(10)
            super().load()

    srv = live_server(backend=SlowLoad("slow"), wait_ready=False)
    assert httpx.get(f"{srv.url}/health").status_code == 200
    r = httpx.get(f"{srv.url}/ready")
    assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
    # validation still answers while loading
    assert gen(srv.url, {"model": "slow", "n": 99}).status_code == 400
    # a generation sent while the model loads waits for it (it is not refused)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(gen, srv.url, {"model": "slow"}, timeout=30)
        time.sleep(0.3)
        assert not waiting.done()
        model = httpx.get(f"{srv.url}/v1/models/slow").json()
        assert model["state"] == "loading" and model["device"] == "cpu"
        gate.set()
        assert waiting.result(timeout=30).status_code == 200
    assert wait_until(lambda: httpx.get(f"{srv.url}/ready").status_code == 200)
    assert httpx.get(f"{srv.url}/ready").json()["states"] == {"slow": "loaded"}


def test_metrics_count_requests(server):
    gen(server.url, {})
    gen(server.url, {"n": 0})
    text = httpx.get(f"{server.url}/metrics").text
    assert 'canvasd_requests_total{endpoint="images/generations",status="200"}' in text
    assert 'canvasd_requests_total{endpoint="images/generations",status="400"}' in text
    assert "canvasd_encode_seconds_count" in text


def test_access_log_line(server, caplog):
    with caplog.at_level(logging.INFO, logger="canvasd.access"):
        r = gen(server.url, {"size": "128x128", "quality": "low"})
        assert wait_until(lambda: any(rec.name == "canvasd.access" for rec in caplog.records))
    line = json.loads([rec for rec in caplog.records if rec.name == "canvasd.access"][-1].getMessage())
    assert line["request_id"] == r.headers["x-request-id"]
    assert (line["model"], line["n"], line["size"], line["quality"], line["status"]) == (
        "test-model", 1, "128x128", "low", 200)
    assert "total_s" in line and "encode_s" in line


def test_url_links_follow_proxy_headers_and_are_signed(live_server):
    server = live_server(forwarded_allow_ips=["127.0.0.1"])  # the test client is the trusted proxy
    r = gen(server.url, {"response_format": "url"}, headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "img.example.com", "X-Forwarded-Prefix": "/canvas/"})
    url = r.json()["data"][0]["url"]
    assert url.startswith("https://img.example.com/canvas/v1/images/files/img-")
    local = server.url + url[len("https://img.example.com/canvas"):]
    assert httpx.get(local).status_code == 200
    tampered = local[:-1] + ("0" if local[-1] != "0" else "1")
    r = httpx.get(tampered)
    assert r.status_code == 403 and r.json()["error"]["code"] == "invalid_signature"
    assert httpx.get(local.split("?")[0]).status_code == 403  # no signature at all
    r = httpx.get(f"{server.url}/v1/images/files/../../etc/passwd?expires=1&sig=x")
    assert r.status_code == 404 and "error" in r.json()


def test_expired_url_is_410(server):
    past = ImageStore(server.settings.image_dir, b"test-secret", 60, clock=lambda: time.time() - 3600)
    stored = past.save(b"\x89PNG fake", "png")
    r = httpx.get(f"{server.url}/v1/images/files/{stored.name}?{past.signed_query(stored)}")
    assert r.status_code == 410 and r.json()["error"]["code"] == "url_expired"


def test_public_base_url_setting(live_server):
    srv = live_server(public_base_url="https://cdn.example.org/base/")
    url = gen(srv.url, {"response_format": "url"}).json()["data"][0]["url"]
    assert url.startswith("https://cdn.example.org/base/v1/images/files/")


def test_queue_full_is_429_with_retry_after(live_server):
    backend = ShapeBackend("held")
    srv = live_server(backend=backend, max_queue=2)
    backend.pause_at(1)
    results: dict[str, httpx.Response] = {}

    def call(tag, n):
        results[tag] = gen(srv.url, {"model": "held", "n": n}, timeout=30)

    a = threading.Thread(target=call, args=("a", 1))
    a.start()
    assert backend.paused.wait(10)
    b = threading.Thread(target=call, args=("b", 2))
    b.start()
    assert wait_until(lambda: srv.engine.stats()["queue_depth"] == 2)
    r = gen(srv.url, {"model": "held"})
    assert r.status_code == 429
    e = r.json()["error"]
    assert e["code"] == "rate_limit_exceeded" and int(r.headers["retry-after"]) >= 1
    backend.resume()
    a.join(20)
    b.join(20)
    assert results["a"].status_code == 200 and results["b"].status_code == 200
    rejected = [ln for ln in httpx.get(f"{srv.url}/metrics").text.splitlines()
                if ln.startswith("canvasd_rejected_total ")]
    assert rejected and float(rejected[0].split()[1]) >= 1


def test_client_disconnect_cancels_the_job(live_server):
    backend = ShapeBackend("slowpoke", step_s=0.3)
    srv = live_server(backend=backend)
    with pytest.raises(httpx.ReadTimeout):
        gen(srv.url, {"model": "slowpoke", "quality": "high", "size": "64x64"}, timeout=0.4)
    job = backend.jobs[-1]
    assert wait_until(lambda: job.cancelled, timeout=5)
    # streaming: read the first partial image, then hang up
    with httpx.stream("POST", f"{srv.url}/v1/images/generations", timeout=10, json={
            "model": "slowpoke", "prompt": "x", "quality": "high", "stream": True, "partial_images": 1}) as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                assert line == "event: image_generation.partial_image"
                break
    job = backend.jobs[-1]
    assert wait_until(lambda: job.cancelled, timeout=5)
    assert gen(srv.url, {"model": "slowpoke", "quality": "low"}, timeout=10).status_code == 200


def test_mid_stream_failure_is_an_error_event(live_server):
    backend = ShapeBackend("flaky")
    backend.fail_when = lambda samples: samples[0].step >= 2
    srv = live_server(backend=backend)
    r = httpx.post(f"{srv.url}/v1/images/generations", timeout=10, json={
        "model": "flaky", "prompt": "x", "quality": "high", "stream": True, "partial_images": 1})
    assert r.status_code == 200
    blocks = [b for b in r.text.split("\n\n") if b.strip()]
    assert blocks[-1].startswith("event: error\ndata: ")
    payload = json.loads(blocks[-1].split("data: ", 1)[1])
    assert payload["type"] == "error" and payload["error"]["type"] == "server_error"
    assert set(payload["error"]) == {"message", "type", "param", "code"}


class BrokenEngine:
    """An engine whose submit crashes: exercises the last-resort 500 path."""

    def start(self) -> None: ...

    def shutdown(self, timeout_s: float = 0) -> None: ...

    def stats(self) -> dict:
        return {}

    def submit(self, job):
        raise RuntimeError("boom")


def test_uncaught_exception_is_a_500_envelope(live_server):
    srv = live_server(engine=BrokenEngine())
    r = gen(srv.url, {})
    assert r.status_code == 500 and r.headers["x-should-retry"] == "false"
    assert r.headers["x-request-id"].startswith("req_")
    assert r.json() == {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                                  "type": "server_error", "param": None, "code": None}}
    assert httpx.get(f"{srv.url}/health").status_code == 200


def test_backends_are_only_called_on_the_engine_thread(live_server):
    # regression (found by test_e2e_load): the API counted prompt tokens (`usage`) on a worker
    # thread while the engine thread encoded other prompts with the SAME tokenizer; HF tokenizers
    # keep padding/truncation as shared state, so encodes came out unpadded and batched steps
    # failed. The engine now counts on its own thread and hands the count over with the images.
    threads: list[str] = []

    class Recording(ShapeBackend):
        def count_tokens(self, text: str) -> int:
            threads.append(threading.current_thread().name)
            return super().count_tokens(text)

    srv = live_server(backend=Recording("rec"))
    r = gen(srv.url, {"model": "rec", "prompt": "three word prompt"})
    assert r.status_code == 200 and r.json()["usage"]["input_tokens_details"]["text_tokens"] == 3
    with httpx.stream("POST", f"{srv.url}/v1/images/generations",
                      json={"model": "rec", "prompt": "two words", "stream": True}) as s:
        body = "".join(s.iter_text())
    completed = json.loads(body.split("data: ")[-1])
    assert completed["usage"]["input_tokens_details"]["text_tokens"] == 2
    assert threads and set(threads) == {"canvasd-engine"}


def test_models_list_maps_aliases(server):
    data = httpx.get(f"{server.url}/v1/models").json()
    assert data["object"] == "list"
    by_id = {m["id"]: m for m in data["data"]}
    assert by_id["test-model"]["object"] == "model"
    assert by_id["gpt-image-1"]["root"] == "test-model" and by_id["dall-e-2"]["root"] == "test-model"
    assert httpx.get(f"{server.url}/v1/models/nope").status_code == 404


def test_api_package_imports_no_torch():
    code = ("import sys, canvasd.api.app, canvasd.api.rules, canvasd.api.multipart, canvasd.api.images, canvasd.api.streaming; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
