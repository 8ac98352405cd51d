"""The emoji model's second stage: a feed-forward network that redraws a 64 px sample at 256 px.

Input: the first stage's 64x64 premultiplied RGBA in [-1, 1], the prompt's pooled MiniLM embedding
and a degradation level (0 = a clean render; training feeds it the first stage's own clean-image
estimates from noised renders, the level telling how noisy). Output: 256x256 premultiplied RGBA,
as a residual over the bicubic enlargement, so an untrained or uncertain network still returns the
plain enlargement rather than noise.

Shape: EDSR-style residual blocks without normalisation at 64 px (where it is cheap), each modulated
(FiLM) by the prompt and the degradation level, then two x2 pixel-shuffle stages with a residual
block each at 128 and 256 px. Why feed-forward and not a diffusion upsampler: see the model card.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from canvasd.backends.emoji.model import TEXT_DIM


@dataclass
class UpsamplerConfig:
    """Architecture; stored as upsampler weights' config.json."""

    in_size: int = 64
    scale: int = 4  # two x2 pixel-shuffle stages
    channels: int = 96  # width of the 64 px trunk
    blocks: int = 10  # residual blocks in the trunk
    up_channels: tuple[int, int] = (48, 24)  # widths at 128 and 256 px
    cond_dim: int = 128  # FiLM embedding of (prompt, degradation level)
    text_dim: int = TEXT_DIM

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UpsamplerConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "up_channels" in known:
            known["up_channels"] = tuple(known["up_channels"])
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def out_size(self) -> int:
        return self.in_size * self.scale


class FiLMResBlock(nn.Module):
    """x + conv(silu(conv(x) * (1 + scale) + shift)): no normalisation (it blurs detail in
    super-resolution, EDSR), the conditioning enters as a per-channel affine."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        nn.init.zeros_(self.conv2.weight)  # every block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.conv1(x) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class Upsampler(nn.Module):
    def __init__(self, cfg: UpsamplerConfig):
        super().__init__()
        if cfg.scale != 4:
            raise ValueError("the upsampler has two x2 stages: scale must be 4")
        self.cfg = cfg
        c, (c1, c2), d = cfg.channels, cfg.up_channels, cfg.cond_dim
        self.embed = nn.Sequential(nn.Linear(cfg.text_dim + 16, d), nn.SiLU(), nn.Linear(d, d), nn.SiLU())
        self.head = nn.Conv2d(4, c, 3, padding=1)
        self.trunk = nn.ModuleList(FiLMResBlock(c, d) for _ in range(cfg.blocks))
        self.trunk_out = nn.Conv2d(c, c, 3, padding=1)
        self.up1 = nn.Conv2d(c, 4 * c1, 3, padding=1)
        self.block1 = FiLMResBlock(c1, d)
        self.up2 = nn.Conv2d(c1, 4 * c2, 3, padding=1)
        self.block2 = FiLMResBlock(c2, d)
        self.tail = nn.Conv2d(c2, 4, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as the bicubic enlargement
        nn.init.zeros_(self.tail.bias)

    @staticmethod
    def level_features(level: torch.Tensor) -> torch.Tensor:
        """(B,) degradation level in [0, 1] -> (B, 16) sinusoidal features."""
        freqs = torch.exp(torch.arange(8, dtype=torch.float32) * math.log(1000.0) / 7)
        ang = level.float()[:, None] * freqs[None] * math.pi
        return torch.cat([ang.sin(), ang.cos()], dim=1)

    def forward(self, low: torch.Tensor, pooled: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """low (B,4,64,64) in [-1,1], pooled (B,text_dim), level (B,) -> (B,4,256,256) in [-1,1]."""
        cond = self.embed(torch.cat([pooled.to(low.dtype), self.level_features(level).to(low.dtype)], dim=1))
        h = self.head(low)
        skip = h
        for block in self.trunk:
            h = block(h, cond)
        h = self.trunk_out(h) + skip
        h = self.block1(F.silu(F.pixel_shuffle(self.up1(h), 2)), cond)
        h = self.block2(F.silu(F.pixel_shuffle(self.up2(h), 2)), cond)
        base = F.interpolate(low, scale_factor=self.cfg.scale, mode="bicubic", align_corners=False)
        return base + self.tail(h)


def premultiplied_clamp(x: torch.Tensor) -> torch.Tensor:
    """Clamp (B,4,H,W) premultiplied RGBA in [-1,1] to a valid image: alpha in [-1,1], colour
    (in [0,1] terms) never above alpha - else un-premultiplying would invent colour."""
    x01 = ((x + 1) / 2).clamp(0, 1)
    alpha = x01[:, 3:4]
    rgb = torch.minimum(x01[:, :3], alpha)
    return torch.cat([rgb, alpha], dim=1) * 2 - 1
