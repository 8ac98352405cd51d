"""The engine with fake backends: continuous batching, fairness, cancellation, limits, shutdown.

Determinism: jobs submitted before `engine.start()` are all waiting when the worker first looks,
and `FakeBackend.pause_at(k)` holds the worker inside the k-th step while a test acts.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from canvasd import metrics
from canvasd.settings import Settings
from canvasd.contracts import Cancelled, Job
from canvasd.engine.events import (
    JobFailed,
    JobFinished,
    JobTimeout,
    PartialImage,
    QueueFull,
    ShuttingDown,
)
from canvasd.engine.scheduler import Engine
from canvasd.testing.fakes import FakeBackend, FakeWholeJobBackend, seed_colour


@pytest.fixture
def make_engine():
    engines: list[Engine] = []

    def make(backends, **settings) -> Engine:
        if not isinstance(backends, dict):
            backends = {b.id: b for b in backends}
        engine = Engine(backends, Settings(**settings))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown(timeout_s=5)
        assert engine._thread is None or not engine._thread.is_alive()


def job(model="fake", *, steps=4, n=1, seed=0, prompt="p", size=64, **kw) -> Job:
    return Job(kind="generate", model=model, prompt=prompt, n=n, steps=steps, seed=seed,
               width=size, height=size, **kw)


async def paused(fake: FakeBackend) -> None:
    assert await asyncio.to_thread(fake.paused.wait, 10), "worker never reached the paused step"


async def events_of(handle) -> list:
    return [ev async for ev in handle.events()]


def batch_index(fake: FakeBackend, job_id: str, which=min) -> int:
    return which(i for i, b in enumerate(fake.batches) if job_id in fake.jobs_in(b))


def metric(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0


# ----------------------------------------------------------------------------- batching ----
async def test_job_joins_between_steps_of_running_job(make_engine):
    fake = FakeBackend()
    engine = make_engine([fake])
    fake.pause_at(3)
    engine.start()
    a = engine.submit(job(steps=6))
    await paused(fake)  # A is inside its 3rd step
    b = engine.submit(job(steps=4, seed=7))
    fake.resume()
    imgs_a, imgs_b = await asyncio.gather(a.result(), b.result())

    ida, idb = a.job.id, b.job.id
    assert fake.batches[:3] == [[(ida, 0, k)] for k in range(3)]
    # B joined at the very next step, riding with A at a different step index.
    assert fake.batches[3] == [(ida, 0, 3), (idb, 0, 0)]
    assert fake.batches[5] == [(ida, 0, 5), (idb, 0, 2)]
    assert fake.batches[6] == [(idb, 0, 3)]  # A left when finished
    assert len(fake.batches) == 7
    assert imgs_a[0].getpixel((0, 0))[:3] == seed_colour(0)
    assert imgs_b[0].getpixel((0, 0))[:3] == seed_colour(7)
    assert fake.max_concurrent_steps == 1


async def test_n_and_different_step_counts_and_strengths_share_batches(make_engine):
    fake = FakeBackend()
    engine = make_engine([fake])
    h1 = engine.submit(job(steps=3, n=2, seed=10))
    h2 = engine.submit(Job(kind="edit", model="fake", prompt="e", steps=10, strength=0.5, seed=20))
    engine.start()
    r1, r2 = await asyncio.gather(h1.result(), h2.result())
    assert len(r1) == 2 and len(r2) == 1
    assert [im.getpixel((1, 1))[:3] for im in r1] == [seed_colour(10), seed_colour(11)]
    first = fake.batches[0]
    assert sorted(first) == sorted([(h1.job.id, 0, 0), (h1.job.id, 1, 0), (h2.job.id, 0, 0)])
    # The 3-step job leaves after step 3; the img2img job runs its 5 steps.
    assert [len(b) for b in fake.batches] == [3, 3, 3, 1, 1]


async def test_job_larger_than_cap_runs_alone_in_chunks(make_engine):
    fake = FakeBackend()
    engine = make_engine([fake], max_batch=2)
    h = engine.submit(job(steps=2, n=5))
    engine.start()
    images = await h.result()
    assert len(images) == 5
    assert [len(b) for b in fake.batches] == [2, 2, 1, 2, 2, 1]


async def test_batch_respects_cap_and_fifo(make_engine):
    fake = FakeBackend()
    engine = make_engine([fake], max_batch=3)
    hs = [engine.submit(job(steps=2, n=2, seed=i)) for i in range(3)]
    engine.start()
    await asyncio.gather(*(h.result() for h in hs))
    assert all(len(b) <= 3 for b in fake.batches)
    assert fake.started == [h.job.id for h in hs]  # first come, first started


async def test_serial_mode_never_mixes_jobs(make_engine):
    fake = FakeBackend()
    engine = make_engine([fake], batching=False)
    hs = [engine.submit(job(steps=3, n=2, seed=i)) for i in range(3)]
    engine.start()
    late = engine.submit(job(steps=3, n=1, seed=9))
    await asyncio.gather(*(h.result() for h in hs + [late]))
    for batch in fake.batches:
        assert len(fake.jobs_in(batch)) == 1
    # Each job's own n samples still share a step.
    assert [len(b) for b in fake.batches] == [2, 2, 2] * 3 + [1, 1, 1]
    assert fake.started == [h.job.id for h in hs + [late]]


# ----------------------------------------------------------------------------- fairness ----
async def test_other_key_is_served_before_later_same_key_jobs(make_engine):
    fake = FakeBackend()  # key: (width, height)
    engine = make_engine([fake], max_batch=4)
    fake.pause_at(1)
    engine.start()
    a1 = engine.submit(job(steps=3, size=64))
    await paused(fake)
    b1 = engine.submit(job(steps=3, size=32))
    a2 = engine.submit(job(steps=3, size=64))
    a3 = engine.submit(job(steps=3, size=64))
    fake.resume()
    await asyncio.gather(*(h.result() for h in (a1, b1, a2, a3)))
    # A's group stopped admitting once B waited: a2/a3 did not join a1 even though slots were free.
    assert fake.batches[:3] == [[(a1.job.id, 0, k)] for k in range(3)]
    assert batch_index(fake, b1.job.id, max) < batch_index(fake, a2.job.id)
    # a2 and a3 were then batched together.
    assert fake.jobs_in(fake.batches[-1]) == {a2.job.id, a3.job.id}


async def test_round_robin_between_keys_batches_each_key(make_engine):
    fake = FakeBackend()
    engine = make_engine([fake])
    hs = [engine.submit(job(steps=2, size=s)) for s in (64, 32, 64, 32)]
    engine.start()
    await asyncio.gather(*(h.result() for h in hs))
    ids = [h.job.id for h in hs]
    assert fake.jobs_in(fake.batches[0]) == {ids[0], ids[2]}
    assert fake.jobs_in(fake.batches[2]) == {ids[1], ids[3]}


async def test_flood_of_one_key_does_not_starve_another(make_engine):
    fake = FakeBackend(step_s=0.005)
    engine = make_engine([fake], max_batch=4)
    engine.start()
    flood: list = []
    stop = asyncio.Event()

    async def flooder():
        for i in range(200):  # bounded
            if stop.is_set():
                return
            flood.append(engine.submit(job(steps=3, size=64, seed=i)))
            await asyncio.sleep(0.003)

    task = asyncio.create_task(flooder())
    await asyncio.sleep(0.03)
    lonely = engine.submit(job(steps=3, size=32))
    await asyncio.wait_for(lonely.result(), timeout=5)
    stop.set()
    await task
    await asyncio.gather(*(h.result() for h in flood))
    # The lonely job finished while the flood was still going.
    submitted_after = [h for h in flood if batch_index(fake, h.job.id) > batch_index(fake, lonely.job.id, max)]
    assert submitted_after, "the 32px job waited for the whole flood"


# ----------------------------------------------------------------------------- cancellation -
async def test_cancelled_job_leaves_and_slot_is_reused_next_step(make_engine):
    fake = FakeBackend()
    engine = make_engine([fake], max_batch=2)
    a = engine.submit(job(steps=10))
    b = engine.submit(job(steps=10))
    c = engine.submit(job(steps=10))  # waits: the batch holds 2
    before = metric("canvasd_cancellations_total", reason="client")
    fake.pause_at(2)
    engine.start()
    await paused(fake)
    a.cancel()
    fake.resume()
    with pytest.raises(Cancelled):
        await a.result()
    await asyncio.gather(b.result(), c.result())
    ida, idb, idc = a.job.id, b.job.id, c.job.id
    assert fake.batches[1] == [(ida, 0, 1), (idb, 0, 1)]
    assert fake.batches[2] == [(idb, 0, 2), (idc, 0, 0)]
    assert all(ida not in fake.jobs_in(bt) for bt in fake.batches[2:])
    assert metric("canvasd_cancellations_total", reason="client") == before + 1
    events = await events_of(a)
    assert isinstance(events[-1], JobFailed) and isinstance(events[-1].error, Cancelled)


async def test_cancel_while_queued_frees_queue_at_once(make_engine):
    fake = FakeBackend()
    engine = make_engine([fake], max_queue=2)
    h = engine.submit(job(n=2))
    with pytest.raises(QueueFull):
        engine.submit(job(n=1))
    h.cancel()
    assert engine.stats()["queue_depth"] == 0
    engine.submit(job(n=2))  # room again, before the worker ever ran
    with pytest.raises(Cancelled):
        await h.result()


async def test_request_timeout_running_and_queued(make_engine):
    fake = FakeBackend(step_s=0.01)
    engine = make_engine([fake], request_timeout_s=0.2, batching=False)
    before = metric("canvasd_cancellations_total", reason="timeout")
    running = engine.submit(job(steps=1000))
    queued = engine.submit(job(steps=2))
    engine.start()
    t0 = time.monotonic()
    with pytest.raises(JobTimeout):
        await running.result()
    with pytest.raises(JobTimeout):
        await queued.result()
    assert time.monotonic() - t0 < 2
    assert metric("canvasd_cancellations_total", reason="timeout") == before + 2
    ok = engine.submit(job(steps=2))  # the engine keeps serving
    assert len(await ok.result()) == 1


# ----------------------------------------------------------------------------- limits -------
async def test_queue_full_raises_with_retry_after(make_engine):
    fake = FakeBackend()
    engine = make_engine([fake], max_queue=3)
    engine.submit(job(n=2))
    with pytest.raises(QueueFull) as err:
        engine.submit(job(n=2))
    assert err.value.retry_after >= 1
    engine.submit(job(n=1))  # exactly fills the queue
    assert engine.stats()["queue_depth"] == 3


async def test_retry_after_grows_with_recent_step_time(make_engine):
    fake = FakeBackend(step_s=0.05)
    engine = make_engine([fake], max_queue=4, max_batch=1)
    engine.start()
    await engine.submit(job(steps=3)).result()  # measure a step time (~0.05 s)
    fake.pause_at(len(fake.batches) + 1)
    engine.submit(job(steps=20))
    await paused(fake)
    for _ in range(4):
        engine.submit(job(steps=20))
    with pytest.raises(QueueFull) as err:
        engine.submit(job(steps=20, n=4))
    # 4 excess images x 20 steps x ~0.05 s / batch 1 = ~4 s (the rule in _retry_after_locked)
    assert 3 <= err.value.retry_after <= 8
    assert err.value.retry_after == int(err.value.retry_after)
    fake.resume()


# ----------------------------------------------------------------------------- failures -----
async def test_step_error_fails_only_that_batch_and_engine_keeps_serving(make_engine):
    boom = FakeBackend(fail_when=lambda samples: any(s.job.prompt == "boom" for s in samples))
    engine = make_engine([boom])
    bad = engine.submit(job(prompt="boom", size=64))
    batchmate = engine.submit(job(size=64))
    other_key = engine.submit(job(size=32))  # a different batch: unaffected
    engine.start()
    with pytest.raises(RuntimeError, match="fake step failure"):
        await bad.result()
    with pytest.raises(RuntimeError):
        await batchmate.result()
    assert len(await other_key.result()) == 1
    assert len(await engine.submit(job(size=64)).result()) == 1


async def test_start_error_fails_only_that_job(make_engine):
    fake = FakeBackend()
    fake.fail_start_when = lambda j: j.prompt == "bad"
    engine = make_engine([fake])
    bad = engine.submit(job(prompt="bad"))
    good = engine.submit(job())
    engine.start()
    with pytest.raises(ValueError):
        await bad.result()
    assert len(await good.result()) == 1


# ----------------------------------------------------------------------------- previews -----
async def test_previews_at_the_right_steps(make_engine):
    fake = FakeBackend()
    engine = make_engine([fake])
    h = engine.submit(job(steps=6, n=2, partial_images=2))
    plain = engine.submit(job(steps=6))
    engine.start()
    events = await events_of(h)
    assert h.job.preview_steps(6) == [2, 4]
    partials = [e for e in events if isinstance(e, PartialImage)]
    assert sorted((p.image_index, p.partial_index) for p in partials) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(fake.previews) == sorted(
        [(h.job.id, i, s) for i in (0, 1) for s in (2, 4)]
    )
    assert isinstance(events[-1], JobFinished) and len(events) == 5
    assert set(events[-1].timings) == {"queue_s", "engine_s"}
    # A preview is the real in-progress decode (darker than the final colour here).
    assert partials[0].image.size == (64, 64) and partials[0].image.mode == "RGBA"
    assert [e for e in await events_of(plain) if isinstance(e, PartialImage)] == []


async def test_whole_job_backend_runs_one_at_a_time_with_previews(make_engine):
    whole = FakeWholeJobBackend(step_s=0.001)
    engine = make_engine([whole])
    hs = [engine.submit(job("fake-whole", steps=4, n=2, partial_images=1)) for _ in range(3)]
    engine.start()
    all_events = await asyncio.gather(*(events_of(h) for h in hs))
    assert whole.max_concurrent_runs == 1
    assert whole.runs == [h.job.id for h in hs]
    for events in all_events:
        assert [type(e).__name__ for e in events] == ["PartialImage"] * 2 + ["JobFinished"]
        assert len(events[-1].images) == 2


async def test_whole_job_backend_cancel(make_engine):
    whole = FakeWholeJobBackend(step_s=0.005)
    engine = make_engine([whole])
    engine.start()
    h = engine.submit(job("fake-whole", steps=2000))
    await asyncio.sleep(0.05)
    h.cancel()
    with pytest.raises(Cancelled):
        await asyncio.wait_for(h.result(), timeout=2)


async def test_two_models_share_the_worker(make_engine):
    fast, whole = FakeBackend("a"), FakeWholeJobBackend("b")
    engine = make_engine([fast, whole])
    engine.start()
    r = await asyncio.gather(engine.submit(job("a")).result(), engine.submit(job("b")).result())
    assert [len(x) for x in r] == [1, 1]
    with pytest.raises(ValueError):
        engine.submit(job("nope"))


# ----------------------------------------------------------------------------- shutdown -----
async def test_shutdown_drains_running_and_fails_queued(make_engine):
    fake = FakeBackend(step_s=0.005)
    engine = make_engine([fake], max_batch=1)
    running = engine.submit(job(steps=5))
    queued = engine.submit(job(steps=5))
    before = metric("canvasd_cancellations_total", reason="shutdown")
    fake.pause_at(1)
    engine.start()
    await paused(fake)
    closing = asyncio.create_task(engine.ashutdown(timeout_s=5))
    with pytest.raises(ShuttingDown):
        await queued.result()
    with pytest.raises(ShuttingDown):
        engine.submit(job())
    fake.resume()
    assert len(await running.result()) == 1  # in-flight work finished
    await closing
    assert not engine._thread.is_alive()
    assert metric("canvasd_cancellations_total", reason="shutdown") == before + 1


async def test_shutdown_deadline_cancels_running(make_engine):
    fake = FakeBackend(step_s=0.01)
    engine = make_engine([fake])
    engine.start()
    h = engine.submit(job(steps=10_000))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await engine.ashutdown(timeout_s=0.1)
    assert time.monotonic() - t0 < 2
    with pytest.raises(ShuttingDown):
        await h.result()
    assert not engine._thread.is_alive()


# ----------------------------------------------------------------------------- metrics ------
async def test_metrics_add_up(make_engine):
    fake = FakeBackend("fake-metrics")
    engine = make_engine([fake])
    before = {
        "images": metric("canvasd_images_generated_total", model="fake-metrics"),
        "batch_count": metric("canvasd_batch_size_count"),
        "batch_sum": metric("canvasd_batch_size_sum"),
        "wait_count": metric("canvasd_queue_wait_seconds_count"),
        "engine_count": metric("canvasd_engine_seconds_count"),
    }
    hs = [engine.submit(job("fake-metrics", steps=4, n=2, seed=i)) for i in range(3)]
    assert metric("canvasd_queue_depth") == 6
    engine.start()
    await asyncio.gather(*(h.result() for h in hs))
    assert metric("canvasd_images_generated_total", model="fake-metrics") == before["images"] + 6
    assert metric("canvasd_batch_size_count") == before["batch_count"] + 4
    assert metric("canvasd_batch_size_sum") == before["batch_sum"] + 24
    assert metric("canvasd_queue_wait_seconds_count") == before["wait_count"] + 3
    assert metric("canvasd_engine_seconds_count") == before["engine_count"] + 3
    assert metric("canvasd_queue_depth") == 0
    await asyncio.sleep(0.01)
    assert metric("canvasd_running_batch") == 0
    stats = engine.stats()
    assert stats["queue_depth"] == 0 and stats["running"] == 0 and stats["active_jobs"] == 0
    assert stats["steps_done"] == 4


async def test_running_batch_gauge_is_zero_after_the_last_job_is_cancelled(make_engine):
    # regression (found by test_e2e_load): when the group's last job left by cancellation rather
    # than by finishing, the gauge kept showing the last step's batch size on an idle engine
    fake = FakeBackend()
    engine = make_engine([fake])
    h = engine.submit(job(steps=50))
    fake.pause_at(2)
    engine.start()
    await paused(fake)
    assert metric("canvasd_running_batch") == 1
    h.cancel()
    fake.resume()
    with pytest.raises(Cancelled):
        await h.result()
    deadline = time.monotonic() + 5
    while engine.stats()["active_jobs"] and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert engine.stats()["active_jobs"] == 0
    assert metric("canvasd_running_batch") == 0


async def test_prompt_tokens_are_counted_on_the_worker_thread(make_engine):
    import threading

    seen: list[str] = []

    class Counting(FakeBackend):
        def count_tokens(self, text: str) -> int:
            seen.append(threading.current_thread().name)
            return len(text.split())

    engine = make_engine([Counting()])
    engine.start()
    h = engine.submit(job(prompt="a red apple"))
    events = await events_of(h)
    assert events[-1].prompt_tokens == 3 and h.prompt_tokens == 3
    assert seen == ["canvasd-engine"]
    h = engine.submit(job(prompt=""))
    await h.result()
    assert h.prompt_tokens == 0


def test_engine_module_does_not_import_torch():
    code = "import sys, canvasd.engine.scheduler, canvasd.testing.fakes; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
