"""Stable Diffusion XL: two CLIP text encoders (the second's pooled, projected output joins the
UNet's "text_time" embedding), and per-sample ``add_time_ids`` of its size and crop
(original size = target size = the job's, crop (0, 0), as the pipeline defaults). True CFG."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from canvasd.backends.diffusers.sd import SDFamily
from canvasd.backends.diffusers.stepwise import Rows

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from canvasd.contracts import Job


class SDXLFamily(SDFamily):
    name = "sdxl"

    def uses_cfg(self, pipe: Any, job: "Job") -> bool:
        # as the pipeline: guidance-distilled UNets (time_cond_proj_dim) take no CFG rows
        return job.guidance_scale > 1.0 and pipe.unet.config.time_cond_proj_dim is None

    def encode(self, pipe: Any, job: "Job", device: "torch.device", cfg: bool) -> tuple[Rows, Rows | None]:
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            prompt=job.prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=job.negative_prompt,
        )
        size = (job.height, job.width)
        projection = (pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None
                      else int(pooled.shape[-1]))
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=cond.dtype,
                                          text_encoder_projection_dim=projection).to(device)
        rows = {"encoder_hidden_states": cond, "text_embeds": pooled, "time_ids": time_ids}
        if not cfg:
            return rows, None
        return rows, {"encoder_hidden_states": uncond, "text_embeds": uncond_pooled, "time_ids": time_ids}

    def forward(self, pipe: Any, x: "torch.Tensor", t: "torch.Tensor", rows: Rows, shared: dict[str, Any]) -> "torch.Tensor":
        added = {"text_embeds": rows["text_embeds"], "time_ids": rows["time_ids"]}
        return pipe.unet(x, t, encoder_hidden_states=rows["encoder_hidden_states"], added_cond_kwargs=added,
                         return_dict=False)[0]
