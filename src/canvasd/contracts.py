"""What the API, the engine and the backends all speak: `Job` (a validated request),
`Sample` (one image in flight), `Capabilities` (what a backend can honour) and `Cancelled`.

Torch-free and HTTP-free on purpose: the API reads `Capabilities` to validate requests without
importing torch, and a backend imports these types without importing the engine.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

JobKind = Literal["generate", "edit", "variation"]

MAX_INPUT_IMAGES = 16  # input images one edit may carry (the OpenAI API's limit)

# img2img strength (how much of the schedule an image input is re-noised) when a request gives
# none, for every backend: the documented defaults.
DEFAULT_STRENGTH: dict[str, float] = {"edit": 0.75, "variation": 0.6}
HIGH_FIDELITY_STRENGTH = 0.5  # edits with input_fidelity="high" keep more of the input
INPAINT_STRENGTH = 1.0  # an edit with a mask repaints its area from pure noise


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
    # Upscaling backends with a second stage: the size it draws at. Edit inputs are fitted to it
    # (not to native_size), so the second stage can keep their detail. None: native_size.
    refined_size: tuple[int, int] | None = None
    quality_steps: dict[str, int] = field(
        default_factory=lambda: {"low": 10, "medium": 20, "high": 30}
    )
    default_quality: str = "medium"
    default_guidance: float = 5.0
    negative_prompt: bool = True
    guidance_scale: bool = True  # False: the model has no guidance (Flux-schnell); the request's is refused
    max_input_images: int = MAX_INPUT_IMAGES
    max_prompt_tokens: int = 77  # longer prompts are truncated by the text encoder (documented)
    loras: tuple[str, ...] = ()  # LoRA adapter names a request's `lora` may select


@dataclass
class Job:
    """One validated request for generations, edits and variations: the API builds it (sizes,
    steps, seed all resolved), the engine schedules it, a backend reads it."""

    kind: JobKind
    model: str  # local model id (aliases already resolved)
    prompt: str  # "" for variations
    n: int = 1
    width: int = 64  # size the backend should generate at (native for upscaling backends)
    height: int = 64
    # size the answer is fitted to (None: width x height); an upscaling backend's second stage
    # runs only when it is larger than what the first stage draws
    output_width: int | None = None
    output_height: int | None = None
    steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 0  # resolved; image i uses seed + i, so each image is reproducible alone
    negative_prompt: str | None = None
    strength: float | None = None  # img2img: fraction of the schedule re-noised (0..1]
    init_images: list["Image"] = field(default_factory=list)  # RGBA; first is the edit target
    mask: "Image | None" = None  # "L": 255 = repaint, 0 = keep (already converted from alpha)
    transparent: bool = False  # caller wants real alpha in the result
    partial_images: int = 0  # previews to emit while sampling (0..3)
    # LoRA adapters by name, scale None = the configured one; None = the model's configured set
    lora: tuple[tuple[str, float | None], ...] | None = None
    id: str = field(default_factory=lambda: "job_" + uuid.uuid4().hex[:16])
    created: float = field(default_factory=time.time)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def output_size(self) -> tuple[int, int]:
        return (self.output_width or self.width, self.output_height or self.height)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self) -> None:
        self.cancel_event.set()

    def img2img_strength(self) -> float:
        """`strength` when the job has one, else the default for its kind (see DEFAULT_STRENGTH)."""
        if self.strength is not None:
            return float(self.strength)
        if self.kind == "edit" and self.mask is not None:
            return INPAINT_STRENGTH
        return DEFAULT_STRENGTH.get(self.kind, 1.0)

    def preview_steps(self, total_steps: int) -> list[int]:
        """Step counts after which a partial image is emitted: evenly spaced, before the end."""
        k = min(self.partial_images, max(total_steps - 1, 0))
        return [round(total_steps * (i + 1) / (k + 1)) for i in range(k)]


@dataclass
class Sample:
    """One image in flight. Backends subclass it to hold latents, conditioning, sampler state."""

    job: Job
    index: int  # 0..n-1 within its job
    step: int = 0  # denoising steps done
    total_steps: int = 0

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps


def word_count_tokens(text: str) -> int:
    """The prompt-token count used when a model's tokenizer cannot tell: one token per word."""
    return len(text.split())


class Cancelled(Exception):
    """Raised inside a backend/engine when a job's cancel flag is seen between steps."""
