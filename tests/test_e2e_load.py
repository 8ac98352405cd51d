"""End to end under load: 32 concurrent requests from the official async SDK against a live server
on a REAL model with step-level batching — once on the embedded emoji model with tiny random
weights, once on the tiny random-weight Stable Diffusion pipeline (tiny_pipelines.py).

The storm mixes streamed and plain generations, edits (some masked) and variations, n = 1..3,
three output sizes (emoji) and several step counts (so one batched UNet call holds samples of
different requests and kinds at different steps), and
has six requests abandoned by their client mid-flight, two of each kind a client has: closing a
stream, cancelling the asyncio task, and an httpx read timeout. Checked afterwards:

- every other request got exactly its images, decoded (format, size, alpha), and each image matches
  the same request made again alone (no cross-talk between batch mates; see `BATCH_TOLERANCE`);
- `/metrics` adds up: requests by endpoint and status (cancelled plain requests are logged as 499,
  cancelled streams had already started with 200), images generated, client cancellations, and
  denoising batches of more than one sample;
- the engine ends idle (empty queue, nothing running) and the server still answers.

Plus queue-full back-pressure through the SDK: 429 with Retry-After and OpenAI's rate-limit body.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from e2e_support import (
    EMOJI_MODEL_ID,
    SD_MODEL_ID,
    decode,
    image_bytes,
    mask_bytes,
    max_visible_diff,
    metric,
    write_tiny_emoji_weights,
)
from tiny_pipelines import build_tiny_sd_pipeline

from canvasd.backends.emoji.backend import EmojiBackend

# diffusers' schedulers call np.array(tensor, copy=False) under numpy 2; the SDK deprecates
# create_variation (the hosted endpoint is retired): noise, not our concern
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")]

# Batched CPU GEMMs can round differently for different batch sizes, so an image made among batch mates may differ by a level or two from the same request made
# alone (alpha-weighted, see e2e_support.max_visible_diff); another seed or prompt differs by ~100+.
BATCH_TOLERANCE = 3
# fp32: random tiny weights amplify bf16 rounding far more than trained ones (the packaged model's
# bf16 batch-independence is tested in test_precision)
PRECISION = "fp32"
LONG_STEPS = 300  # abandoned requests: far longer than the client waits (>= 15 ms per step)
CANCEL_AFTER_S = 1.0


@dataclass
class Model:
    id: str
    backend: Any
    alpha: bool
    sizes: tuple[tuple[int, int], ...]  # output sizes the storm requests


@pytest.fixture(scope="module", params=["emoji", "diffusers"])
def model(request, tmp_path_factory) -> Model:
    if request.param == "emoji":
        weights = write_tiny_emoji_weights(tmp_path_factory.mktemp("load-emoji") / "weights")
        return Model(EMOJI_MODEL_ID, EmojiBackend(EMOJI_MODEL_ID, str(weights), precision=PRECISION), True,
                     ((64, 64), (96, 96), (128, 128)))
    from canvasd.backends.diffusers import DiffusersBackend

    path = build_tiny_sd_pipeline(tmp_path_factory.mktemp("load-sd"))
    # the SD backend batches only jobs of one size: keep one size so the storm really batches
    return Model(SD_MODEL_ID, DiffusersBackend(SD_MODEL_ID, str(path), precision=PRECISION), False, ((32, 32),))


@pytest.fixture(scope="module")
def server(live_server, model):
    return live_server(backend=model.backend, batching=True, max_batch=16, max_queue=256)


def _aclient(url: str, **kw: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                       _strict_response_validation=True, **kw)


@dataclass
class Req:
    """One request of the storm and what became of it."""

    i: int
    endpoint: str  # generate | edit | variation
    stream: bool
    n: int
    size: tuple[int, int]
    steps: int
    seed: int
    cancel: str | None = None  # close_stream | cancel_task | timeout
    mask: bool = False  # edit with a mask (inpainting)
    partial_images: int = 0
    images: list[Any] = field(default_factory=list)  # decoded finals
    partials: int = 0
    outcome: str = "pending"

    def kwargs(self, model: str) -> dict[str, Any]:
        kw: dict[str, Any] = dict(model=model, n=self.n, size=f"{self.size[0]}x{self.size[1]}",
                                  extra_body={"num_inference_steps": self.steps, "seed": self.seed})
        if self.endpoint != "variation":
            kw["prompt"] = f"thing number {self.i}"
        if self.endpoint != "generate":
            colour = (40 * (self.i % 6), 255 - 30 * (self.i % 8), 90, 255)
            kw["image"] = (f"in{self.i}.png", image_bytes(self.size, colour), "image/png")
        if self.mask:
            kw["mask"] = ("mask.png", mask_bytes(self.size), "image/png")
        return kw

    def call(self, client: AsyncOpenAI) -> Any:
        return {"generate": client.images.generate, "edit": client.images.edit,
                "variation": client.images.create_variation}[self.endpoint]


def _plan(model: Model) -> list[Req]:
    rng = random.Random(7)
    reqs: list[Req] = []
    cancels = ["close_stream", "cancel_task", "timeout"] * 2
    for i in range(32):
        cancel = cancels[i // 5] if i % 5 == 2 and i // 5 < len(cancels) else None
        endpoint = {3: "edit", 5: "variation"}.get(i % 7, "generate")
        stream = (i % 3 == 0 and endpoint != "variation") or cancel == "close_stream"
        r = Req(i, endpoint, stream, n=rng.choice((1, 1, 2, 3)), size=rng.choice(model.sizes),
                steps=rng.choice((2, 3, 4)), seed=1000 + 17 * i, cancel=cancel, mask=i % 14 == 3)
        if stream:
            r.partial_images = rng.choice((1, 2))
        if cancel == "close_stream":
            r.endpoint, r.n, r.steps, r.partial_images, r.mask = "generate", 1, 40, 3, False  # 1st partial: step 10
        elif cancel:
            r.endpoint, r.stream, r.steps, r.mask = "generate", False, LONG_STEPS, False
        reqs.append(r)
    assert sum(r.cancel is not None for r in reqs) == 6
    kinds = {(r.endpoint, r.stream, r.mask) for r in reqs if r.cancel is None}
    assert {("edit", True, False), ("edit", False, True), ("variation", False, False)} <= kinds
    return reqs


async def _send(client: AsyncOpenAI, model: str, r: Req) -> None:
    kw = r.kwargs(model)
    call = r.call(client)
    if r.stream:
        stream = await call(**kw, stream=True, partial_images=r.partial_images)
        async for ev in stream:
            img = decode(ev.b64_json)
            if ev.type.endswith("partial_image"):
                r.partials += 1
                if r.cancel == "close_stream":
                    await stream.close()  # the user closed the page
                    r.outcome = "cancelled"
                    return
                assert img.size == r.size
            else:
                assert ev.usage is not None and ev.size == f"{r.size[0]}x{r.size[1]}"
                r.images.append(img)
        r.outcome = "ok"
        return
    if r.cancel == "timeout":
        try:
            await client.with_options(timeout=CANCEL_AFTER_S).images.generate(**kw)
        except openai.APITimeoutError:
            r.outcome = "cancelled"
            return
        r.outcome = "finished-despite-timeout"
        return
    resp = await call(**kw)
    r.images = [decode(d.b64_json) for d in resp.data]
    r.outcome = "ok"


async def _storm(url: str, model: str, reqs: list[Req]) -> None:
    client = _aclient(url)
    tasks = {r.i: asyncio.create_task(_send(client, model, r)) for r in reqs}
    await asyncio.sleep(CANCEL_AFTER_S)
    for r in reqs:
        if r.cancel == "cancel_task":
            assert not tasks[r.i].done()
            tasks[r.i].cancel()  # e.g. the caller's own deadline
    results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    for r, res in zip(reqs, results):
        if r.cancel == "cancel_task":
            assert isinstance(res, asyncio.CancelledError), res
            r.outcome = "cancelled"
        elif isinstance(res, BaseException):
            raise AssertionError(f"request {r.i} ({r}) failed: {res!r}") from res
    await client.close()


def _metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics").text


def _wait_until(cond, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


def _engine(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/ready").json()["engine"]


def _counts(text: str, model_id: str) -> dict[str, float]:
    over_one = metric(text, "canvasd_batch_size_count") - metric(text, "canvasd_batch_size_bucket", le="1.0")
    return {
        "gen200": metric(text, "canvasd_requests_total", endpoint="images/generations", status="200"),
        "gen499": metric(text, "canvasd_requests_total", endpoint="images/generations", status="499"),
        "edit200": metric(text, "canvasd_requests_total", endpoint="images/edits", status="200"),
        "var200": metric(text, "canvasd_requests_total", endpoint="images/variations", status="200"),
        "errors": sum(metric(text, "canvasd_requests_total", status=str(s)) for s in (400, 429, 500, 503)),
        "images": metric(text, "canvasd_images_generated_total", model=model_id),
        "client_cancel": metric(text, "canvasd_cancellations_total", reason="client"),
        "other_cancel": metric(text, "canvasd_cancellations_total", reason="timeout")
        + metric(text, "canvasd_cancellations_total", reason="shutdown"),
        "batches_over_one": over_one,
    }


def test_32_concurrent_sdk_requests(server, model):
    reqs = _plan(model)
    before = _counts(_metrics(server.url), model.id)
    t0 = time.perf_counter()
    asyncio.run(_storm(server.url, model.id, reqs))
    storm_s = time.perf_counter() - t0

    ok = [r for r in reqs if r.cancel is None]
    cancelled = [r for r in reqs if r.cancel is not None]
    assert all(r.outcome == "ok" for r in ok)
    assert all(r.outcome == "cancelled" for r in cancelled), [(r.i, r.outcome) for r in cancelled]

    # every answered request: exactly its n images, decoded, at its size, with real alpha
    for r in ok:
        assert len(r.images) == r.n, r
        for img in r.images:
            assert img.format == "PNG" and img.size == r.size
            assert img.mode == ("RGBA" if model.alpha else "RGB")
        if r.stream and r.endpoint == "generate":
            assert r.partials == r.n * min(r.partial_images, r.steps - 1), r
        elif r.stream:  # an edit re-noises only part of the schedule: fewer steps, maybe fewer previews
            assert r.partials <= r.n * r.partial_images, r

    # the server noticed every abandoned request and the counts add up
    def settled() -> bool:
        c = _counts(_metrics(server.url), model.id)
        return c["gen499"] - before["gen499"] >= 4 and c["client_cancel"] - before["client_cancel"] >= 6

    assert _wait_until(settled), _counts(_metrics(server.url), model.id)
    after = _counts(_metrics(server.url), model.id)
    delta = {k: after[k] - before[k] for k in after}
    ok_gen = sum(r.endpoint == "generate" for r in ok)
    ok_edit = sum(r.endpoint == "edit" for r in ok)
    ok_var = sum(r.endpoint == "variation" for r in ok)
    closed_streams = sum(r.cancel == "close_stream" for r in reqs)
    assert delta["gen200"] == ok_gen + closed_streams  # a stream's 200 was sent before its close
    assert delta["edit200"] == ok_edit and delta["var200"] == ok_var
    assert delta["gen499"] == sum(r.cancel in ("cancel_task", "timeout") for r in reqs)
    assert delta["errors"] == 0
    assert delta["images"] == sum(r.n for r in ok)  # nothing of the abandoned jobs was finished
    assert delta["client_cancel"] == len(cancelled) and delta["other_cancel"] == 0
    assert delta["batches_over_one"] > 0  # step-level batching happened

    # the engine is idle again: nothing queued or running, abandoned jobs' slots are free
    assert _wait_until(lambda: (lambda e: (e["queue_depth"], e["running"], e["active_jobs"]) == (0, 0, 0))(
        _engine(server.url)))
    text = _metrics(server.url)
    assert metric(text, "canvasd_queue_depth") == 0 and metric(text, "canvasd_running_batch") == 0

    # no cross-talk: each image is the one the same request makes alone, afterwards
    diffs: list[int] = []

    async def references() -> None:
        client = _aclient(server.url)
        for r in ok:
            kw = r.kwargs(model.id)
            alone = [decode(d.b64_json) for d in (await r.call(client)(**kw)).data]
            for k, (got, ref) in enumerate(zip(r.images, alone)):
                diff = max_visible_diff(got, ref)
                diffs.append(diff)
                assert diff <= BATCH_TOLERANCE, f"request {r.i} image {k}: differs by {diff} from alone"
        await client.close()

    asyncio.run(references())
    print(f"storm {storm_s:.2f}s; image differences from alone: max {max(diffs)}, "
          f"{sum(d > 0 for d in diffs)}/{len(diffs)} not identical")
    assert storm_s < 60


def test_queue_full_is_openai_rate_limit_through_the_sdk(live_server, model):
    # one sample per step and room for two waiting images: a running job + a waiting n=2 job fill it
    srv = live_server(backend=model.backend, batching=True, max_batch=1, max_queue=2)
    long = {"num_inference_steps": LONG_STEPS}
    size = f"{model.sizes[0][0]}x{model.sizes[0][1]}"

    async def scenario() -> None:
        client = _aclient(srv.url)
        running = asyncio.create_task(client.images.generate(model=model.id, prompt="a", size=size,
                                                             extra_body=long))
        assert await asyncio.to_thread(_wait_until, lambda: _engine(srv.url)["active_jobs"] == 1)
        # the waiting job never runs (the running one holds the only slot until it is cancelled);
        # its step count sets Retry-After (queued steps x step time): ~1 s, so the retry below is quick
        waiting = asyncio.create_task(client.images.generate(model=model.id, prompt="b", n=2, size=size,
                                                             extra_body={"num_inference_steps": 40}))
        assert await asyncio.to_thread(_wait_until, lambda: _engine(srv.url)["queue_depth"] == 2)
        before = await asyncio.to_thread(_metrics, srv.url)
        with pytest.raises(openai.RateLimitError) as exc:
            await client.images.generate(model=model.id, prompt="c", size=size, extra_body=long)
        err = exc.value
        assert err.status_code == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
        assert err.param is None and err.body["message"].startswith("Rate limit reached for image generation")
        retry_after = int(err.response.headers["retry-after"])
        assert retry_after >= 1 and f"try again in {retry_after}s" in err.body["message"]
        assert err.response.headers["retry-after-ms"] == str(retry_after * 1000)
        assert err.request_id and err.request_id.startswith("req_")
        after = await asyncio.to_thread(_metrics, srv.url)
        assert metric(after, "canvasd_rejected_total") - metric(before, "canvasd_rejected_total") == 1
        assert (metric(after, "canvasd_requests_total", endpoint="images/generations", status="429")
                - metric(before, "canvasd_requests_total", endpoint="images/generations", status="429")) == 1
        # a client with the SDK's default retries waits Retry-After and gets its image once the
        # queue has room: first attempt refused, then the blockers give up, then the retry succeeds
        patient = AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=2,
                              _strict_response_validation=True)
        retried = asyncio.create_task(patient.images.generate(
            model=model.id, prompt="e", size=size, extra_body={"num_inference_steps": 2}))
        assert await asyncio.to_thread(_wait_until, lambda: metric(
            _metrics(srv.url), "canvasd_rejected_total") - metric(after, "canvasd_rejected_total") == 1)
        for task in (running, waiting):  # give up on both; the server frees the queue
            task.cancel()
        await asyncio.gather(running, waiting, return_exceptions=True)
        r = await retried
        assert decode(r.data[0].b64_json).size == model.sizes[0]
        await patient.close()
        assert await asyncio.to_thread(
            _wait_until, lambda: (lambda e: (e["queue_depth"], e["active_jobs"]) == (0, 0))(_engine(srv.url)))
        r = await client.images.generate(model=model.id, prompt="d", size=size,
                                         extra_body={"num_inference_steps": 2})
        assert decode(r.data[0].b64_json).size == model.sizes[0]
        await client.close()

    asyncio.run(scenario())
