"""Test doubles for the API tests (imported by conftest.py and the test_api_* modules)."""

from __future__ import annotations

from PIL import Image, ImageDraw

from canvasd.contracts import Capabilities, Job, Sample
from canvasd.testing.fakes import FakeBackend

API_MODEL_ID = "test-model"


class ShapeBackend(FakeBackend):
    """FakeBackend whose images have real alpha: a seed-coloured disc on a transparent canvas
    (previews grow the disc), at the 64 px native size like the embedded model (`upscales`).
    Edits paint the disc over the first input image, so the input shows through."""

    def __init__(self, id: str = API_MODEL_ID, *, step_s: float = 0.0, alpha: bool = True,
                 inpaint: bool = True, image_to_image: bool = True, upscales: bool = True,
                 native: int = 64, max_side: int = 2048):
        super().__init__(id, step_s=step_s, native_size=(native, native))
        self.capabilities = Capabilities(
            image_to_image=image_to_image, inpaint=inpaint, alpha=alpha, stepwise=True,
            max_batch=8, native_size=(native, native), upscales=upscales, size_multiple=8,
            min_side=64, max_side=max_side, quality_steps={"low": 2, "medium": 3, "high": 4},
            default_quality="medium",
        )
        self.jobs: list[Job] = []

    def start(self, job: Job) -> list[Sample]:
        self.jobs.append(job)
        return super().start(job)

    def _draw(self, job: Job, seed: int, fraction: float) -> Image.Image:
        w, h = job.width, job.height
        base = job.init_images[0].copy() if job.init_images else Image.new("RGBA", (w, h), (0, 0, 0, 0))
        colour = ((seed * 37 + 11) % 256, (seed * 91 + 53) % 256, (seed * 151 + 97) % 256, 255)
        r = max(2, int(min(w, h) * 0.4 * max(fraction, 0.1)))
        cx, cy = w // 2 + (seed % 7) - 3, h // 2
        ImageDraw.Draw(base).ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        return base

    def preview(self, sample: Sample) -> Image.Image:
        self.previews.append((sample.job.id, sample.index, sample.step))
        return self._draw(sample.job, sample.job.seed + sample.index, sample.step / max(sample.total_steps, 1))

    def finish(self, samples: list[Sample]) -> list[Image.Image]:
        return [self._draw(s.job, s.job.seed + s.index, 1.0) for s in samples]
