"""Torch-free stand-in backends for tests and benchmark dry runs (`canvasd bench --model fake`).

`FakeBackend` is stepwise: it records what the engine asks of it, so tests can assert batching
(`batches`: one list of ``(job.id, sample.index, step_before)`` per `step` call), and it can
simulate cost (`step_s + per_sample_s * batch`), pause inside a given `step` call, or raise.
Images are solid colours derived from the seed (image i of a job uses ``job.seed + i``), so the
same request gives the same bytes however it was batched. `FakeWholeJobBackend` is the
non-stepwise variant (only `run`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Hashable

from PIL import Image

from canvasd.backends.base import StepCallback, run_stepwise
from canvasd.contracts import Cancelled, Capabilities, Job, Sample, word_count_tokens


def seed_colour(seed: int) -> tuple[int, int, int]:
    return (seed * 37 + 11) % 256, (seed * 91 + 53) % 256, (seed * 151 + 97) % 256


def solid_image(job: Job, seed: int, fraction: float = 1.0) -> Image.Image:
    """The fake's 'generation': a solid colour; `fraction` < 1 darkens it (a preview)."""
    r, g, b = (round(c * fraction) for c in seed_colour(seed))
    return Image.new("RGBA", (job.width, job.height), (r, g, b, 255))


def steps_for(job: Job) -> int:
    """Steps a job's samples run: img2img runs only the re-noised part of the schedule."""
    if job.strength is not None:
        return max(1, round(job.steps * job.strength))
    return job.steps


@dataclass
class FakeSample(Sample):
    seed: int = 0


class FakeBackend:
    """A stepwise backend with no model: records batches, can be slowed, paused or made to fail."""

    def __init__(
        self,
        id: str = "fake",
        *,
        max_batch: int = 8,
        step_s: float = 0.0,
        per_sample_s: float = 0.0,
        native_size: tuple[int, int] = (64, 64),
        key: Callable[[Job], Hashable] | None = None,
        fail_when: Callable[[list[Sample]], bool] | None = None,
    ):
        self.id = id
        self.capabilities = Capabilities(
            image_to_image=True, inpaint=True, alpha=True, stepwise=True, max_batch=max_batch,
            native_size=native_size,
        )
        self.step_s = step_s
        self.per_sample_s = per_sample_s
        self.key = key or (lambda job: (job.width, job.height))
        self.fail_when = fail_when  # step raises RuntimeError when this returns True
        self.fail_start_when: Callable[[Job], bool] | None = None
        self.batches: list[list[tuple[str, int, int]]] = []
        self.started: list[str] = []  # job ids, in start order
        self.previews: list[tuple[str, int, int]] = []  # (job id, sample index, step)
        self.loaded = False
        self.max_concurrent_steps = 0
        self._active = 0
        self._lock = threading.Lock()
        self._pause_at: int | None = None
        self.paused = threading.Event()  # set while blocked inside the paused step call
        self._resume = threading.Event()

    # --- test controls -----------------------------------------------------------------------
    def pause_at(self, call: int) -> None:
        """Block inside the `call`-th step() call (1-based) until `resume()`."""
        self._pause_at = call
        self.paused.clear()
        self._resume.clear()

    def resume(self) -> None:
        self._resume.set()

    # --- Backend protocol --------------------------------------------------------------------
    def load(self) -> None:
        self.loaded = True

    def batch_key(self, job: Job) -> Hashable:
        return self.key(job)

    def start(self, job: Job) -> list[Sample]:
        if self.fail_start_when and self.fail_start_when(job):
            raise ValueError(f"fake start failure for {job.id}")
        self.started.append(job.id)
        total = steps_for(job)
        return [FakeSample(job, i, 0, total, seed=job.seed + i) for i in range(job.n)]

    def step(self, samples: list[Sample]) -> None:
        with self._lock:
            self._active += 1
            self.max_concurrent_steps = max(self.max_concurrent_steps, self._active)
            self.batches.append([(s.job.id, s.index, s.step) for s in samples])
            call = len(self.batches)
        try:
            if call == self._pause_at:
                self.paused.set()
                if not self._resume.wait(timeout=30):
                    raise TimeoutError("FakeBackend was never resumed")
            if self.step_s or self.per_sample_s:
                time.sleep(self.step_s + self.per_sample_s * len(samples))
            if self.fail_when and self.fail_when(samples):
                raise RuntimeError("fake step failure")
            for s in samples:
                s.step += 1
        finally:
            with self._lock:
                self._active -= 1

    def preview(self, sample: Sample) -> Image.Image:
        self.previews.append((sample.job.id, sample.index, sample.step))
        fraction = sample.step / max(sample.total_steps, 1)
        return solid_image(sample.job, sample.job.seed + sample.index, fraction)

    def finish(self, samples: list[Sample]) -> list[Image.Image]:
        return [solid_image(s.job, s.job.seed + s.index) for s in samples]

    def run(self, job: Job, on_step: StepCallback) -> list[Image.Image]:
        return run_stepwise(self, job, on_step)

    def count_tokens(self, text: str) -> int:
        return word_count_tokens(text)

    # --- helpers for assertions --------------------------------------------------------------
    def jobs_in(self, batch: list[tuple[str, int, int]]) -> set[str]:
        return {job_id for job_id, _, _ in batch}


class FakeWholeJobBackend:
    """A non-stepwise backend: only `run`, which loops over steps itself."""

    def __init__(self, id: str = "fake-whole", *, step_s: float = 0.0):
        self.id = id
        self.capabilities = Capabilities(stepwise=False, max_batch=4, native_size=(64, 64))
        self.step_s = step_s
        self.runs: list[str] = []
        self.max_concurrent_runs = 0
        self._active = 0
        self._lock = threading.Lock()

    def load(self) -> None:
        pass

    def batch_key(self, job: Job) -> Hashable:
        return None

    def run(self, job: Job, on_step: StepCallback) -> list[Image.Image]:
        with self._lock:
            self._active += 1
            self.max_concurrent_runs = max(self.max_concurrent_runs, self._active)
            self.runs.append(job.id)
        try:
            total = steps_for(job)
            for done in range(1, total + 1):
                if self.step_s:
                    time.sleep(self.step_s)
                fraction = done / total

                def preview(fraction: float = fraction) -> list[Image.Image]:
                    return [solid_image(job, job.seed + i, fraction) for i in range(job.n)]

                if not on_step(done, total, preview):
                    raise Cancelled(job.id)
            return [solid_image(job, job.seed + i) for i in range(job.n)]
        finally:
            with self._lock:
                self._active -= 1

    def count_tokens(self, text: str) -> int:
        return word_count_tokens(text)
