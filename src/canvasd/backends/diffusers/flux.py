"""Flux: a transformer over packed latents (2x2 patches -> tokens) with position ids, CLIP pooled +
T5 sequence conditioning, flow matching with a resolution-dependent timestep shift ``mu``.

``guidance_scale`` is Flux's *distilled* guidance: a number fed to the guidance embedding (Flux-dev;
Flux-schnell has none and ignores it), one forward per sample, no negative rows. A negative prompt
would need a second "true CFG" scale; canvasd refuses ``negative_prompt`` for Flux (inspect.py).
The shift depends on the image's token count, so only samples of one size share a step; the shift
is part of the batch key besides the size.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable

from canvasd.backends.diffusers.stepwise import FlowMatchingFamily, Rows

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from canvasd.contracts import Job

T5_TOKENS = 512  # FluxPipeline's max_sequence_length default


def _shift_config(cfg: Any) -> tuple[int, int, float, float]:
    get = cfg.get
    return (get("base_image_seq_len", 256), get("max_image_seq_len", 4096), get("base_shift", 0.5),
            get("max_shift", 1.15))


def flux_mu(width: int, height: int, vae_scale: int, cfg: Any) -> float:
    """The pipeline's timestep shift for an image of this size (its packed token count)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    seq = (height // vae_scale // 2) * (width // vae_scale // 2)
    return calculate_shift(seq, *_shift_config(cfg))


@functools.lru_cache(maxsize=32)
def _scheduler_config(path: Path) -> dict[str, Any]:
    """The folder's scheduler config (batch_key runs before, and without, the weights)."""
    return json.loads((path / "scheduler" / "scheduler_config.json").read_text())


class FluxFamily(FlowMatchingFamily):
    name = "flux"

    def uses_cfg(self, pipe: Any, job: "Job") -> bool:
        return False

    def latent_channels(self, pipe: Any) -> int:
        return pipe.transformer.config.in_channels // 4

    def latent_shape(self, pipe: Any, job: "Job") -> tuple[int, ...]:
        # packing needs even latent sides
        vs = pipe.vae_scale_factor
        return (1, self.latent_channels(pipe), 2 * (job.height // (vs * 2)), 2 * (job.width // (vs * 2)))

    def encode(self, pipe: Any, job: "Job", device: "torch.device", cfg: bool) -> tuple[Rows, Rows | None]:
        import torch

        cond, pooled, _ = pipe.encode_prompt(prompt=job.prompt, prompt_2=None, device=device,
                                             num_images_per_prompt=1, max_sequence_length=T5_TOKENS)
        rows = {"encoder_hidden_states": cond, "pooled_projections": pooled}
        if pipe.transformer.config.guidance_embeds:
            rows["guidance"] = torch.full([1], job.guidance_scale, device=device, dtype=torch.float32)
        return rows, None

    def shared_inputs(self, pipe: Any, job: "Job", device: "torch.device", dtype: "torch.dtype") -> dict[str, Any]:
        import torch

        _, _, h, w = self.latent_shape(pipe, job)
        text_dtype = pipe.text_encoder.dtype if pipe.text_encoder is not None else pipe.transformer.dtype
        return {
            "img_ids": pipe._prepare_latent_image_ids(1, h // 2, w // 2, device, dtype),
            "txt_ids": torch.zeros(T5_TOKENS, 3).to(device=device, dtype=text_dtype),
        }

    def schedule_key(self, info: Any, job: "Job") -> Hashable:
        return ("mu", round(flux_mu(job.width, job.height, info.vae_scale_factor, _scheduler_config(info.path)), 6))

    def set_timesteps(self, pipe: Any, scheduler: Any, job: "Job", steps: int, device: "torch.device") -> None:
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

        sigmas = None if scheduler.config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        mu = flux_mu(job.width, job.height, pipe.vae_scale_factor, scheduler.config)
        retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)

    def pack(self, pipe: Any, latents: "torch.Tensor", job: "Job") -> "torch.Tensor":
        b, c, h, w = latents.shape
        return pipe._pack_latents(latents, b, c, h, w)

    def unpack(self, pipe: Any, latents: "torch.Tensor", job: "Job") -> "torch.Tensor":
        return pipe._unpack_latents(latents, job.height, job.width, pipe.vae_scale_factor)

    def timestep_rows(self, times: list[Any], dtype: "torch.dtype", device: "torch.device") -> "torch.Tensor":
        return super().timestep_rows(times, dtype, device).to(dtype)  # the pipeline's t.to(latents.dtype)

    def forward(self, pipe: Any, x: "torch.Tensor", t: "torch.Tensor", rows: Rows, shared: dict[str, Any]) -> "torch.Tensor":
        return pipe.transformer(
            hidden_states=x, timestep=t / 1000, guidance=rows.get("guidance"),
            pooled_projections=rows["pooled_projections"], encoder_hidden_states=rows["encoder_hidden_states"],
            txt_ids=shared["txt_ids"], img_ids=shared["img_ids"], return_dict=False,
        )[0]


__all__ = ["FluxFamily", "flux_mu"]
