"""The step-level core every family shares: one `DiffusersSample` per image, batched forwards.

Every sample has its own latents, seeded generator and scheduler copy (its own step index and
multistep history), so samples of different jobs, at different step indices, with different step
counts and strengths, share one denoiser forward. A family (`sd`, `sdxl`, `sd3`, `flux`) says
how its prompts are encoded, how its noise and schedule are drawn, which conditioning rows its
denoiser takes and how it reads a clean-image estimate; this module does the rest the same way
for all of them: img2img noising from the job's strength, inpainting by keeping the unmasked
latents (noised to the next step's level) after every step, classifier-free guidance rows.

Image i of a job is seeded with ``job.seed + i`` and draws its noise exactly as the family's
pipeline does with a list of generators, so a stepwise image equals the pipeline's own
``__call__`` (up to float rounding of batched kernels).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable, Protocol

from canvasd.contracts import Sample

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from canvasd.contracts import Job

Rows = dict[str, "torch.Tensor"]  # a sample's conditioning: denoiser keyword -> (1, ...) tensor


@dataclass
class DiffusersSample(Sample):
    latents: Any = None  # (1, C, h, w), or (1, seq, C*4) packed for Flux
    scheduler: Any = None  # this sample's own copy: step index and multistep history
    timesteps: Any = None
    cond: Rows = field(default_factory=dict)
    uncond: Rows | None = None  # negative rows; None when guidance is off
    shared: dict[str, Any] = field(default_factory=dict)  # un-batched inputs (Flux's position ids)
    generator: Any = None
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    x0: Any = None  # last clean-latent prediction
    # inpainting with a plain-latent denoiser: keep the unmasked latents, blend after each step
    image_latents: Any = None
    noise: Any = None
    mask: Any = None  # 1 = repaint; shaped like the latents


class Pipes(Protocol):
    def pipe(self, task: str) -> Any: ...


class StepwiseFamily:
    """One pipeline family's step-level adapter. Subclasses override what their pipelines do
    differently; the base class is the epsilon/v-prediction UNet of the SD family."""

    name = "sd"
    flow_matching = False  # True: the denoiser predicts a velocity v, x0 = x_t - sigma * v

    # -- conditioning ----------------------------------------------------------------------
    def uses_cfg(self, pipe: Any, job: "Job") -> bool:
        return job.guidance_scale > 1.0

    def encode(self, pipe: Any, job: "Job", device: "torch.device", cfg: bool) -> tuple[Rows, Rows | None]:
        raise NotImplementedError

    def shared_inputs(self, pipe: Any, job: "Job", device: "torch.device", dtype: "torch.dtype") -> dict[str, Any]:
        """Inputs every row of a batch shares (equal within a batch_key)."""
        return {}

    def schedule_key(self, info: Any, job: "Job") -> Hashable:
        """What besides the size must match for samples to share a forward (Flux: the shift)."""
        return None

    # -- schedule and noise ----------------------------------------------------------------
    def set_timesteps(self, pipe: Any, scheduler: Any, job: "Job", steps: int, device: "torch.device") -> None:
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

        retrieve_timesteps(scheduler, steps, device)

    def first_step(self, steps: int, strength: float) -> int:
        """The img2img pipelines' get_timesteps: index of the first timestep run."""
        init = min(int(steps * strength), steps)
        return max(steps - init, 0)

    def latent_shape(self, pipe: Any, job: "Job") -> tuple[int, ...]:
        return (1, self.latent_channels(pipe), job.height // pipe.vae_scale_factor, job.width // pipe.vae_scale_factor)

    def latent_channels(self, pipe: Any) -> int:
        return pipe.unet.config.in_channels

    def init_noise_sigma(self, scheduler: Any) -> float:
        return getattr(scheduler, "init_noise_sigma", 1.0)

    def noised(self, scheduler: Any, x0: "torch.Tensor", noise: "torch.Tensor", timesteps: Any, index: int) -> "torch.Tensor":
        """`x0` noised to the level of ``timesteps[index]`` (the forward process)."""
        return scheduler.add_noise(x0, noise, timesteps[index : index + 1])

    def encode_image(self, pipe: Any, image: "torch.Tensor", generator: Any) -> "torch.Tensor":
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

        vae = pipe.vae
        latents = retrieve_latents(vae.encode(image.to(vae.dtype)), generator=generator)
        return self._normalise(vae, latents)

    @staticmethod
    def _normalise(vae: Any, latents: "torch.Tensor") -> "torch.Tensor":
        cfg = vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is not None and std is not None:
            import torch

            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
            return (latents - mean) * cfg.scaling_factor / std
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return (latents - shift) * cfg.scaling_factor

    def pack(self, pipe: Any, latents: "torch.Tensor", job: "Job") -> "torch.Tensor":
        return latents

    def unpack(self, pipe: Any, latents: "torch.Tensor", job: "Job") -> "torch.Tensor":
        return latents

    def to_vae(self, pipe: Any, latents: "torch.Tensor", job: "Job") -> "torch.Tensor":
        """Denoised latents -> what the VAE decoder takes."""
        import torch

        vae = pipe.vae
        latents = self.unpack(pipe, latents, job)
        cfg = vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
            return latents * std / cfg.scaling_factor + mean
        shift = getattr(cfg, "shift_factor", None) or 0.0
        return latents / cfg.scaling_factor + shift

    # -- one denoising step -----------------------------------------------------------------
    def model_input(self, scheduler: Any, latents: "torch.Tensor", t: Any) -> "torch.Tensor":
        return scheduler.scale_model_input(latents, t)

    def timestep_rows(self, times: list[Any], dtype: "torch.dtype", device: "torch.device") -> "torch.Tensor":
        import torch

        return torch.tensor([float(t) for t in times], dtype=torch.float32, device=device)

    def forward(self, pipe: Any, x: "torch.Tensor", t: "torch.Tensor", rows: Rows, shared: dict[str, Any]) -> "torch.Tensor":
        return pipe.unet(x, t, encoder_hidden_states=rows["encoder_hidden_states"], return_dict=False)[0]

    def guide(self, job: "Job", uncond: "torch.Tensor", cond: "torch.Tensor") -> "torch.Tensor":
        return uncond + job.guidance_scale * (cond - uncond)

    def x0(self, scheduler: Any, output: Any, before: "torch.Tensor", model_output: "torch.Tensor") -> Any:
        return x0_of(scheduler, output)


def x0_of(scheduler: Any, output: Any) -> "torch.Tensor | None":
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


def flow_x0(scheduler: Any, before: "torch.Tensor", velocity: "torch.Tensor") -> "torch.Tensor":
    """Flow matching's clean estimate x0 = x_t - sigma_t * v, sigma_t of the step just taken."""
    sigma = scheduler.sigmas[scheduler.step_index - 1].to(before)
    return before - sigma * velocity


def step_kwargs_for(scheduler: Any, generator: Any) -> dict[str, Any]:
    """What the pipelines' prepare_extra_step_kwargs pass: the generator and eta=0 if accepted."""
    params = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "generator" in params:
        kwargs["generator"] = generator
    if "eta" in params:
        kwargs["eta"] = 0.0
    return kwargs


def start_samples(family: StepwiseFamily, pipes: Pipes, job: "Job", task: str, strength: float | None,
                  steps: int, init: "torch.Tensor | None", mask: "torch.Tensor | None",
                  device: "torch.device", dtype: "torch.dtype", generator_device: str) -> list[Sample]:
    """The job's samples, each with its noise drawn as the family's pipeline draws it."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    pipe = pipes.pipe("text2img")
    cfg = family.uses_cfg(pipe, job)
    cond, uncond = family.encode(pipe, job, device, cfg)
    shared = family.shared_inputs(pipe, job, device, dtype)
    shape = family.latent_shape(pipe, job)
    if mask is not None:
        mask = family.pack(pipe, mask.to(device=device, dtype=dtype).expand(shape[0], shape[1], -1, -1).contiguous(), job)

    samples: list[Sample] = []
    for i in range(job.n):
        generator = torch.Generator(generator_device).manual_seed(job.seed + i)
        scheduler = copy.deepcopy(pipe.scheduler)
        family.set_timesteps(pipe, scheduler, job, steps, device)
        timesteps = scheduler.timesteps
        image_latents = noise = None
        if task == "text2img":
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            latents = family.pack(pipe, latents * family.init_noise_sigma(scheduler), job)
        else:
            # the img2img / inpaint pipelines' order of draws: VAE posterior, then noise
            assert strength is not None and init is not None
            t_start = family.first_step(steps, strength)
            timesteps = scheduler.timesteps[t_start * scheduler.order :]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * scheduler.order)
            image_latents = family.encode_image(pipe, init.to(device), generator).to(dtype)
            noise = randn_tensor(image_latents.shape, generator=generator, device=device, dtype=dtype)
            if task == "inpaint" and strength >= 1.0:
                latents = noise * family.init_noise_sigma(scheduler)
            else:
                latents = family.noised(scheduler, image_latents, noise, timesteps, 0)
            latents = family.pack(pipe, latents, job)
            image_latents, noise = family.pack(pipe, image_latents, job), family.pack(pipe, noise, job)
        samples.append(
            DiffusersSample(
                job=job, index=i, step=0, total_steps=len(timesteps),
                latents=latents, scheduler=scheduler, timesteps=timesteps,
                cond=cond, uncond=uncond if cfg else None, shared=shared,
                generator=generator, step_kwargs=step_kwargs_for(scheduler, generator),
                image_latents=image_latents if task == "inpaint" else None,
                noise=noise if task == "inpaint" else None,
                mask=mask,
            )
        )
    return samples


def step_samples(family: StepwiseFamily, pipe: Any, samples: list[DiffusersSample], device: "torch.device") -> None:
    """Advance every sample by one step: one batched forward over all [uncond, cond] rows."""
    import torch

    inputs, rows, times = [], [], []
    for s in samples:
        t = s.timesteps[s.step]
        x = family.model_input(s.scheduler, s.latents, t)
        both = [s.cond] if s.uncond is None else [s.uncond, s.cond]
        inputs += [x] * len(both)
        rows += both
        times += [t] * len(both)
    x = torch.cat(inputs)
    batched = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    pred = family.forward(pipe, x, family.timestep_rows(times, x.dtype, device), batched, samples[0].shared)
    row = 0
    for s in samples:
        if s.uncond is None:
            out_s = pred[row : row + 1]
            row += 1
        else:
            out_s = family.guide(s.job, pred[row : row + 1], pred[row + 1 : row + 2])
            row += 2
        t = s.timesteps[s.step]
        before = s.latents
        out = s.scheduler.step(out_s, t, before, return_dict=True, **s.step_kwargs)
        s.x0 = family.x0(s.scheduler, out, before, out_s)
        latents = out.prev_sample.to(before.dtype)
        if s.mask is not None:
            latents = (1 - s.mask) * known_latents(family, s, s.step + 1) + s.mask * latents
        s.latents = latents
        s.step += 1


def known_latents(family: StepwiseFamily, s: DiffusersSample, next_index: int) -> Any:
    """The kept (unmasked) region, noised to the level of the next timestep."""
    if next_index >= len(s.timesteps):
        return s.image_latents
    return family.noised(s.scheduler, s.image_latents, s.noise, s.timesteps, next_index)


class FlowMatchingFamily(StepwiseFamily):
    """Rectified-flow transformers (SD3, Flux): Euler steps on a velocity, sigma from 1 to 0."""

    flow_matching = True

    def first_step(self, steps: int, strength: float) -> int:
        # SD3/Flux img2img pipelines do not round steps * strength down before subtracting
        init = min(steps * strength, steps)
        return int(max(steps - init, 0))

    def noised(self, scheduler: Any, x0: "torch.Tensor", noise: "torch.Tensor", timesteps: Any, index: int) -> "torch.Tensor":
        # scale_noise of the pipelines: sigma of that timestep in the scheduler's full schedule
        offset = len(scheduler.timesteps) - len(timesteps)
        sigma = scheduler.sigmas[offset + index].to(x0)
        return sigma * noise + (1.0 - sigma) * x0

    def model_input(self, scheduler: Any, latents: "torch.Tensor", t: Any) -> "torch.Tensor":
        return latents

    def timestep_rows(self, times: list[Any], dtype: "torch.dtype", device: "torch.device") -> "torch.Tensor":
        import torch

        return torch.stack([t.reshape(()) for t in times]).to(device)

    def x0(self, scheduler: Any, output: Any, before: "torch.Tensor", model_output: "torch.Tensor") -> Any:
        return flow_x0(scheduler, before, model_output)
