"""canvasd on a real local Ray Serve: two engine replicas of the embedded model behind two ingress
replicas, driven with the official SDK through Serve's HTTP proxy on a loopback port.

One Ray instance for the whole module (starting one costs seconds); every load loop is bounded.
Resources are kept small for a 2-core machine: half a CPU and one torch thread per engine replica,
a 100 MB object store, no dashboard.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import ray
from openai import AsyncOpenAI
from PIL import Image
from ray import serve

from canvasd.settings import EMBEDDED_MODEL_ID, ModelSettings, Settings
from canvasd.serve.ray import APP_NAME, deploy, engine_deployment_name, replica_actor

REQUEST_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


METRICS_PORT = _free_port()


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    settings = Settings(
        models=[ModelSettings(id=EMBEDDED_MODEL_ID, backend="emoji", replicas=2, num_cpus=0.5)],
        host="127.0.0.1", port=_free_port(), image_dir=tmp_path_factory.mktemp("ray-images"),
        max_batch=4, max_queue=12, torch_threads=1, ingress_replicas=2, ray_object_store_mb=100,
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024, _metrics_export_port=METRICS_PORT)
    try:
        url = deploy(settings)
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "canvasd on Ray did not become ready"
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def client(base_url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0,
                       timeout=REQUEST_TIMEOUT_S, _strict_response_validation=True)


async def plain(c: AsyncOpenAI, seed: int) -> tuple[str, Image.Image]:
    raw = await c.images.with_raw_response.generate(
        model=EMBEDDED_MODEL_ID, prompt="a red apple", size="128x128", quality="low",
        extra_body={"seed": seed})
    result = raw.parse()
    return raw.headers["x-canvasd-replica"], decode(result.data[0].b64_json)


async def streamed(c: AsyncOpenAI, seed: int, partials: int) -> tuple[str, list[str], Image.Image]:
    async with c.images.with_streaming_response.generate(
            model=EMBEDDED_MODEL_ID, prompt="a green tree", size="128x128", quality="low", stream=True,
            partial_images=partials, extra_body={"seed": seed}) as raw:
        replica = raw.headers["x-canvasd-replica"]
        events = [e async for e in await raw.parse()]
    types = [e.type for e in events]
    assert types[-1] == "image_generation.completed", types
    return replica, types, decode(events[-1].b64_json)


def spread_gets(url: str, rounds: int = 10, width: int = 8) -> list[httpx.Response]:
    """GETs in concurrent bursts: Serve's proxy sends an idle app's requests to the same ingress
    replica, and spreads them once several are in flight."""
    out: list[httpx.Response] = []
    with ThreadPoolExecutor(width) as pool:
        for _ in range(rounds):
            out += pool.map(lambda _: httpx.get(url, timeout=30), range(width))
            if len({r.headers["x-canvasd-server"] for r in out}) >= 2:
                break
    return out


def engine_counts(base_url: str) -> dict[str, dict]:
    """The engine-client counters of each ingress replica (by x-canvasd-server), read from /ready."""
    return {r.headers["x-canvasd-server"]: r.json()["engine"] for r in spread_gets(f"{base_url}/ready")}


def test_16_concurrent_sdk_requests_use_both_replicas(base_url):
    async def main():
        c = client(base_url)
        return await asyncio.gather(*[plain(c, i) for i in range(8)],
                                    *[streamed(c, 100 + i, 1) for i in range(8)], return_exceptions=True)

    results = asyncio.run(main())
    failed = [r for r in results if isinstance(r, BaseException)]
    assert not failed, (failed, json.dumps(engine_counts(base_url)))
    replicas = {r[0] for r in results}
    assert len(replicas) == 2, replicas
    assert all(name.startswith(f"{APP_NAME}#{engine_deployment_name(EMBEDDED_MODEL_ID)}#") for name in replicas)
    for replica, *rest in results:
        image = rest[-1]
        assert image.size == (128, 128) and image.mode == "RGBA"
    for _, types, _ in results[8:]:
        assert types == ["image_generation.partial_image", "image_generation.completed"]


def test_url_made_through_one_ingress_is_served_by_another(base_url):
    r = httpx.post(f"{base_url}/v1/images/generations", timeout=REQUEST_TIMEOUT_S,
                   json={"model": EMBEDDED_MODEL_ID, "prompt": "a cat", "response_format": "url",
                         "size": "64x64", "quality": "low"})
    assert r.status_code == 200
    maker = r.headers["x-canvasd-server"]
    url = r.json()["data"][0]["url"]
    gets = spread_gets(url)
    assert all(g.status_code == 200 for g in gets)
    others = [g for g in gets if g.headers["x-canvasd-server"] != maker]
    assert others, "every GET went to the ingress replica that made the url"
    assert Image.open(io.BytesIO(others[0].content)).size == (64, 64)
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    assert httpx.get(tampered, timeout=10).status_code == 403


def test_replica_killed_under_load_loses_no_request(base_url):
    before = engine_counts(base_url)

    async def main():
        c = client(base_url)
        tasks = [asyncio.create_task(plain(c, 200 + i)) if i % 2 else
                 asyncio.create_task(streamed(c, 200 + i, 0)) for i in range(16)]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        victim = next(iter(done)).result()[0]
        ray.kill(replica_actor(victim), no_restart=False)
        results = await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_TIMEOUT_S)
        return victim, results

    victim, results = asyncio.run(main())
    assert len(results) == 16
    for result in results:
        assert result[-1].size == (128, 128)
    after = engine_counts(base_url)
    retried = sum(after[k]["retried"] - before.get(k, {}).get("retried", 0) for k in after)
    lost = sum(after[k]["lost"] - before.get(k, {}).get("lost", 0) for k in after)
    assert lost == 0
    assert retried >= 1, "the kill hit no request in flight"
    # Ray starts a replacement: two engine replicas run again, the victim not among them
    deadline = time.monotonic() + 90
    dep = engine_deployment_name(EMBEDDED_MODEL_ID)
    while True:
        states = serve.status().applications[APP_NAME].deployments[dep].replica_states
        if states.get("RUNNING", 0) == 2 and sum(states.values()) == 2:
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.5)
    names = {asyncio.run(plain(client(base_url), 300 + i))[0] for i in range(6)}
    assert victim not in names


def test_429_when_the_bound_is_hit(base_url):
    # bound: 2 engine replicas x 12 + 2 ingress replicas x (2 x 12) waiting for a replica = 72 jobs
    before = engine_counts(base_url)
    def call(i: int) -> httpx.Response:
        return httpx.post(f"{base_url}/v1/images/generations", timeout=REQUEST_TIMEOUT_S,
                          json={"model": EMBEDDED_MODEL_ID, "prompt": "a sun", "size": "64x64",
                                "quality": "high", "seed": i})

    with ThreadPoolExecutor(96) as pool:
        responses = list(pool.map(call, range(96)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    limited = [r for r in responses if r.status_code == 429]
    assert limited, "no request was refused"
    assert codes.count(200) >= 24
    after = engine_counts(base_url)
    refused = sum(after[k]["refused_at_caller"] + after[k]["refused_by_replica"]
                  - before.get(k, {}).get("refused_at_caller", 0) - before.get(k, {}).get("refused_by_replica", 0)
                  for k in after)
    assert refused >= len(limited) or len(after) < 2  # each 429 is a refusal the ingresses counted
    for r in limited:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        assert r.json()["error"]["type"] == "requests"


def test_replica_lost_after_a_partial_image_is_an_error_event(base_url):
    """The partial already went out, so the job cannot be sent again: an OpenAI error event ends
    the stream (never a hang), and the next request is served."""
    body = {"model": EMBEDDED_MODEL_ID, "prompt": "a slow star", "size": "64x64", "quality": "high",
            "stream": True, "partial_images": 3, "seed": 5}
    events: list[tuple[str, dict]] = []
    with httpx.stream("POST", f"{base_url}/v1/images/generations", json=body, timeout=REQUEST_TIMEOUT_S) as r:
        assert r.status_code == 200
        victim = r.headers["x-canvasd-replica"]
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[len("data: "):])))
                if len(events) == 1 and name == "image_generation.partial_image":
                    ray.kill(replica_actor(victim), no_restart=False)
    kinds = [k for k, _ in events]
    assert kinds[0] == "image_generation.partial_image"
    if kinds[-1] == "image_generation.completed":
        pytest.fail("the job finished before the kill landed: make it longer")  # never silently passes
    assert kinds[-1] == "error", kinds
    error = events[-1][1]["error"]
    assert error["type"] == "server_error" and victim in error["message"]
    assert asyncio.run(plain(client(base_url), 11))[1].size == (128, 128)


def test_metrics_of_every_replica_are_exported(base_url):
    # the ingress keeps its own /metrics
    r = httpx.get(f"{base_url}/metrics", timeout=10)
    assert r.status_code == 200 and "canvasd_requests_total" in r.text
    # each engine replica's canvasd metrics, tagged with its name, on Ray's metrics export port
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text
        replicas = set(re.findall(r'ray_canvasd_images_generated_total\{[^}]*replica="([^"]+)"', text))
        if len(replicas) >= 2:
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(2)
    assert all(name.startswith(f"{APP_NAME}#{engine_deployment_name(EMBEDDED_MODEL_ID)}#") for name in replicas)
