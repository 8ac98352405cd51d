"""The backend protocols: what a model backend offers the engine.

Torch-free on purpose (backend implementations import torch in their own modules). The types
they exchange with the API and the engine (`Job`, `Sample`, `Capabilities`, `Cancelled`) live in
`canvasd.contracts`.

Two ways to run a job:
- whole-job (`Backend.run`): the backend runs the job's full loop itself, calling ``on_step``
  after every step; returning False from ``on_step`` cancels. Every backend implements it.
- stepwise (`StepwiseBackend`, declared by ``capabilities.stepwise``): ``start`` makes one
  `Sample` per image, ``step`` advances a list of samples (possibly from different jobs, at
  different step indices) by one denoising step as one batch, ``preview`` decodes a sample's
  current clean-image prediction, ``finish`` decodes the final images. The engine uses this for
  step-level continuous batching; such a backend gets ``run`` for free from `run_stepwise`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Hashable, Protocol, runtime_checkable

from canvasd.contracts import Cancelled, Capabilities, Job, Sample, word_count_tokens

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

log = logging.getLogger("canvasd.backends")

StepCallback = Callable[[int, int, Callable[[], list["Image"]]], bool]
"""on_step(step_done, total_steps, preview) -> keep_going. `preview()` decodes current predictions."""


@runtime_checkable
class Backend(Protocol):
    """A model that runs whole jobs."""

    id: str
    capabilities: Capabilities

    def load(self) -> None:
        """Load weights (slow; called once before serving)."""

    def batch_key(self, job: Job) -> Hashable:
        """Samples of jobs with equal keys may share one `step` batch."""

    def run(self, job: Job, on_step: StepCallback) -> list["Image"]:
        """Run a whole job; call on_step after each step, stop early when it returns False."""

    def count_tokens(self, text: str) -> int:
        """Text tokens of a prompt, from the model's real tokenizer (for `usage`)."""


@runtime_checkable
class StepwiseBackend(Backend, Protocol):
    """A backend whose samples the engine advances one batched denoising step at a time."""

    def start(self, job: Job) -> list[Sample]:
        """Encode prompt, draw seeded noise, prepare init image/mask."""

    def step(self, samples: list[Sample]) -> None:
        """Advance every sample by one denoising step, as one batch."""

    def preview(self, sample: Sample) -> "Image":
        """Decode the sample's current predicted clean image."""

    def finish(self, samples: list[Sample]) -> list["Image"]:
        """Decode finished samples to PIL images (RGBA when alpha is native)."""


def as_stepwise(backend: Backend) -> StepwiseBackend | None:
    """The backend as a `StepwiseBackend` when it declares ``capabilities.stepwise``, else None."""
    if not backend.capabilities.stepwise:
        return None
    if not isinstance(backend, StepwiseBackend):
        raise TypeError(f"backend {backend.id!r} declares stepwise but lacks start/step/preview/finish")
    return backend


def count_prompt_tokens(backend: Backend, prompt: str) -> int:
    """The prompt's text tokens by the backend's own tokenizer; a word count when it fails (usage
    must never fail a finished generation). Call it where the backend's other work runs: a
    tokenizer may be shared with the sampling code and unsafe to call from another thread."""
    if not prompt:
        return 0
    try:
        return int(backend.count_tokens(prompt))
    except Exception:  # noqa: BLE001 - logged; the word count stands in
        log.warning("count_tokens failed for %s; using a word count", backend.id, exc_info=True)
        return word_count_tokens(prompt)


def run_stepwise(backend: StepwiseBackend, job: Job, on_step: StepCallback) -> list["Image"]:
    """`Backend.run` for stepwise backends: the job's own samples, batched among themselves."""
    samples = backend.start(job)
    total = max(s.total_steps for s in samples) if samples else 0
    while not all(s.done for s in samples):
        live = [s for s in samples if not s.done]
        backend.step(live)
        done_steps = max(s.step for s in samples)
        if not on_step(done_steps, total, lambda: [backend.preview(s) for s in samples]):
            raise Cancelled(job.id)
    return backend.finish(samples)
