"""Any diffusers pipeline saved in a local folder, as a canvasd backend.

Two ways to run:
- whole-job (`run`), for every pipeline: the pipeline's own ``__call__`` (text2img, img2img via
  ``AutoPipelineForImage2Image.from_pipe``, inpaint via ``AutoPipelineForInpainting.from_pipe``),
  one seeded generator per image, ``callback_on_step_end`` for progress, previews and cancel.
- step-level (`start`/`step`/`preview`/`finish`), for the families in `FAMILIES` (SD-1/2, SDXL,
  SD3, Flux; `stepwise.py`): samples of different jobs, at different step indices, share one
  batched denoiser forward, and each image equals the one the pipeline makes for the same seed.

Previews decode the sampler's own clean-image prediction: ``pred_original_sample`` (DDIM, Euler,
LMS, DDPM, ...), ``denoised`` (LCM), the x0 model output DPM-Solver++/UniPC keep, and for flow
matching x0 = x_t - sigma * v.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import gc
import inspect
import logging
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable, Iterator

from canvasd.backends.base import StepCallback
from canvasd.backends.diffusers.device import Placement, resolve_placement
from canvasd.backends.diffusers.inspect import NotAPipelineError, inspect_pipeline_folder
from canvasd.backends.diffusers.lora import LoraSpec, adapters_for, check_loras, load_adapters, select_adapters
from canvasd.backends.diffusers.stepwise import (
    DiffusersSample,
    StepwiseFamily,
    start_samples,
    step_samples,
    x0_of,
)
from canvasd.backends.precision import run_denoiser_in_bf16
from canvasd.contracts import Cancelled, Capabilities, Sample, word_count_tokens

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL.Image import Image

    from canvasd.contracts import Job

log = logging.getLogger("canvasd.backends.diffusers")

VAE_TILING = ("auto", "on", "off")
# `vae_tiling = auto`: decode in tiles above this many output pixels. The full-resolution decoder
# blocks hold ~128-channel activations of every pixel several times over (~4 KiB a pixel in fp16
# by diffusers' own SDXL figures: ~4 GiB at 1024x1024); tiles bound that to one 512-px tile.
AUTO_TILING_PIXELS = 1536 * 1536


def family_adapter(name: str) -> StepwiseFamily:
    if name == "sd":
        from canvasd.backends.diffusers.sd import SDFamily

        return SDFamily()
    if name == "sdxl":
        from canvasd.backends.diffusers.sdxl import SDXLFamily

        return SDXLFamily()
    if name == "sd3":
        from canvasd.backends.diffusers.sd3 import SD3Family

        return SD3Family()
    if name == "flux":
        from canvasd.backends.diffusers.flux import FluxFamily

        return FluxFamily()
    raise ValueError(f"no stepwise family {name!r}")


class _StepTap:
    """Wraps ``scheduler.step`` while a pipeline runs, keeping the last clean-image estimate."""

    def __init__(self, scheduler: Any, family: StepwiseFamily | None):
        self.scheduler = scheduler
        self.family = family
        self.x0: Any = None

    def __enter__(self) -> "_StepTap":
        original = self.scheduler.step

        # wraps(): pipelines inspect step's signature to decide whether to pass `generator`/`eta`
        @functools.wraps(original)
        def step(model_output: Any, timestep: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
            want_dict = kwargs.pop("return_dict", True)
            out = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
            if self.family is not None:
                self.x0 = self.family.x0(self.scheduler, out, sample, model_output)
            else:
                self.x0 = x0_of(self.scheduler, out)
            return out if want_dict else out.to_tuple()

        self.scheduler.step = step  # instance attribute shadows the method
        return self

    def __exit__(self, *exc: Any) -> None:
        self.scheduler.__dict__.pop("step", None)


def _init_rgb(job: "Job") -> "Image":
    """The edit target as RGB at the job's size: transparent regions become white (as in the
    encoder), then LANCZOS to width x height (img2img pipelines take their size from the image)."""
    from PIL import Image as PILImage

    if not job.init_images:
        raise ValueError(f"{job.kind} job {job.id} has no input image")
    image = job.init_images[0]
    if image.mode != "RGB":
        rgba = image.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PILImage.alpha_composite(white, rgba).convert("RGB")
    if image.size != (job.width, job.height):
        image = image.resize((job.width, job.height), PILImage.Resampling.LANCZOS)
    return image


class DiffusersBackend:
    def __init__(
        self,
        model_id: str,
        path: str | Path | None,
        precision: str = "auto",
        *,
        device: str = "auto",
        dtype: str = "auto",
        offload: str = "none",
        vae_tiling: str = "auto",
        loras: "tuple[LoraSpec, ...] | list[LoraSpec]" = (),
    ):
        if not path:
            raise NotAPipelineError(f"model {model_id!r}: a diffusers backend needs a folder path")
        self.id = model_id
        self.precision = precision
        if vae_tiling not in VAE_TILING:
            raise ValueError(f"vae_tiling must be one of {', '.join(VAE_TILING)}, not {vae_tiling!r}")
        self.vae_tiling = vae_tiling
        # resolved now: a bad device/dtype/offload is a start-up error, not a first-request one
        self.placement: Placement = resolve_placement(device, dtype, precision, offload)
        try:
            self.info = inspect_pipeline_folder(path)
        except NotAPipelineError as exc:
            raise NotAPipelineError(f"model {model_id!r}: {exc}") from None
        self.loras = check_loras(model_id, loras)
        self.path = self.info.path
        self.capabilities: Capabilities = dataclasses.replace(
            self.info.capabilities(), loras=tuple(spec.name for spec in self.loras))
        self.family: StepwiseFamily | None = family_adapter(self.info.family) if self.info.family else None
        self._pipes: dict[str, Any] = {}  # "text2img" | "img2img" | "inpaint" -> pipeline
        # count_tokens' OWN tokenizer instance: HF tokenizers keep padding/truncation as mutable
        # state on the object, so counting (unpadded) on an API thread with the pipeline's instance
        # while the engine thread encodes a prompt (padded to 77) lets one call see the other's
        # settings (unpadded prompt embeddings -> a failed batched step)
        self._tokenizer: Any = None
        self._count_lock = threading.Lock()
        self._lock = threading.RLock()
        self._active_adapters: tuple[tuple[str, float], ...] | None = None

    # -- where it runs -----------------------------------------------------------------------
    @property
    def device(self) -> str:
        return str(self.placement.device)

    @property
    def dtype(self) -> str:
        return self.placement.dtype_name

    @property
    def loaded(self) -> bool:
        return bool(self._pipes)

    @property
    def _generator_device(self) -> str:
        # MPS generators are not reproducible across torch releases; diffusers seeds on the CPU there
        kind = self.placement.device.type
        return "cpu" if kind == "mps" else str(self.placement.device)

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        with self._lock:
            if self._pipes:
                return
            self._load()

    def _load(self) -> None:
        from diffusers import (
            AutoPipelineForImage2Image,
            AutoPipelineForInpainting,
            AutoPipelineForText2Image,
            DiffusionPipeline,
        )
        from diffusers.utils import deprecation_utils

        place = self.placement
        # diffusers renamed torch_dtype to dtype (0.36+); keep older releases working
        dtype_kw = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
        kwargs: dict[str, Any] = {"local_files_only": True, dtype_kw: place.weights_dtype}
        if "safety_checker" in self.info.components:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        # components saved as [null, null] (SD3 without its T5 encoder) must be passed as None
        kwargs.update({name: None for name, (lib, _) in self.info.components.items() if lib is None})
        base = DiffusionPipeline.from_pretrained(self.path, **kwargs)
        if self.loras:
            load_adapters(base, self.loras)
        if place.offload == "model":
            base.enable_model_cpu_offload(device=place.device)
        elif place.offload == "sequential":
            base.enable_sequential_cpu_offload(device=place.device)
        else:
            base.to(place.device)
        pipes = {}
        caps = self.capabilities
        for task, wanted, auto in (
            ("text2img", caps.text_to_image, AutoPipelineForText2Image),
            ("img2img", caps.image_to_image, AutoPipelineForImage2Image),
            ("inpaint", caps.inpaint, AutoPipelineForInpainting),
        ):
            if not wanted:
                continue
            try:
                pipes[task] = auto.from_pipe(base)
            except ValueError:
                if task == "text2img":  # a pipeline diffusers' AutoPipeline does not map
                    pipes[task] = base
                else:
                    raise
        for pipe in pipes.values():
            pipe.set_progress_bar_config(disable=True)
        vae = getattr(base, "vae", None)
        if vae is not None and hasattr(vae, "enable_slicing"):
            vae.enable_slicing()  # whole-job decodes of n images: one image at a time
        denoiser = getattr(base, "unet", None) or getattr(base, "transformer", None)
        if place.cpu_bf16_autocast and denoiser is not None:
            run_denoiser_in_bf16(denoiser)  # shared by every task's pipeline (from_pipe)
        self._pipes = pipes or {"text2img": base}
        self._active_adapters = None
        if self._tokenizer is None and getattr(base, "tokenizer", None) is not None:
            with self._count_lock:
                self._tokenizer = copy.deepcopy(base.tokenizer)
        log.info("loaded %s (%s) from %s on %s in %s%s", self.id, self.info.class_name, self.path,
                 place.device, place.dtype_name, f", offload {place.offload}" if place.offload != "none" else "")

    def unload(self) -> None:
        """Drop the weights (the registry's LRU eviction); `load` brings them back."""
        import torch

        with self._lock:
            self._pipes = {}
            self._active_adapters = None
            gc.collect()
            if self.placement.device.type == "cuda":
                torch.cuda.empty_cache()

    def pipe(self, task: str) -> Any:
        if not self._pipes:
            raise RuntimeError(f"model {self.id!r} is not loaded")
        if task not in self._pipes:
            raise ValueError(f"model {self.id!r} does not support {task}")
        return self._pipes[task]

    _pipe = pipe  # the name tests and older callers use

    # -- shared helpers ----------------------------------------------------------------------
    def batch_key(self, job: "Job") -> Hashable:
        schedule = self.family.schedule_key(self.info, job) if self.family is not None else None
        return (self.id, job.width, job.height, schedule, adapters_for(self.loras, job))

    def count_tokens(self, text: str) -> int:
        with self._count_lock:  # API worker threads may count concurrently
            if self._tokenizer is None and (self.path / "tokenizer").is_dir():
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.path / "tokenizer", local_files_only=True)
            if self._tokenizer is None:
                return word_count_tokens(text)
            return len(self._tokenizer(text, add_special_tokens=False, truncation=False).input_ids)

    @staticmethod
    def _task(job: "Job") -> str:
        if job.kind == "generate":
            return "text2img"
        if job.kind == "edit" and job.mask is not None:
            return "inpaint"
        return "img2img"

    @staticmethod
    def _steps_for(job: "Job", strength: float | None) -> int:
        """Steps such that img2img's int(steps * strength) runs at least one."""
        if strength is None or strength <= 0:
            return job.steps
        return max(job.steps, math.ceil(1 / strength))

    def _use_adapters(self, job: "Job") -> None:
        """Activate the job's LoRA set (one per batch: it is part of batch_key)."""
        wanted = adapters_for(self.loras, job)
        if wanted != self._active_adapters:
            select_adapters(self._pipes["text2img"], self.loras, wanted)
            self._active_adapters = wanted

    def _set_tiling(self, vae: Any, job: "Job") -> None:
        on = self.vae_tiling == "on" or (self.vae_tiling == "auto" and job.width * job.height > AUTO_TILING_PIXELS)
        if hasattr(vae, "enable_tiling"):
            vae.enable_tiling() if on else vae.disable_tiling()

    @contextlib.contextmanager
    def _vae_upcast(self, vae: Any) -> Iterator[None]:
        """fp32 VAE for the call, as the pipelines do for VAEs that overflow in fp16 (SDXL's)."""
        import torch

        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            vae.to(dtype=torch.float32)
            try:
                yield
            finally:
                vae.to(dtype=torch.float16)
        else:
            yield

    def _decode(self, pipe: Any, latents: "torch.Tensor", job: "Job") -> list["Image"]:
        import torch

        vae = pipe.vae
        self._set_tiling(vae, job)
        with torch.no_grad(), self._vae_upcast(vae):
            if self.family is not None:
                x = self.family.to_vae(pipe, latents, job)
            else:
                if latents.ndim != 4 and hasattr(pipe, "_unpack_latents"):  # packed (Flux-style)
                    latents = pipe._unpack_latents(latents, job.height, job.width, pipe.vae_scale_factor)
                x = latents / vae.config.scaling_factor
                shift = getattr(vae.config, "shift_factor", None)
                if shift is not None:
                    x = x + shift
            image = vae.decode(x.to(vae.dtype), return_dict=False)[0]
            return [im.convert("RGB") for im in pipe.image_processor.postprocess(image, output_type="pil")]

    # -- whole-job path ----------------------------------------------------------------------
    def run(self, job: "Job", on_step: StepCallback) -> list["Image"]:
        import torch

        task = self._task(job)
        with self._lock:
            pipe = self.pipe(task)
            self._use_adapters(job)
            self._set_tiling(pipe.vae, job)
            generators = [torch.Generator(self._generator_device).manual_seed(job.seed + i) for i in range(job.n)]
            args: dict[str, Any] = {
                "prompt": job.prompt,
                "negative_prompt": job.negative_prompt,
                "num_images_per_prompt": job.n,
                "generator": generators,
                "num_inference_steps": job.steps,
                "guidance_scale": job.guidance_scale,
                "width": job.width,
                "height": job.height,
                "output_type": "pil",
            }
            if task != "text2img":
                strength = job.img2img_strength()
                steps = self._steps_for(job, strength)
                args.update(image=_init_rgb(job), strength=strength, num_inference_steps=steps)
                if task == "inpaint":
                    args["mask_image"] = job.mask.convert("L")
            params = inspect.signature(pipe.__call__).parameters
            args = {k: v for k, v in args.items() if k in params and v is not None}

            def on_step_end(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                latents = tensors["latents"]
                x0 = tap.x0 if tap.x0 is not None else latents  # bound now, decoded on demand
                total = getattr(p, "_num_timesteps", None) or job.steps
                if job.cancelled or not on_step(i + 1, total, lambda: self._safe_preview(p, x0, job)):
                    p._interrupt = True
                    raise Cancelled(job.id)
                return {}

            with torch.no_grad(), _StepTap(pipe.scheduler, self.family) as tap:
                out = pipe(
                    **args,
                    callback_on_step_end=on_step_end,
                    callback_on_step_end_tensor_inputs=["latents"],
                )
            return [im.convert("RGB") for im in out.images]

    def _safe_preview(self, pipe: Any, latents: Any, job: "Job") -> list["Image"]:
        try:
            return self._decode(pipe, latents, job)
        except Exception:  # noqa: BLE001 - a preview must never fail the job
            log.warning("preview decode failed for %s", self.id, exc_info=True)
            return []

    # -- step-level path ---------------------------------------------------------------------
    def start(self, job: "Job") -> list[Sample]:
        if self.family is None:
            raise NotImplementedError(f"model {self.id!r} has no step-level path; use run()")
        import torch

        task = self._task(job)
        with self._lock, torch.no_grad():
            pipe = self.pipe("text2img")
            self._use_adapters(job)
            strength = None if task == "text2img" else job.img2img_strength()
            steps = self._steps_for(job, strength)
            init = mask = None
            if task != "text2img":
                init = pipe.image_processor.preprocess(_init_rgb(job), height=job.height, width=job.width)
            if task == "inpaint":
                mask_processor = self.pipe("inpaint").mask_processor
                mask = mask_processor.preprocess(job.mask.convert("L"), height=job.height, width=job.width)
                latent_hw = (job.height // pipe.vae_scale_factor, job.width // pipe.vae_scale_factor)
                mask = torch.nn.functional.interpolate(mask, size=latent_hw)
            with self._vae_upcast(pipe.vae):
                return start_samples(
                    self.family, self, job, task, strength, steps, init, mask,
                    self.placement.device, self.placement.weights_dtype, self._generator_device,
                )

    def step(self, samples: list[Sample]) -> None:
        """One batched denoiser forward over every sample's [uncond, cond] rows."""
        import torch

        if not samples:
            return
        assert self.family is not None and all(isinstance(s, DiffusersSample) for s in samples)
        with self._lock, torch.no_grad():
            self._use_adapters(samples[0].job)  # one adapter set per batch (batch_key)
            step_samples(self.family, self.pipe("text2img"), samples, self.placement.device)  # type: ignore[arg-type]

    def preview(self, sample: Sample) -> "Image":
        assert isinstance(sample, DiffusersSample)
        latents = sample.x0 if sample.x0 is not None else sample.latents
        if sample.mask is not None:
            latents = (1 - sample.mask) * sample.image_latents + sample.mask * latents
        with self._lock:
            return self._decode(self.pipe("text2img"), latents, sample.job)[0]

    def finish(self, samples: list[Sample]) -> list["Image"]:
        with self._lock:
            pipe = self.pipe("text2img")
            # one decode per image: its pixels never depend on what else finished with it
            return [self._decode(pipe, s.latents, s.job)[0] for s in samples]  # type: ignore[attr-defined]
