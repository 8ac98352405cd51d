"""Step-level sampling for the emoji model: each image is an independent `EmojiSample`.

Every sample owns a copy of the DPM-Solver++ scheduler, its seeded noise, its text conditioning and
optional init image / keep-mask, so samples from different requests at different step indices can
share one UNet forward (`EmojiPipeline.step`). Classifier-free guidance rows ([cond, uncond]) are
added only for samples that need them (an unconditional variation needs one row, not two), and only
at timesteps >= `sampling.guidance_min_timestep` (guidance interval: below it the prompt's silhouette
is settled and guidance only adds speckle).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from canvasd.backends.emoji.defaults import (
    GUIDANCE_MIN_TIMESTEP, ROW_MULTIPLE, SOLVER, SOLVERS, TIMESTEP_SHIFT, upsampler_dir,
)
from canvasd.backends.emoji.upsampler import Upsampler, UpsamplerConfig, premultiplied_clamp
from canvasd.backends.precision import run_denoiser_in_bf16, use_bf16
from canvasd.backends.emoji.model import (
    ModelConfig,
    TextCond,
    TextEncoder,
    build_unet,
    clean_prediction,
    from_latent,
    model_to_rgba_uint8,
    rgba_uint8_to_model,
    shift_timesteps,
    to_latent,
)
from canvasd.contracts import Job, Sample

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

def make_scheduler(mcfg: ModelConfig, clip_x0: bool = True, solver: str = SOLVER):
    """DPM-Solver++(2M), deterministic ("dpmsolver++") or stochastic ("sde-dpmsolver++": fresh
    noise at every step, drawn from the sample's own seeded generator, so seeds stay reproducible
    and batch-mates never share noise). `clip_x0`: clamp each x0 prediction to the valid pixel
    range [-1, 1] (diffusers' dynamic thresholding with sample_max_value=1 is exactly that clamp);
    in pixel space this stops guided predictions from overshooting into blown-out colours."""
    if solver not in SOLVERS:
        raise ValueError(f"sampling.solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
    return _scheduler_class()(
        **mcfg.scheduler_config(), algorithm_type=solver, solver_order=2, lower_order_final=True,
        thresholding=clip_x0, sample_max_value=1.0, dynamic_thresholding_ratio=0.995,
    )


def set_sampler_timesteps(sched, steps: int, shift: float = 1.0) -> None:
    """`steps` solver steps on diffusers' default grid (linspace over [0, T)), moved towards high
    noise by `shift_timesteps` when shift > 1 (where the training timesteps were drawn the same way).
    Rounding can merge neighbouring steps at the noisy end; duplicates are dropped."""
    if shift == 1.0:
        sched.set_timesteps(steps)
        return
    T = sched.config.num_train_timesteps
    grid = np.linspace(0, T - 1, steps + 1)[::-1][:-1]  # the default grid: T-1 down, t = 0 excluded
    moved = np.rint(shift_timesteps(grid, sched.alphas_cumprod.numpy(), shift)).astype(np.int64)
    timesteps = [int(t) for i, t in enumerate(moved) if i == 0 or t < moved[i - 1]]
    sched.set_timesteps(timesteps=timesteps)


@functools.cache
def _scheduler_class():
    from diffusers import DPMSolverMultistepScheduler

    class ClampingDPMSolver(DPMSolverMultistepScheduler):
        """Dynamic thresholding clamps each sample's quantile s into [1, sample_max_value]; with
        sample_max_value=1 that is s = 1, a plain clamp to [-1, 1]. The quantile it computes anyway
        was 90% of a scheduler step (1.6 of 1.7 ms per image per step, measured), paid once per
        image in every batched step: skipped, same result."""

        def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
            if self.config.sample_max_value == 1.0 and sample.dtype in (torch.float32, torch.float64):
                return sample.clamp(-1.0, 1.0)
            return super()._threshold_sample(sample)

    return ClampingDPMSolver


@dataclass
class EmojiSample(Sample):
    latents: torch.Tensor | None = None  # (1, C, h, w) current noisy latent
    scheduler: object = None
    timesteps: torch.Tensor | None = None
    cond: TextCond | None = None  # one row
    uncond: TextCond | None = None  # one row, or None when guidance is irrelevant
    guidance: float = 1.0
    guidance_min_timestep: int = 0  # guide only at timesteps >= this (the weights' guidance interval)
    init_latents: torch.Tensor | None = None  # clean init (img2img / inpaint)
    init_noise: torch.Tensor | None = None  # fixed noise for re-noising the keep region
    keep: torch.Tensor | None = None  # (1, 1, 64, 64) pixel-space, 1 = keep original
    keep_np: np.ndarray | None = field(default=None, repr=False)  # (64,64) bool, for the exact composite
    init_rgba: np.ndarray | None = field(default=None, repr=False)  # (64,64,4) uint8 straight alpha
    x0: torch.Tensor | None = None  # latest clean-image prediction (latent space)
    generator: torch.Generator | None = None  # the sample's seeded stream (SDE solver noise)
    # second stage: after the denoising steps, one more step redraws the image at 256 px
    refine: bool = False
    high: torch.Tensor | None = None  # (1, 4, 256, 256) premultiplied [-1, 1] once refined
    keep_high: np.ndarray | None = field(default=None, repr=False)  # keep_np at the second stage's size
    init_high: np.ndarray | None = field(default=None, repr=False)  # init_rgba at the second stage's size

    @property
    def denoised(self) -> bool:
        """All first-stage steps are done (the second stage's step, if any, is next)."""
        return self.step >= len(self.timesteps)


def load_rgba64(img: "Image", size: int) -> np.ndarray:
    from PIL import ImageOps

    return np.asarray(ImageOps.pad(img.convert("RGBA"), (size, size), color=(0, 0, 0, 0)), dtype=np.uint8)


def load_keep_mask(mask: "Image", size: int) -> np.ndarray:
    """Job masks are "L" with 255 = repaint; returns bool (size,size), True = keep the original."""
    from PIL import Image as PILImage, ImageOps

    m = ImageOps.pad(mask.convert("L"), (size, size), method=PILImage.Resampling.BILINEAR, color=0)
    return np.asarray(m) < 128


class EmojiPipeline:
    def __init__(self, weights_dir: str | Path, config: dict, precision: str = "auto"):
        self.weights_dir = Path(weights_dir)
        self.bf16 = use_bf16(precision)
        self.config = config
        self.mcfg = ModelConfig.from_dict(config["model"])
        self.unet = None
        self.upsampler: Upsampler | None = None  # the second stage, when the weights have one
        self.upsampler_level = 0.0
        self.text: TextEncoder | None = None
        self._empty: TextCond | None = None
        self._sched = None
        self._alphas: torch.Tensor | None = None
        self.row_multiple = int(config.get("sampling", {}).get("row_multiple", ROW_MULTIPLE))
        self.timestep_shift = float(config.get("sampling", {}).get("timestep_shift", TIMESTEP_SHIFT))
        self.guidance_min_timestep = int(config.get("sampling", {}).get("guidance_min_timestep", GUIDANCE_MIN_TIMESTEP))

    def load(self) -> None:
        from safetensors.torch import load_file

        unet = build_unet(self.mcfg)
        sd = load_file(str(self.weights_dir / "model.safetensors"))
        unet.load_state_dict({k: v.float() for k, v in sd.items()})
        self.unet = unet.eval().requires_grad_(False)
        if self.bf16:
            run_denoiser_in_bf16(self.unet, cast_weights=True)  # canvasd's own loop: safe
        self.text = TextEncoder(self.mcfg.max_tokens).load()
        self._empty = self.text.encode([""])
        sampling = self.config.get("sampling", {})
        self._sched = make_scheduler(self.mcfg, bool(sampling.get("clip_x0", True)),
                                     str(sampling.get("solver", SOLVER)))
        self._alphas = self._sched.alphas_cumprod.float()
        self._load_upsampler()

    def _load_upsampler(self) -> None:
        folder = upsampler_dir(self.weights_dir)
        if folder is None:
            return
        from safetensors.torch import load_file

        config = json.loads((folder / "config.json").read_text())
        net = Upsampler(UpsamplerConfig.from_dict(config["model"]))
        net.load_state_dict({k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()})
        self.upsampler = net.eval().requires_grad_(False)
        self.upsampler_level = float(config.get("sampling", {}).get("level", 0.0))

    @property
    def refined_size(self) -> int:
        return self.upsampler.cfg.out_size if self.upsampler is not None else self.mcfg.image_size

    # ---- start -------------------------------------------------------------------------------

    def start(self, job: "Job") -> list[EmojiSample]:
        size, patch = self.mcfg.image_size, self.mcfg.patch
        cond = self.text.encode([job.prompt]) if job.prompt else self._empty
        neg = job.negative_prompt
        uncond = self.text.encode([neg]) if neg else self._empty
        needs_cfg = bool(job.prompt or neg) and job.guidance_scale != 1.0
        init = init_rgba = keep = keep_np = None
        strength = 1.0
        if job.init_images:
            init_rgba = load_rgba64(job.init_images[0], size)
            init = to_latent(rgba_uint8_to_model(init_rgba[None]), patch)
            strength = min(1.0, max(job.img2img_strength(), 0.0))
            if job.mask is not None:
                keep_np = load_keep_mask(job.mask, size)
                keep = torch.from_numpy(keep_np.astype(np.float32))[None, None]
        # img2img keeps the uniform grid: `strength` then starts at the noise level it always meant
        # (0.6 -> t ~ 600); on the shifted grid 0.6 of the steps would start at t ~ 830, where little
        # of the input survives. Shapes are the input's, not decided at high noise.
        from_noise = init is None or strength >= 1.0
        shift = self.timestep_shift if from_noise else 1.0
        # the second stage runs when the answer is larger than the first stage draws
        refine = self.upsampler is not None and max(job.output_size) > size
        init_high = keep_high = None
        if refine and job.init_images:
            init_high = load_rgba64(job.init_images[0], self.refined_size)
            if job.mask is not None:
                keep_high = load_keep_mask(job.mask, self.refined_size)
        samples = []
        for i in range(job.n):
            gen = torch.Generator().manual_seed(int(job.seed) + i)
            sched = copy.deepcopy(self._sched)
            set_sampler_timesteps(sched, max(1, int(job.steps)), shift)
            timesteps = sched.timesteps
            shape = (1, self.mcfg.latent_channels, self.mcfg.latent_size, self.mcfg.latent_size)
            noise = torch.randn(shape, generator=gen)
            init_noise = None
            if init is not None and strength < 1.0:
                # diffusers img2img convention: skip the first (1 - strength) of the schedule
                n_steps = len(timesteps)
                t_start = n_steps - max(1, min(n_steps, int(n_steps * strength)))
                timesteps = timesteps[t_start * sched.order :]
                sched.set_begin_index(t_start * sched.order)
                init_noise = torch.randn(shape, generator=gen)
                latents = sched.add_noise(init, init_noise, timesteps[:1])
            else:
                latents = noise * sched.init_noise_sigma
                if init is not None:
                    init_noise = torch.randn(shape, generator=gen)
            samples.append(EmojiSample(
                job=job, index=i, total_steps=len(timesteps) + int(refine), latents=latents, scheduler=sched,
                timesteps=timesteps, cond=cond, uncond=uncond if needs_cfg else None,
                guidance=float(job.guidance_scale),
                # img2img starts below the interval (0.6 -> t ~ 600): it is guided at every step,
                # else its prompt and guidance_scale would have no effect
                guidance_min_timestep=self.guidance_min_timestep if from_noise else 0, init_latents=init, init_noise=init_noise, keep=keep,
                keep_np=keep_np, init_rgba=init_rgba, generator=gen,
                refine=refine, keep_high=keep_high, init_high=init_high,
            ))
        return samples

    # ---- step --------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, samples: list[EmojiSample]) -> None:
        """One step for each sample: a denoising step, or (once denoised) the second stage. Samples
        of either kind are batched with their own kind, whichever request they belong to."""
        denoising = [s for s in samples if not s.denoised]
        refining = [s for s in samples if s.denoised and s.refine and s.high is None]
        if denoising:
            self._denoise(denoising)
        if refining:
            self._refine(refining)

    def _refine(self, samples: list[EmojiSample]) -> None:
        low = torch.cat([from_latent(s.latents, self.mcfg.patch) for s in samples]).clamp(-1, 1)
        pooled = torch.cat([s.cond.pooled for s in samples]).float()
        level = torch.full((len(samples),), self.upsampler_level)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            high = self.upsampler(low, pooled, level)
        high = premultiplied_clamp(high.float())
        for i, s in enumerate(samples):
            s.high = high[i : i + 1]
            s.step += 1

    def _denoise(self, samples: list[EmojiSample]) -> None:
        rows_z, rows_t, rows_c = [], [], []
        for s in samples:
            t = s.timesteps[s.step]
            rows_z.append(s.latents)
            rows_t.append(t)
            rows_c.append(s.cond)
        guided = [s.uncond is not None and int(s.timesteps[s.step]) >= s.guidance_min_timestep for s in samples]
        for s, g in zip(samples, guided):  # unconditional rows after all conditional ones
            if g:
                rows_z.append(s.latents)
                rows_t.append(s.timesteps[s.step])
                rows_c.append(s.uncond)
        pad = -len(rows_z) % self.row_multiple
        rows_z += rows_z[:1] * pad
        rows_t += rows_t[:1] * pad
        rows_c += rows_c[:1] * pad
        c = TextCond.cat(rows_c)
        out = self.unet(
            torch.cat(rows_z), torch.stack(rows_t).long(), encoder_hidden_states=c.tokens,
            encoder_attention_mask=c.mask, class_labels=c.pooled,
        ).sample
        u = len(samples)
        for i, (s, g) in enumerate(zip(samples, guided)):
            v = out[i : i + 1]
            if g:
                vu = out[u : u + 1]
                u += 1
                v = vu + s.guidance * (v - vu)
            t = s.timesteps[s.step]
            s.x0 = clean_prediction(v, s.latents, self._alphas[int(t)], self.mcfg.prediction_type).clamp(-1, 1)
            s.latents = s.scheduler.step(v, t, s.latents, generator=s.generator).prev_sample
            s.step += 1
            if s.keep is not None and not s.denoised:
                # RePaint-style: the kept region follows the init image's own noising trajectory
                known = s.scheduler.add_noise(s.init_latents, s.init_noise, s.timesteps[s.step : s.step + 1])
                s.latents = self._blend(s.latents, known, s.keep)
            elif s.keep is not None:
                s.latents = self._blend(s.latents, s.init_latents, s.keep)

    def _blend(self, z: torch.Tensor, known: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        p = self.mcfg.patch
        x = from_latent(z, p) * (1 - keep) + from_latent(known, p) * keep
        return to_latent(x, p)

    # ---- decode ------------------------------------------------------------------------------

    def _to_image(self, z: torch.Tensor, s: EmojiSample) -> "Image":
        rgba = model_to_rgba_uint8(from_latent(z, self.mcfg.patch))[0]
        return _composite(rgba, s.keep_np, s.init_rgba)

    def _high_image(self, s: EmojiSample) -> "Image":
        return _composite(model_to_rgba_uint8(s.high)[0], s.keep_high, s.init_high)

    def preview(self, s: EmojiSample) -> "Image":
        if s.high is not None:
            return self._high_image(s)
        z = s.x0 if s.x0 is not None else s.latents
        return self._to_image(z, s)

    def finish(self, samples: list[EmojiSample]) -> list["Image"]:
        return [self._high_image(s) if s.high is not None else self._to_image(s.latents, s) for s in samples]


def _composite(rgba: np.ndarray, keep: np.ndarray | None, original: np.ndarray | None) -> "Image":
    """The image, with the input's exact pixels where the edit's mask keeps them."""
    from PIL import Image

    if keep is not None:
        rgba = np.where(keep[..., None], original, rgba)
    return Image.fromarray(np.ascontiguousarray(rgba), "RGBA")
