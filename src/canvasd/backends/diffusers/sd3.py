"""Stable Diffusion 3 / 3.5: an MMDiT transformer over plain latents, three text encoders (two
CLIP, T5 optional: without it its part of the sequence is zeros, as the pipeline does), flow
matching (x0 = x_t - sigma * v), true CFG with ``negative_prompt``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from canvasd.backends.diffusers.stepwise import FlowMatchingFamily, Rows

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from canvasd.contracts import Job


class SD3Family(FlowMatchingFamily):
    name = "sd3"

    def latent_channels(self, pipe: Any) -> int:
        return pipe.transformer.config.in_channels

    def encode(self, pipe: Any, job: "Job", device: "torch.device", cfg: bool) -> tuple[Rows, Rows | None]:
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            prompt=job.prompt, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg, negative_prompt=job.negative_prompt,
        )
        rows = {"encoder_hidden_states": cond, "pooled_projections": pooled}
        return rows, ({"encoder_hidden_states": uncond, "pooled_projections": uncond_pooled} if cfg else None)

    def set_timesteps(self, pipe: Any, scheduler: Any, job: "Job", steps: int, device: "torch.device") -> None:
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import (
            calculate_shift,
            retrieve_timesteps,
        )

        kwargs: dict[str, Any] = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            patch = pipe.transformer.config.patch_size
            seq = (job.height // pipe.vae_scale_factor // patch) * (job.width // pipe.vae_scale_factor // patch)
            cfg = scheduler.config
            kwargs["mu"] = calculate_shift(seq, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                                           cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16))
        retrieve_timesteps(scheduler, steps, device, **kwargs)

    def forward(self, pipe: Any, x: "torch.Tensor", t: "torch.Tensor", rows: Rows, shared: dict[str, Any]) -> "torch.Tensor":
        return pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=rows["encoder_hidden_states"],
                                pooled_projections=rows["pooled_projections"], return_dict=False)[0]
