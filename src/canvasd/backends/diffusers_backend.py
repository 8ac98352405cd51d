"""Any diffusers pipeline saved in a local folder, as a canvasd backend.

Capabilities come from the folder's JSON configs alone (``model_index.json``, ``unet``/
``transformer``/``vae``/``tokenizer`` configs), so the API can validate requests before the
weights load. Two ways to run:

- whole-job (`run`), for every pipeline: the pipeline's own ``__call__`` (text2img, img2img via
  ``AutoPipelineForImage2Image.from_pipe``, inpaint via ``AutoPipelineForInpainting.from_pipe``),
  one seeded generator per image, ``callback_on_step_end`` for progress, previews and cancel.
- step-level (`start`/`step`/`preview`/`finish`), for the Stable-Diffusion family (UNet2D
  conditioned on one CLIP text encoder, AutoencoderKL, plain 4-channel latents): every sample has
  its own latents, generator and scheduler copy, so samples of different jobs, at different step
  indices, share one batched UNet forward. Image i of a job is seeded with ``job.seed + i`` and
  draws its noise exactly like the pipeline does with a list of generators, so a stepwise image
  matches the whole-job one (up to float rounding of batched kernels).

Previews decode the sampler's own clean-image prediction: ``pred_original_sample`` (DDIM, Euler,
LMS, DDPM, ...), ``denoised`` (LCM), or the x0 model output DPM-Solver++/UniPC keep; schedulers
that expose none (e.g. flow-matching Euler) preview their current latents.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable

from canvasd.backends.base import Cancelled, Capabilities, Sample, StepCallback
from canvasd.backends.precision import run_denoiser_in_bf16, use_bf16

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL.Image import Image

    from canvasd.engine.jobs import Job

log = logging.getLogger("canvasd.backends.diffusers")

# img2img strength when the request did not resolve one (OpenAI has no such parameter).
DEFAULT_STRENGTH = {"edit": 0.8, "variation": 0.7, "inpaint": 1.0}
SD_GUIDANCE = 7.5
_SD_FAMILY = "stable-diffusion"  # diffusers' AutoPipeline family name of SD 1.x/2.x pipelines
_TRANSFORMER_DEFAULT_NATIVE = 1024
_UNET_DEFAULT_NATIVE = 512
_MAX_TOKENIZER_LIMIT = 512  # T5 tokenizers say model_max_length=1e30; pipelines cap at 512


class NotAPipelineError(ValueError):
    """The configured folder is not a diffusers pipeline saved with ``save_pretrained``."""


# ---------------------------------------------------------------------------------------------
# Reading a pipeline folder without loading weights
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineInfo:
    path: Path
    class_name: str
    components: dict[str, tuple[str | None, str | None]]  # name -> (library, class)
    vae_scale_factor: int
    native_size: tuple[int, int]
    size_multiple: int
    sd_like: bool
    text_to_image: bool
    image_to_image: bool
    inpaint: bool
    negative_prompt: bool
    max_prompt_tokens: int

    def capabilities(self) -> Capabilities:
        return Capabilities(
            text_to_image=self.text_to_image,
            image_to_image=self.image_to_image,
            inpaint=self.inpaint,
            alpha=False,
            stepwise=self.sd_like,
            native_size=self.native_size,
            size_multiple=self.size_multiple,
            min_side=min(64, *self.native_size),
            upscales=False,
            default_guidance=SD_GUIDANCE if self.sd_like else Capabilities.default_guidance,
            negative_prompt=self.negative_prompt,
            max_input_images=1,
            max_prompt_tokens=self.max_prompt_tokens,
        )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def inspect_pipeline_folder(path: str | Path) -> PipelineInfo:
    """What a saved pipeline can do, from its configs only. Raises NotAPipelineError."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise NotAPipelineError(f"{root} is not a directory (expected a diffusers pipeline folder)")
    index = _read_json(root / "model_index.json")
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise NotAPipelineError(
            f"{root} is not a diffusers pipeline folder: no readable model_index.json with a "
            "_class_name (save one with DiffusionPipeline.save_pretrained)"
        )
    class_name = index["_class_name"]
    components = {
        k: (v[0], v[1])
        for k, v in index.items()
        if not k.startswith("_") and isinstance(v, list) and len(v) == 2
    }

    vae = _read_json(root / "vae" / "config.json") or {}
    blocks = vae.get("block_out_channels")
    vae_scale = 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8
    latent_channels = vae.get("latent_channels", 4)

    denoiser_name = "unet" if "unet" in components else "transformer"
    denoiser = _read_json(root / denoiser_name / "config.json") or {}
    sample_size = denoiser.get("sample_size")
    if isinstance(sample_size, (list, tuple)) and len(sample_size) == 2:
        native = (int(sample_size[1]) * vae_scale, int(sample_size[0]) * vae_scale)
    elif isinstance(sample_size, int):
        native = (sample_size * vae_scale, sample_size * vae_scale)
    else:
        side = _UNET_DEFAULT_NATIVE if denoiser_name == "unet" else _TRANSFORMER_DEFAULT_NATIVE
        native = (side, side)
    # UNet pipelines check sides % 8; transformer pipelines pack 2x2 latent patches.
    size_multiple = max(8, vae_scale) if denoiser_name == "unet" else max(16, vae_scale * 2)

    family, img2img_cls, inpaint_cls, text2img_cls = _auto_pipeline_classes(class_name)
    in_channels = denoiser.get("in_channels")
    plain_latents = in_channels in (None, latent_channels)  # 9-channel inpaint UNets are not

    sd_like = (
        family == _SD_FAMILY
        and components.get("unet", (None, None))[1] == "UNet2DConditionModel"
        and components.get("vae", (None, None))[1] == "AutoencoderKL"
        and components.get("text_encoder", (None, None))[1] == "CLIPTextModel"
        and "text_encoder_2" not in components
        and in_channels == latent_channels
        and denoiser.get("addition_embed_type") is None
        and denoiser.get("class_embed_type") is None
        and denoiser.get("time_cond_proj_dim") is None
        and denoiser.get("encoder_hid_dim_type") is None
    )

    tok = _read_json(root / "tokenizer" / "tokenizer_config.json") or {}
    limit = tok.get("model_max_length")
    max_tokens = int(limit) if isinstance(limit, (int, float)) and 0 < limit <= 1e6 else 77
    max_tokens = min(max_tokens, _MAX_TOKENIZER_LIMIT)

    return PipelineInfo(
        path=root,
        class_name=class_name,
        components=components,
        vae_scale_factor=vae_scale,
        native_size=native,
        size_multiple=size_multiple,
        sd_like=sd_like,
        text_to_image=(text2img_cls is not None or family is None) and plain_latents,
        image_to_image=img2img_cls is not None and plain_latents,
        inpaint=inpaint_cls is not None,
        negative_prompt=_accepts(text2img_cls or _diffusers_class(class_name), "negative_prompt"),
        max_prompt_tokens=max_tokens,
    )


def _auto_pipeline_classes(class_name: str) -> tuple[str | None, Any, Any, Any]:
    """(family, img2img class, inpaint class, text2img class) per diffusers' AutoPipeline maps."""
    from diffusers.pipelines import auto_pipeline as ap

    family = ap._get_model(class_name)
    if family is None:
        return None, None, None, None
    return (
        family,
        ap.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING.get(family),
        ap.AUTO_INPAINT_PIPELINES_MAPPING.get(family),
        ap.AUTO_TEXT2IMAGE_PIPELINES_MAPPING.get(family),
    )


def _diffusers_class(class_name: str) -> Any:
    import diffusers

    return getattr(diffusers, class_name, None)


def _accepts(pipeline_cls: Any, name: str) -> bool:
    if pipeline_cls is None:
        return False
    try:
        return name in inspect.signature(pipeline_cls.__call__).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# Clean-image predictions from a scheduler step
# ---------------------------------------------------------------------------------------------


def _x0_of(scheduler: Any, output: Any) -> "torch.Tensor | None":
    """The step's predicted clean latents, where the scheduler exposes them."""
    for name in ("pred_original_sample", "denoised"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    outputs = getattr(scheduler, "model_outputs", None)
    algorithm = str(getattr(scheduler.config, "algorithm_type", ""))
    keeps_x0 = algorithm.endswith("dpmsolver++") or getattr(scheduler, "predict_x0", False)
    if keeps_x0 and outputs and outputs[-1] is not None:
        return outputs[-1]  # DPM-Solver++ / UniPC convert the model output to x0 and keep it
    return None


class _StepTap:
    """Wraps ``scheduler.step`` while a pipeline runs, keeping the last x0 prediction."""

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler
        self.x0: Any = None

    def __enter__(self) -> "_StepTap":
        original = self.scheduler.step

        # wraps(): pipelines inspect step's signature to decide whether to pass `generator`/`eta`
        @functools.wraps(original)
        def step(*args: Any, **kwargs: Any) -> Any:
            want_dict = kwargs.pop("return_dict", True)
            out = original(*args, return_dict=True, **kwargs)
            self.x0 = _x0_of(self.scheduler, out)
            return out if want_dict else out.to_tuple()

        self.scheduler.step = step  # instance attribute shadows the method
        return self

    def __exit__(self, *exc: Any) -> None:
        self.scheduler.__dict__.pop("step", None)


# ---------------------------------------------------------------------------------------------
# Stepwise samples
# ---------------------------------------------------------------------------------------------


@dataclass
class DiffusersSample(Sample):
    latents: Any = None  # (1, C, h, w)
    scheduler: Any = None  # this sample's own copy: step index and multistep history
    timesteps: Any = None
    cond: Any = None  # (1, L, D) prompt embeddings
    uncond: Any = None  # negative embeddings; None when guidance is off
    generator: Any = None
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    x0: Any = None  # last clean-latent prediction
    # inpainting with a plain 4-channel UNet: keep the unmasked latents, blend after each step
    image_latents: Any = None
    noise: Any = None
    mask: Any = None  # (1, 1, h, w), 1 = repaint


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


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


class DiffusersBackend:
    def __init__(self, model_id: str, path: str | Path | None, precision: str = "auto"):
        if not path:
            raise NotAPipelineError(f"model {model_id!r}: a diffusers backend needs a folder path")
        self.id = model_id
        self.precision = precision
        try:
            self.info = inspect_pipeline_folder(path)
        except NotAPipelineError as exc:
            raise NotAPipelineError(f"model {model_id!r}: {exc}") from None
        self.path = self.info.path
        self.capabilities: Capabilities = self.info.capabilities()
        self._pipes: dict[str, Any] = {}  # "text2img" | "img2img" | "inpaint" -> pipeline
        # count_tokens' OWN tokenizer instance: HF tokenizers keep padding/truncation as mutable
        # state on the object, so counting (unpadded) on an API thread with the pipeline's instance
        # while the engine thread encodes a prompt (padded to 77) lets one call see the other's
        # settings (unpadded prompt embeddings -> a failed batched step)
        self._tokenizer: Any = None
        self._count_lock = threading.Lock()
        self._lock = threading.RLock()

    # -- loading -----------------------------------------------------------------------------
    def load(self) -> None:
        if self._pipes:
            return
        import torch
        from diffusers import (
            AutoPipelineForImage2Image,
            AutoPipelineForInpainting,
            AutoPipelineForText2Image,
            DiffusionPipeline,
        )

        from diffusers.utils import deprecation_utils

        # diffusers renamed torch_dtype to dtype (0.36+); keep older releases working
        dtype_kw = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
        kwargs: dict[str, Any] = {"local_files_only": True, dtype_kw: torch.float32}
        if "safety_checker" in self.info.components:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        base = DiffusionPipeline.from_pretrained(self.path, **kwargs).to("cpu")
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
        self._pipes = pipes or {"text2img": base}
        denoiser = getattr(base, "unet", None) or getattr(base, "transformer", None)
        if use_bf16(self.precision) and denoiser is not None:
            run_denoiser_in_bf16(denoiser)  # shared by every task's pipeline (from_pipe)
        if self._tokenizer is None and getattr(base, "tokenizer", None) is not None:
            with self._count_lock:
                self._tokenizer = copy.deepcopy(base.tokenizer)
        log.info("loaded %s (%s) from %s", self.id, self.info.class_name, self.path)

    def _pipe(self, task: str) -> Any:
        if not self._pipes:
            raise RuntimeError(f"model {self.id!r} is not loaded")
        if task not in self._pipes:
            raise ValueError(f"model {self.id!r} does not support {task}")
        return self._pipes[task]

    # -- shared helpers ----------------------------------------------------------------------
    def batch_key(self, job: "Job") -> Hashable:
        return (self.id, job.width, job.height)

    def count_tokens(self, text: str) -> int:
        with self._count_lock:  # API worker threads may count concurrently
            if self._tokenizer is None and (self.path / "tokenizer").is_dir():
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self.path / "tokenizer", local_files_only=True)
            if self._tokenizer is None:
                return len(text.split())
            return len(self._tokenizer(text, add_special_tokens=False, truncation=False).input_ids)

    @staticmethod
    def _task(job: "Job") -> str:
        if job.kind == "generate":
            return "text2img"
        if job.kind == "edit" and job.mask is not None:
            return "inpaint"
        return "img2img"

    @staticmethod
    def _strength(job: "Job", task: str) -> float:
        if job.strength is not None:
            return float(job.strength)
        return DEFAULT_STRENGTH["inpaint" if task == "inpaint" else job.kind]

    @staticmethod
    def _steps_for(job: "Job", strength: float | None) -> int:
        """Steps such that img2img's int(steps * strength) runs at least one."""
        if strength is None or strength <= 0:
            return job.steps
        return max(job.steps, math.ceil(1 / strength))

    def _decode(self, pipe: Any, latents: "torch.Tensor", job: "Job") -> list["Image"]:
        import torch

        vae = pipe.vae
        with torch.no_grad():
            if latents.ndim != 4 and hasattr(pipe, "_unpack_latents"):  # packed (Flux-style)
                latents = pipe._unpack_latents(latents, job.height, job.width, pipe.vae_scale_factor)
            x = latents.to(vae.dtype) / vae.config.scaling_factor
            shift = getattr(vae.config, "shift_factor", None)
            if shift is not None:
                x = x + shift
            image = vae.decode(x, return_dict=False)[0]
            return [im.convert("RGB") for im in pipe.image_processor.postprocess(image, output_type="pil")]

    # -- whole-job path ----------------------------------------------------------------------
    def run(self, job: "Job", on_step: StepCallback) -> list["Image"]:
        import torch

        task = self._task(job)
        with self._lock:
            pipe = self._pipe(task)
            generators = [torch.Generator("cpu").manual_seed(job.seed + i) for i in range(job.n)]
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
                strength = self._strength(job, task)
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

            with torch.no_grad(), _StepTap(pipe.scheduler) as tap:
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

    # -- step-level path (SD family) ---------------------------------------------------------
    def start(self, job: "Job") -> list[Sample]:
        if not self.capabilities.stepwise:
            raise NotImplementedError(f"model {self.id!r} has no step-level path; use run()")
        import torch
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import (
            retrieve_latents,
        )

        task = self._task(job)
        with self._lock, torch.no_grad():
            pipe = self._pipe("text2img")
            vae, scaling = pipe.vae, pipe.vae.config.scaling_factor
            use_cfg = job.guidance_scale > 1.0
            cond, uncond = pipe.encode_prompt(
                job.prompt, torch.device("cpu"), 1, use_cfg, negative_prompt=job.negative_prompt
            )
            latent_shape = (
                1,
                pipe.unet.config.in_channels,
                job.height // pipe.vae_scale_factor,
                job.width // pipe.vae_scale_factor,
            )
            strength = None if task == "text2img" else self._strength(job, task)
            steps = self._steps_for(job, strength)
            init = mask = None
            if task != "text2img":
                init = pipe.image_processor.preprocess(
                    _init_rgb(job), height=job.height, width=job.width
                ).to(torch.float32)
            if task == "inpaint":
                mask_processor = self._pipe("inpaint").mask_processor
                mask = mask_processor.preprocess(job.mask.convert("L"), height=job.height, width=job.width)
                mask = torch.nn.functional.interpolate(mask, size=latent_shape[2:]).to(torch.float32)

            samples: list[Sample] = []
            for i in range(job.n):
                generator = torch.Generator("cpu").manual_seed(job.seed + i)
                scheduler = copy.deepcopy(pipe.scheduler)
                scheduler.set_timesteps(steps, device="cpu")
                timesteps = scheduler.timesteps
                image_latents = noise = None
                if task == "text2img":
                    latents = torch.randn(latent_shape, generator=generator, dtype=torch.float32)
                    latents = latents * scheduler.init_noise_sigma
                else:
                    # same order of draws as the img2img / inpaint pipelines: VAE posterior, then noise
                    t_start = max(steps - min(int(steps * strength), steps), 0)
                    timesteps = scheduler.timesteps[t_start * scheduler.order :]
                    if hasattr(scheduler, "set_begin_index"):
                        scheduler.set_begin_index(t_start * scheduler.order)
                    image_latents = scaling * retrieve_latents(vae.encode(init), generator=generator)
                    noise = torch.randn(image_latents.shape, generator=generator, dtype=torch.float32)
                    if task == "inpaint" and strength >= 1.0:
                        latents = noise * scheduler.init_noise_sigma
                    else:
                        latents = scheduler.add_noise(image_latents, noise, timesteps[:1])
                step_params = inspect.signature(scheduler.step).parameters
                step_kwargs: dict[str, Any] = {}
                if "generator" in step_params:
                    step_kwargs["generator"] = generator
                if "eta" in step_params:
                    step_kwargs["eta"] = 0.0
                samples.append(
                    DiffusersSample(
                        job=job,
                        index=i,
                        step=0,
                        total_steps=len(timesteps),
                        latents=latents,
                        scheduler=scheduler,
                        timesteps=timesteps,
                        cond=cond,
                        uncond=uncond if use_cfg else None,
                        generator=generator,
                        step_kwargs=step_kwargs,
                        image_latents=image_latents if task == "inpaint" else None,
                        noise=noise if task == "inpaint" else None,
                        mask=mask,
                    )
                )
            return samples

    def step(self, samples: list[Sample]) -> None:
        """One batched UNet forward over every sample's [uncond, cond] latents."""
        import torch

        if not samples:
            return
        with self._lock, torch.no_grad():
            unet = self._pipe("text2img").unet
            inputs, embeds, times = [], [], []
            for s in samples:
                assert isinstance(s, DiffusersSample)
                t = s.timesteps[s.step]
                x = s.scheduler.scale_model_input(s.latents, t)
                rows = 1 if s.uncond is None else 2
                inputs += [x] * rows
                embeds += [s.cond] if s.uncond is None else [s.uncond, s.cond]
                times += [float(t)] * rows
            pred = unet(
                torch.cat(inputs),
                torch.tensor(times, dtype=torch.float32),
                encoder_hidden_states=torch.cat(embeds),
                return_dict=False,
            )[0]
            row = 0
            for s in samples:
                if s.uncond is None:
                    eps = pred[row : row + 1]
                    row += 1
                else:
                    uncond, cond = pred[row : row + 1], pred[row + 1 : row + 2]
                    eps = uncond + s.job.guidance_scale * (cond - uncond)
                    row += 2
                t = s.timesteps[s.step]
                out = s.scheduler.step(eps, t, s.latents, return_dict=True, **s.step_kwargs)
                s.x0 = _x0_of(s.scheduler, out)
                latents = out.prev_sample
                if s.mask is not None:
                    latents = (1 - s.mask) * self._known_latents(s, s.step + 1) + s.mask * latents
                s.latents = latents
                s.step += 1

    @staticmethod
    def _known_latents(s: DiffusersSample, next_index: int) -> Any:
        """The kept (unmasked) region, noised to the level of the next timestep."""
        import torch

        if next_index >= len(s.timesteps):
            return s.image_latents
        t_next = s.timesteps[next_index]
        return s.scheduler.add_noise(s.image_latents, s.noise, torch.tensor([t_next]))

    def preview(self, sample: Sample) -> "Image":
        assert isinstance(sample, DiffusersSample)
        latents = sample.x0 if sample.x0 is not None else sample.latents
        if sample.mask is not None:
            latents = (1 - sample.mask) * sample.image_latents + sample.mask * latents
        with self._lock:
            return self._decode(self._pipe("text2img"), latents, sample.job)[0]

    def finish(self, samples: list[Sample]) -> list["Image"]:
        with self._lock:
            pipe = self._pipe("text2img")
            # one decode per image: its pixels never depend on what else finished with it
            return [self._decode(pipe, s.latents, s.job)[0] for s in samples]  # type: ignore[attr-defined]


__all__ = [
    "DiffusersBackend",
    "DiffusersSample",
    "NotAPipelineError",
    "PipelineInfo",
    "inspect_pipeline_folder",
]
