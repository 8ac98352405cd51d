"""What a saved diffusers pipeline can do, read from its JSON configs alone.

``model_index.json`` and the ``unet``/``transformer``/``vae``/``tokenizer`` configs say the family,
sizes and tasks, so the API can validate requests before (or without) loading the weights.
"""

from __future__ import annotations

import inspect as pyinspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from canvasd.contracts import Capabilities

# The families canvasd batches step by step; anything else runs whole-job through its pipeline.
Family = Literal["sd", "sdxl", "sd3", "flux"]

# Each family's default classifier-free (or, for Flux, distilled) guidance, as its pipelines use.
DEFAULT_GUIDANCE: dict[str | None, float] = {"sd": 7.5, "sdxl": 5.0, "sd3": 7.0, "flux": 3.5}
_TRANSFORMER_DEFAULT_NATIVE = 1024
_UNET_DEFAULT_NATIVE = 512
_MAX_TOKENIZER_LIMIT = 512  # T5 tokenizers say model_max_length=1e30; pipelines cap at 512


class NotAPipelineError(ValueError):
    """The configured folder is not a diffusers pipeline saved with ``save_pretrained``."""


@dataclass(frozen=True)
class PipelineInfo:
    path: Path
    class_name: str
    components: dict[str, tuple[str | None, str | None]]  # name -> (library, class)
    vae_scale_factor: int
    native_size: tuple[int, int]
    size_multiple: int
    family: Family | None  # None: no step-level path, whole-job only
    text_to_image: bool
    image_to_image: bool
    inpaint: bool
    negative_prompt: bool
    max_prompt_tokens: int
    guidance_scale: bool = True

    @property
    def sd_like(self) -> bool:
        return self.family == "sd"

    def capabilities(self) -> Capabilities:
        return Capabilities(
            text_to_image=self.text_to_image,
            image_to_image=self.image_to_image,
            inpaint=self.inpaint,
            alpha=False,
            stepwise=self.family is not None,
            native_size=self.native_size,
            size_multiple=self.size_multiple,
            min_side=min(64, *self.native_size),
            upscales=False,
            default_guidance=DEFAULT_GUIDANCE.get(self.family, Capabilities.default_guidance),
            negative_prompt=self.negative_prompt,
            guidance_scale=self.guidance_scale,
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

    auto_family, img2img_cls, inpaint_cls, text2img_cls = _auto_pipeline_classes(class_name)
    in_channels = denoiser.get("in_channels")
    packed = _cls(components, "transformer") == "FluxTransformer2DModel"
    # 9-channel inpainting UNets (and Flux Fill's 384-channel transformer) are not plain latents
    plain_latents = in_channels in (None, latent_channels * (4 if packed else 1))
    family = _family(auto_family, components, denoiser, in_channels, latent_channels)

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
        family=family,
        text_to_image=(text2img_cls is not None or auto_family is None) and plain_latents,
        image_to_image=img2img_cls is not None and plain_latents,
        inpaint=inpaint_cls is not None,
        # Flux's negative_prompt works only with a second "true CFG" scale canvasd does not expose;
        # the request's guidance_scale is Flux's distilled guidance, so a negative prompt would do
        # nothing: refused rather than ignored.
        negative_prompt=family != "flux"
        and _accepts(text2img_cls or _diffusers_class(class_name), "negative_prompt"),
        max_prompt_tokens=max_tokens,
        # guidance-distilled Flux without a guidance embedding (schnell) has no use for the number
        guidance_scale=not (family == "flux" and denoiser.get("guidance_embeds") is False),
    )


def _cls(components: dict[str, tuple[str | None, str | None]], name: str) -> str | None:
    return components.get(name, (None, None))[1]


def _family(auto_family: str | None, components: dict[str, tuple[str | None, str | None]],
            denoiser: dict[str, Any], in_channels: Any, latent_channels: int) -> Family | None:
    """The stepwise family of a pipeline, when its components are the family's plain ones."""
    no_extras = all(
        denoiser.get(k) is None
        for k in ("class_embed_type", "time_cond_proj_dim", "encoder_hid_dim_type")
    )
    vae_kl = _cls(components, "vae") == "AutoencoderKL"
    if auto_family == "stable-diffusion" and vae_kl and no_extras:
        if (_cls(components, "unet") == "UNet2DConditionModel"
                and _cls(components, "text_encoder") == "CLIPTextModel"
                and "text_encoder_2" not in components
                and in_channels == latent_channels
                and denoiser.get("addition_embed_type") is None):
            return "sd"
    if auto_family == "stable-diffusion-xl" and vae_kl and no_extras:
        if (_cls(components, "unet") == "UNet2DConditionModel"
                and _cls(components, "text_encoder_2") == "CLIPTextModelWithProjection"
                and in_channels == latent_channels
                and denoiser.get("addition_embed_type") == "text_time"):
            return "sdxl"
    if auto_family == "stable-diffusion-3" and vae_kl:
        if _cls(components, "transformer") == "SD3Transformer2DModel" and in_channels == latent_channels:
            return "sd3"
    if auto_family == "flux" and vae_kl:
        if _cls(components, "transformer") == "FluxTransformer2DModel" and in_channels == latent_channels * 4:
            return "flux"
    return None


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
        return name in pyinspect.signature(pipeline_cls.__call__).parameters
    except (TypeError, ValueError):
        return False
