"""Stable Diffusion 1.x/2.x: a UNet conditioned on one CLIP text encoder, plain 4-channel latents,
true classifier-free guidance (``guidance_scale`` > 1 adds the negative-prompt rows)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from canvasd.backends.diffusers.stepwise import Rows, StepwiseFamily

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from canvasd.contracts import Job


class SDFamily(StepwiseFamily):
    name = "sd"

    def encode(self, pipe: Any, job: "Job", device: "torch.device", cfg: bool) -> tuple[Rows, Rows | None]:
        cond, uncond = pipe.encode_prompt(job.prompt, device, 1, cfg, negative_prompt=job.negative_prompt)
        return {"encoder_hidden_states": cond}, ({"encoder_hidden_states": uncond} if cfg else None)
