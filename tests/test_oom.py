"""Out of device memory during a batch: the real engine splits and retries; a single image that
does not fit fails only its own request, with an OpenAI `server_error` saying why.

The test doubles raise torch's own `OutOfMemoryError` (what CUDA and XPU raise; the CPU never
does) above a number of samples, so the engine's handling is exercised without a GPU.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
import torch
from api_support import ShapeBackend

from canvasd import metrics
from canvasd.settings import Settings
from canvasd.contracts import Job
from canvasd.engine.events import JobFailed, JobFinished, OutOfDeviceMemory, PartialImage
from canvasd.engine.oom import is_out_of_memory
from canvasd.engine.scheduler import Engine
from canvasd.testing.fakes import FakeBackend, FakeWholeJobBackend, seed_colour


def test_torch_oom_types_are_one():
    # CUDA raises torch.cuda.OutOfMemoryError; it is torch.OutOfMemoryError in torch 2.x.
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 17 GB)"))
    assert not is_out_of_memory(RuntimeError("shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


class LimitedMemory:
    """Mixin: `step` runs out of device memory above `fits` samples, and for any sample wider
    than `max_width` even alone; the check comes first, so a failed step changes nothing (as a
    real forward that raises leaves the latents alone)."""

    fits = 2
    max_width = 10**9
    device = "cuda:0"

    def _check(self, samples) -> None:
        if len(samples) > self.fits or any(s.job.width > self.max_width for s in samples):
            self.refused.append(len(samples))
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(samples)} GiB")

    def step(self, samples) -> None:
        self._check(samples)
        super().step(samples)


class OomFake(LimitedMemory, FakeBackend):
    def __init__(self, *args, fits: int = 2, max_width: int = 10**9, **kw):
        super().__init__(*args, **kw)
        self.fits, self.max_width, self.refused = fits, max_width, []


class OomShapes(LimitedMemory, ShapeBackend):
    def __init__(self, *args, fits: int = 2, max_width: int = 10**9, **kw):
        super().__init__(*args, **kw)
        self.fits, self.max_width, self.refused = fits, max_width, []


def job(*, steps=3, n=1, seed=0, size=64, model="fake", **kw) -> Job:
    return Job(kind="generate", model=model, prompt="p", n=n, steps=steps, seed=seed, width=size,
               height=size, **kw)


@pytest.fixture
def engine_for():
    engines: list[Engine] = []

    def make(backend, **settings) -> Engine:
        engine = Engine({backend.id: backend}, Settings(**settings))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown(timeout_s=5)
        assert not engine._thread.is_alive()


def splits() -> float:
    return metrics.REGISTRY.get_sample_value("canvasd_oom_splits_total") or 0.0


async def test_batch_that_runs_out_of_memory_is_split_and_every_job_finishes(engine_for):
    fake = OomFake(fits=2)
    engine = engine_for(fake, max_batch=8)
    before = splits()
    handles = [engine.submit(job(seed=10 * i, n=1 + (i == 0))) for i in range(4)]  # 5 samples
    engine.start()
    results = await asyncio.gather(*(h.result() for h in handles))
    # Every image, with its own seed's colour: nothing lost, nothing mixed up.
    assert [[im.getpixel((0, 0))[:3] for im in r] for r in results] == [
        [seed_colour(0), seed_colour(1)], [seed_colour(10)], [seed_colour(20)], [seed_colour(30)]]
    # 5 samples did not fit, nor 3; after that the group's cap is 2 and no step is refused again.
    assert fake.refused == [5, 3]
    assert max(len(b) for b in fake.batches) == 2
    assert all(len(b) <= 2 for b in fake.batches)
    assert splits() - before == 2
    # Each sample ran its 3 steps exactly once.
    steps = [(jid, i, k) for b in fake.batches for (jid, i, k) in b]
    assert len(steps) == len(set(steps)) == 5 * 3
    # A later group of the same key starts at the size that fitted instead of running out again.
    more = [engine.submit(job(seed=100 + i)) for i in range(4)]
    await asyncio.gather(*(h.result() for h in more))
    assert fake.refused == [5, 3]


async def test_single_image_that_does_not_fit_fails_only_its_job(engine_for):
    fake = OomFake(fits=4, max_width=64, key=lambda j: "one key")  # one batch for both sizes
    engine = engine_for(fake)
    small = engine.submit(job(seed=1, n=2))
    big = engine.submit(job(seed=2, size=128))
    engine.start()
    big_events = [ev async for ev in big.events()]
    assert isinstance(big_events[-1], JobFailed)
    error = big_events[-1].error
    assert isinstance(error, OutOfDeviceMemory)
    assert "128x128" in str(error) and "cuda:0" in str(error) and "'fake'" in str(error)
    images = await small.result()
    assert [im.getpixel((0, 0))[:3] for im in images] == [seed_colour(1), seed_colour(2)]
    # The server keeps serving: a new request after the failure finishes.
    again = engine.submit(job(seed=5))
    assert (await again.result())[0].getpixel((0, 0))[:3] == seed_colour(5)


class OomWholeJob(FakeWholeJobBackend):
    """Runs out of memory for jobs of more than `fits` images (whole-job backends batch a job's
    images inside their own pipeline call)."""

    device = "cuda:1"

    def __init__(self, fits: int):
        super().__init__("whole")
        self.fits = fits
        self.sizes: list[tuple[int, int]] = []  # (n, seed) of every run attempted

    def run(self, job, on_step):
        self.sizes.append((job.n, job.seed))
        if job.n > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return super().run(job, on_step)


async def test_whole_job_is_rerun_in_halves_with_the_same_seeds(engine_for):
    backend = OomWholeJob(fits=2)
    engine = engine_for(backend)
    engine.start()
    handle = engine.submit(job(model="whole", n=5, seed=40, steps=4, partial_images=1))
    events = [ev async for ev in handle.events()]
    assert isinstance(events[-1], JobFinished)
    colours = [im.getpixel((0, 0))[:3] for im in events[-1].images]
    assert colours == [seed_colour(40 + i) for i in range(5)]  # as one run would have made them
    assert backend.sizes == [(5, 40), (3, 40), (2, 40), (1, 42), (2, 43)]
    partial_indices = sorted(ev.image_index for ev in events if isinstance(ev, PartialImage))
    assert partial_indices == [0, 1, 2, 3, 4]


async def test_whole_job_of_one_image_that_does_not_fit_fails_clearly(engine_for):
    engine = engine_for(OomWholeJob(fits=0))
    engine.start()
    handle = engine.submit(job(model="whole", size=96))
    with pytest.raises(OutOfDeviceMemory, match="96x96.*cuda:1"):
        await handle.result()


class OomDecode(FakeBackend):
    """Steps fit; decoding more than one image at once does not."""

    def __init__(self):
        super().__init__()
        self.decoded: list[int] = []

    def finish(self, samples):
        self.decoded.append(len(samples))
        if len(samples) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return super().finish(samples)


async def test_decode_that_runs_out_of_memory_decodes_one_at_a_time(engine_for):
    fake = OomDecode()
    engine = engine_for(fake)
    handle = engine.submit(job(n=3, seed=7))
    engine.start()
    images = await handle.result()
    assert [im.getpixel((0, 0))[:3] for im in images] == [seed_colour(7 + i) for i in range(3)]
    assert fake.decoded == [3, 1, 1, 1]


def test_over_http_the_request_that_does_not_fit_gets_a_server_error(live_server):
    """Through the real app and the official SDK: the 1024x1024 request gets a 500 `server_error`
    naming the cause, while the concurrent 256x256 requests (their batches split to fit) all get
    their images."""
    from concurrent.futures import ThreadPoolExecutor

    backend = OomShapes(fits=2, max_width=512, upscales=False, step_s=0.01)
    srv = live_server(backend=backend)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)

    def generate(size: str):
        return client.images.generate(model=backend.id, prompt="a red apple", size=size, n=1)

    with ThreadPoolExecutor(6) as pool:
        small = [pool.submit(generate, "256x256") for _ in range(5)]
        big = pool.submit(generate, "1024x1024")
        with pytest.raises(openai.InternalServerError) as info:
            big.result(timeout=60)
        results = [f.result(timeout=60) for f in small]
    body = info.value.body
    assert info.value.status_code == 500
    assert body["type"] == "server_error" and "Out of device memory" in body["message"]
    assert "1024x1024" in body["message"]
    assert info.value.response.headers["x-should-retry"] == "false"
    assert all(len(r.data) == 1 and r.data[0].b64_json for r in results)


# ----------------------------------------------------------------------------- on a GPU -----
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
async def test_real_cuda_out_of_memory_is_split_and_a_too_big_image_fails_alone(engine_for):
    """Steps that really allocate device memory: 40% of what is free per 64 px sample (two fit,
    three do not), three times that for a 128 px sample (never fits)."""
    free, _ = torch.cuda.mem_get_info()
    per_sample = int(free * 0.4)

    class CudaHungry(FakeBackend):
        device = "cuda:0"

        def step(self, samples):
            need = sum(per_sample * (3 if s.job.width > 64 else 1) for s in samples)
            block = torch.empty(need, dtype=torch.uint8, device="cuda")
            block.fill_(1)
            del block
            super().step(samples)

    fake = CudaHungry(key=lambda j: "one key")
    engine = engine_for(fake)
    small = [engine.submit(job(seed=s)) for s in range(3)]
    big = engine.submit(job(seed=9, size=128))
    engine.start()
    assert [(await h.result())[0].getpixel((0, 0))[:3] for h in small] == [seed_colour(s) for s in range(3)]
    with pytest.raises(OutOfDeviceMemory, match="128x128.*cuda:0"):
        await big.result()
    assert max(len(b) for b in fake.batches) <= 2
