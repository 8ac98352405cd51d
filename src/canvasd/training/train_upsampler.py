"""Train the emoji model's second stage (`canvasd.backends.emoji.upsampler`): 64 px -> 256 px.

    canvasd train upsampler --name up256 --data-dir data --max-minutes 60

Data: the icon sets rendered from their SVG sources at 256 px (`canvasd train data --size 256`;
the Noto font is left out: its largest bitmap is 136 px, an enlargement would teach blur). The 64 px
input is each render reduced with LANCZOS in premultiplied alpha, as the first stage's own training
images are made.

Degradation (noise-conditioning augmentation, as in cascaded diffusion / Imagen / the SD x4
upscaler): the second stage is served the first stage's samples, not clean renders. With
probability `p_degrade` the 64 px input is replaced by the first stage's clean-image estimate from
that render noised to a timestep t drawn from [0, t_max): the kind of error the first stage makes
(wrong speckle, softened shapes, shifted colours), at a known strength. The network is told the
level t / 1000; serving picks one (`sampling.level` in the weights' config.json).

Loss: L1 on premultiplied RGBA plus L1 on its horizontal and vertical differences (edges count
twice: a plain pixel loss is content with a blurred edge). Crops of `crop` px (and the matching
crop/4 of the input) keep a step cheap; the network is convolutional, so it serves whole images.
The loop shares the first stage's pieces: time budget, cosine schedule, EMA, resumable checkpoints.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from canvasd.backends.emoji.defaults import PACKAGED_WEIGHTS
from canvasd.backends.emoji.model import ModelConfig, build_unet, rgba_uint8_to_model, to_latent, from_latent
from canvasd.backends.emoji.upsampler import Upsampler, UpsamplerConfig
from canvasd.backends.precision import cpu_has_fast_bf16
from canvasd.training.runbook import RunBook, RunConfig
from canvasd.training.train import git_commit, lr_at, make_noise_scheduler, sample_captions, save_checkpoint
from canvasd.training.trainset import EmojiData, load_training_data

UPSAMPLER_FORMAT = "canvasd-emoji-upsampler/1"
FONT_BITMAP_PX = 136  # the Noto Color Emoji font's only bitmap size (one glyph's width)
DEFAULT_LEVEL = 0.1  # degradation level the served network is told: the most detail from generated inputs (model card)


@dataclass
class UpsamplerTrainConfig(RunConfig):
    name: str = "up256"
    data_dir: str = "data"
    data_name: str = "emoji256"
    runs_dir: str = "runs"
    first_stage: str = str(PACKAGED_WEIGHTS)  # weights folder whose samples the stage will refine
    model: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    batch_size: int = 16
    crop: int = 128  # target crop side (the input crop is crop / 4)
    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    min_lr_frac: float = 0.05
    max_steps: int | None = None
    max_minutes: float | None = None
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    edge_weight: float = 1.0  # weight of the L1 on pixel differences
    # weight of the L1 between the local energy of the top octave of prediction and target
    # (`detail_energy_l1`): a pixel loss alone answers an uncertain detail with its blurred mean
    detail_weight: float = 0.0
    init_from: str | None = None  # start from this run's ckpt.pt (weights only: fresh optimizer and schedule)
    p_degrade: float = 0.75  # share of inputs replaced by the first stage's estimate
    t_max: int = 400  # degradation timesteps drawn from [0, t_max)
    # captions as the first stage trains on them (sample_captions reads these)
    p_uncond: float = 0.1
    p_styled: float = 0.35
    p_name: float = 0.7
    ckpt_every_minutes: float = 5.0
    seed: int = 0
    threads: int = 2
    bf16: bool | None = None
    max_images: int | None = None
    log_every: int = 10

    @classmethod
    def tiny(cls, **kw) -> "UpsamplerTrainConfig":
        """A few-second config for tests."""
        base = dict(model=UpsamplerConfig(channels=8, blocks=1, up_channels=(8, 4), cond_dim=16),
                    batch_size=2, crop=32, warmup_steps=1, max_steps=3, ckpt_every_minutes=0.0,
                    threads=1, log_every=1)
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def sources_for_size(size: int) -> list[str] | None:
    """Dataset sources for `size` px images (None: all). Above the font's bitmap size its glyphs
    would be enlargements, which would teach the second stage to blur: the SVG sets only (the
    font's own artwork is among them, as `noto-svg`)."""
    from canvasd.training.data import SOURCES

    return None if size <= FONT_BITMAP_PX else [s.key for s in SOURCES if s.key != "noto"]


def reduce_to(images: np.ndarray, size: int) -> np.ndarray:
    """(N,H,W,4) uint8 straight RGBA -> (N,size,size,4), LANCZOS in premultiplied alpha (Pillow
    resamples RGBA premultiplied): how the first stage's 64 px training images are made."""
    from PIL import Image

    out = np.empty((len(images), size, size, 4), np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img, "RGBA").resize((size, size), Image.Resampling.LANCZOS))
    return out


class FirstStage:
    """The first stage's UNet as a degrader: its clean-image estimate from a noised 64 px image."""

    def __init__(self, weights_dir: str | Path, bf16: bool):
        from safetensors.torch import load_file

        config = json.loads((Path(weights_dir) / "config.json").read_text())
        self.mcfg = ModelConfig.from_dict(config["model"])
        self.unet = build_unet(self.mcfg)
        self.unet.load_state_dict({k: v.float() for k, v in load_file(str(Path(weights_dir) / "model.safetensors")).items()})
        self.unet.eval().requires_grad_(False)
        self.alphas = make_noise_scheduler(self.mcfg).alphas_cumprod.float()
        self.bf16 = bf16

    @torch.inference_mode()
    def estimate(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                 pooled: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        z0 = to_latent(x, self.mcfg.patch)
        a = self.alphas[t].sqrt()[:, None, None, None]
        s = (1 - self.alphas[t]).sqrt()[:, None, None, None]
        zt = a * z0 + s * torch.randn(z0.shape, generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.unet(zt, t, encoder_hidden_states=tokens, encoder_attention_mask=mask, class_labels=pooled).sample
        if self.mcfg.prediction_type != "sample":
            raise ValueError("the degrader needs a clean-image (prediction_type 'sample') first stage")
        return from_latent(out.float(), self.mcfg.patch).clamp(-1, 1)


def edge_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    dx = (pred[..., :, 1:] - pred[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    dy = (pred[..., 1:, :] - pred[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


def top_octave_energy(x: torch.Tensor, window: int = 8) -> torch.Tensor:
    """Local RMS (over `window` px) of what a half-size image cannot hold: x minus its 2x
    reduction enlarged back."""
    low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    return (F.avg_pool2d((x - low) ** 2, window) + 1e-6).sqrt()


def detail_energy_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How far the amount of fine detail in each neighbourhood is from the real art's, whatever
    its exact placement: pushes the network to draw the detail it cannot place exactly instead of
    averaging it away."""
    return (top_octave_energy(pred) - top_octave_energy(target)).abs().mean()


def export_upsampler(ckpt_path: str | Path, weights_dir: str | Path, level: float = DEFAULT_LEVEL) -> Path:
    """fp16 safetensors (EMA) + config.json (architecture, serving level, recipe, provenance)."""
    from safetensors.torch import save_file

    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    out = Path(weights_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in ck["ema"].items()},
              str(out / "model.safetensors"))
    cfg = ck["cfg"]
    config = {
        "format": UPSAMPLER_FORMAT,
        "model": cfg["model"],
        "sampling": {"level": float(level)},
        "training": {"recipe": {k: v for k, v in cfg.items() if k != "model"}, "step": ck["step"],
                     "train_minutes": round(ck["train_seconds"] / 60, 1), "final_loss_ema": ck.get("loss_ema"),
                     "weights": "ema", "git_commit": ck.get("git_commit", "unknown"),
                     "data": ck.get("data_info", {})},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def train_upsampler(cfg: UpsamplerTrainConfig, export_to: str | Path | None = None,
                    progress_bar: bool = True) -> dict:
    """Train (or resume) `cfg.name`; returns a summary. Stops at max_steps or the time budget."""

    if cfg.max_steps is None and cfg.max_minutes is None:
        raise ValueError("set max_steps or max_minutes")
    if cfg.crop % cfg.model.scale or cfg.crop > cfg.model.out_size:
        raise ValueError(f"crop must be a multiple of {cfg.model.scale} and at most {cfg.model.out_size}")
    torch.set_num_threads(cfg.threads)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "ckpt.pt"
    use_bf16 = cpu_has_fast_bf16() if cfg.bf16 is None else cfg.bf16

    degrader = FirstStage(cfg.first_stage, use_bf16)
    data: EmojiData = load_training_data(cfg.data_dir, cfg.data_name, degrader.mcfg.max_tokens, cfg.max_images)
    if data.images.shape[1] != cfg.model.out_size:
        raise ValueError(f"{cfg.data_name} holds {data.images.shape[1]} px images; the stage draws "
                         f"{cfg.model.out_size} px")
    print(f"{len(data.images)} training images; reducing to {cfg.model.in_size} px", flush=True)
    high = torch.from_numpy(np.ascontiguousarray(data.images))
    low = torch.from_numpy(reduce_to(data.images, cfg.model.in_size))
    n, text = len(high), data.text

    torch.manual_seed(cfg.seed)
    model = Upsampler(cfg.model).train()
    ema = Upsampler(cfg.model).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    book = RunBook(run_dir, log_every=cfg.log_every, ckpt_every_minutes=cfg.ckpt_every_minutes)
    if cfg.init_from and not ckpt_path.exists():
        ck = torch.load(cfg.init_from, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["ema"])
        ema.load_state_dict(ck["ema"])
        print(f"initialised from {cfg.init_from} (EMA of step {ck['step']}), fresh optimizer", flush=True)
    elif ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        book.resume(ck["step"], ck["train_seconds"], ck.get("loss_ema"))
        rng.bit_generator.state = ck["np_rng"]
        gen.set_state(ck["torch_rng"])
        print(f"resumed {ckpt_path} at step {book.step} ({book.train_seconds / 60:.1f} min trained)", flush=True)
    data_info = {"name": cfg.data_name, "train_images": n, "concepts": len(data.meta["concepts"]),
                 "styles": [s["name"] for s in data.meta["styles"]]}
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    def progress() -> float:
        p = 0.0
        if cfg.max_steps:
            p = max(p, book.step / cfg.max_steps)
        if cfg.max_minutes:
            p = max(p, book.train_seconds / (cfg.max_minutes * 60))
        return p

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": book.step,
            "train_seconds": book.train_seconds, "loss_ema": book.loss_ema, "np_rng": rng.bit_generator.state,
            "torch_rng": gen.get_state(), "cfg": cfg.to_dict(), "git_commit": git_commit(), "data_info": data_info,
        })
        book.checkpointed()

    scale, lo_crop = cfg.model.scale, cfg.crop // cfg.model.scale
    lo_size = cfg.model.in_size
    params, ema_params = list(model.parameters()), list(ema.parameters())
    book.start(cfg.max_steps, progress_bar)
    while progress() < 1.0:
        t0 = time.perf_counter()
        idx = rng.integers(0, n, size=cfg.batch_size)
        cap = torch.from_numpy(sample_captions(data, idx, rng, cfg))
        tidx = torch.from_numpy(idx)
        x_lo = rgba_uint8_to_model(low[tidx])
        x_hi = rgba_uint8_to_model(high[tidx])
        degrade = torch.rand(len(idx), generator=gen) < cfg.p_degrade
        t = torch.where(degrade, torch.randint(0, cfg.t_max, (len(idx),), generator=gen), torch.zeros(len(idx), dtype=torch.long))
        if degrade.any():
            d = degrade.nonzero()[:, 0]
            c = cap[d]
            x_lo[d] = degrader.estimate(x_lo[d], t[d], text.tokens[c].float(), text.mask[c].float(),
                                        text.pooled[c].float(), gen)
        # one random aligned crop per image
        oy = rng.integers(0, lo_size - lo_crop + 1, size=len(idx))
        ox = rng.integers(0, lo_size - lo_crop + 1, size=len(idx))
        lo = torch.stack([x_lo[i, :, y:y + lo_crop, x:x + lo_crop] for i, (y, x) in enumerate(zip(oy, ox))])
        hi = torch.stack([x_hi[i, :, y * scale:(y + lo_crop) * scale, x * scale:(x + lo_crop) * scale]
                          for i, (y, x) in enumerate(zip(oy, ox))])
        level = t.float() / 1000

        lr = lr_at(cfg, book.step, progress())
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            pred = model(lo, text.pooled[cap].float(), level).float()
        loss = (pred - hi).abs().mean() + cfg.edge_weight * edge_l1(pred, hi)
        if cfg.detail_weight:
            loss = loss + cfg.detail_weight * detail_energy_l1(pred, hi)
        book.optimizer_step(loss, opt, params, ema_params, cfg.grad_clip, cfg.ema_decay, book.step)
        if book.record(t0, loss.item(), lr):
            checkpoint()
            print(f"\ncheckpoint step {book.step} loss_ema {book.loss_ema:.4f} trained "
                  f"{book.train_seconds / 60:.1f} min", flush=True)
    book.close()
    checkpoint()
    weights = export_upsampler(ckpt_path, export_to or run_dir / "weights")
    summary = {"step": book.step, "loss_ema": book.loss_ema, "train_minutes": book.train_seconds / 60,
               "weights": str(weights)}
    print(json.dumps(summary), flush=True)
    return summary
