"""EmojiBackend: canvasd's embedded 64x64 RGBA text-to-image model (stepwise, CPU-fast).

Importing this module and constructing the backend is torch-free (capabilities come from the
weights' config.json), so the API can validate requests before any model is loaded.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Hashable

from canvasd.backends.base import StepCallback, run_stepwise
from canvasd.backends.emoji.defaults import DEFAULT_GUIDANCE, PACKAGED_WEIGHTS, QUALITY_STEPS, upsampler_dir
from canvasd.contracts import Capabilities, Job, Sample

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

    from canvasd.backends.emoji.sampler import EmojiPipeline



class EmojiWeightsMissing(FileNotFoundError):
    pass


class EmojiBackend:
    def __init__(self, model_id: str, weights_dir: str | None = None, precision: str = "auto"):
        self.id = model_id
        self.precision = precision
        self.weights_dir = Path(weights_dir) if weights_dir else PACKAGED_WEIGHTS
        cfg_path = self.weights_dir / "config.json"
        if not cfg_path.exists() or not (self.weights_dir / "model.safetensors").exists():
            raise EmojiWeightsMissing(
                f"emoji model weights not found in {self.weights_dir} (need config.json + model.safetensors); "
                "train them with `canvasd train` or point the model's path at a weights folder"
            )
        self.config = json.loads(cfg_path.read_text())
        sampling = self.config.get("sampling", {})
        size = int(self.config["model"].get("image_size", 64))
        stage2 = upsampler_dir(self.weights_dir)
        refined = None
        if stage2 is not None:
            up = json.loads((stage2 / "config.json").read_text())["model"]
            side = int(up.get("in_size", size)) * int(up.get("scale", 4))
            refined = (side, side)
        self.capabilities = Capabilities(
            text_to_image=True,
            image_to_image=True,
            inpaint=True,
            alpha=True,
            stepwise=True,
            max_batch=16,
            native_size=(size, size),
            size_multiple=1,
            upscales=True,
            refined_size=refined,
            quality_steps=dict(sampling.get("quality_steps", QUALITY_STEPS)),
            default_quality="medium",
            default_guidance=float(sampling.get("default_guidance", DEFAULT_GUIDANCE)),
            negative_prompt=True,
            max_prompt_tokens=int(self.config["model"].get("max_tokens", 16)),
        )
        self._pipe: EmojiPipeline | None = None
        self._tokenizer = None
        self._lock = threading.Lock()

    # ---- lifecycle ----------------------------------------------------------------------------

    def load(self) -> None:
        with self._lock:
            if self._pipe is None:
                from canvasd.backends.emoji.sampler import EmojiPipeline

                pipe = EmojiPipeline(self.weights_dir, self.config, self.precision)
                pipe.load()
                self._pipe = pipe

    @property
    def pipe(self) -> "EmojiPipeline":
        if self._pipe is None:
            self.load()
        return self._pipe  # type: ignore[return-value]

    def batch_key(self, job: "Job") -> Hashable:
        # one model, one resolution: every job of this model can share a UNet batch
        return self.id

    # ---- stepwise -----------------------------------------------------------------------------

    def start(self, job: "Job") -> list[Sample]:
        return self.pipe.start(job)

    def step(self, samples: list[Sample]) -> None:
        self.pipe.step(samples)  # type: ignore[arg-type]

    def preview(self, sample: Sample) -> "Image":
        return self.pipe.preview(sample)  # type: ignore[arg-type]

    def finish(self, samples: list[Sample]) -> list["Image"]:
        return self.pipe.finish(samples)  # type: ignore[arg-type]

    def run(self, job: "Job", on_step: StepCallback) -> list["Image"]:
        return run_stepwise(self, job, on_step)

    def count_tokens(self, text: str) -> int:
        if self._pipe is not None and self._pipe.text is not None:
            return self._pipe.text.count_tokens(text)
        if self._tokenizer is None:
            from canvasd.backends.emoji.model import load_tokenizer

            self._tokenizer = load_tokenizer()
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
