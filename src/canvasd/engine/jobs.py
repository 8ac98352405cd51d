"""One Job type for generations, edits and variations: the validated request the engine runs.

The API layer builds it (sizes, steps, seed all resolved); backends read it; nothing here knows HTTP.
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


@dataclass
class Job:
    kind: JobKind
    model: str  # local model id (aliases already resolved)
    prompt: str  # "" for variations
    n: int = 1
    width: int = 64  # size the backend should generate at (native for upscaling backends)
    height: int = 64
    steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 0  # resolved; image i uses seed + i, so each image is reproducible alone
    negative_prompt: str | None = None
    strength: float | None = None  # img2img: fraction of the schedule re-noised (0..1]
    init_images: list["Image"] = field(default_factory=list)  # RGBA; first is the edit target
    mask: "Image | None" = None  # "L": 255 = repaint, 0 = keep (already converted from alpha)
    transparent: bool = False  # caller wants real alpha in the result
    partial_images: int = 0  # previews to emit while sampling (0..3)
    id: str = field(default_factory=lambda: "job_" + uuid.uuid4().hex[:16])
    created: float = field(default_factory=time.time)
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self) -> None:
        self.cancel_event.set()

    def preview_steps(self, total_steps: int) -> list[int]:
        """Step counts after which a partial image is emitted: evenly spaced, before the end."""
        k = min(self.partial_images, max(total_steps - 1, 0))
        return [round(total_steps * (i + 1) / (k + 1)) for i in range(k)]
