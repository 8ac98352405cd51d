"""The Backend protocol: what every model backend offers the engine.

Torch-free on purpose: the API layer reads `Capabilities` to validate requests without importing
torch. Backend implementations import torch in their own modules.

Two ways to run a job:
- stepwise (``capabilities.stepwise``): ``start`` makes one `Sample` per image, ``step`` advances a
  list of samples (possibly from different jobs, at different step indices) by one denoising step
  as one batch, ``preview`` decodes a sample's current clean-image prediction, ``finish`` decodes
  the final images. The engine uses this for step-level continuous batching.
- whole-job (``run``): the backend runs the job's full loop itself, calling ``on_step`` after every
  step; returning False from ``on_step`` cancels. Every backend implements ``run``; stepwise
  backends get it for free from `run_stepwise`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

    from canvasd.engine.jobs import Job


@dataclass(frozen=True)
class Capabilities:
    """What a backend can honour. The API's rule table combines this with the model profile."""

    text_to_image: bool = True
    image_to_image: bool = False  # edits/variations with `strength`
    inpaint: bool = False  # edits with a mask
    alpha: bool = False  # real transparent output (background="transparent")
    stepwise: bool = False  # implements start/step/preview/finish (step-level batching)
    max_batch: int = 8  # most samples in one denoising step
    native_size: tuple[int, int] = (512, 512)  # what it generates at when size="auto"
    # Output sizes: fixed presets, or any WxH with sides divisible by `size_multiple`.
    size_multiple: int = 8
    min_side: int = 64
    max_side: int = 2048
    upscales: bool = False  # True: generates at native size, output resized to the request
    quality_steps: dict[str, int] = field(
        default_factory=lambda: {"low": 10, "medium": 20, "high": 30}
    )
    default_quality: str = "medium"
    default_guidance: float = 5.0
    negative_prompt: bool = True
    max_input_images: int = 16
    max_prompt_tokens: int = 77  # longer prompts are truncated by the text encoder (documented)


@dataclass
class Sample:
    """One image in flight. Backends subclass it to hold latents, conditioning, sampler state."""

    job: "Job"
    index: int  # 0..n-1 within its job
    step: int = 0  # denoising steps done
    total_steps: int = 0

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps


StepCallback = Callable[[int, int, Callable[[], list["Image"]]], bool]
"""on_step(step_done, total_steps, preview) -> keep_going. `preview()` decodes current predictions."""


@runtime_checkable
class Backend(Protocol):
    id: str
    capabilities: Capabilities

    def load(self) -> None:
        """Load weights (slow; called once before serving)."""

    def batch_key(self, job: "Job") -> Hashable:
        """Samples of jobs with equal keys may share one `step` batch."""

    def start(self, job: "Job") -> list[Sample]:
        """Stepwise only: encode prompt, draw seeded noise, prepare init image/mask."""

    def step(self, samples: list[Sample]) -> None:
        """Stepwise only: advance every sample by one denoising step, as one batch."""

    def preview(self, sample: Sample) -> "Image":
        """Stepwise only: decode the sample's current predicted clean image."""

    def finish(self, samples: list[Sample]) -> list["Image"]:
        """Stepwise only: decode finished samples to PIL images (RGBA when alpha is native)."""

    def run(self, job: "Job", on_step: StepCallback) -> list["Image"]:
        """Run a whole job; call on_step after each step, stop early when it returns False."""

    def count_tokens(self, text: str) -> int:
        """Text tokens of a prompt, from the model's real tokenizer (for `usage`)."""


class Cancelled(Exception):
    """Raised inside a backend/engine when a job's cancel flag is seen between steps."""


def run_stepwise(backend: Any, job: "Job", on_step: StepCallback) -> list["Image"]:
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
