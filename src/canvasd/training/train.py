"""Train the embedded emoji model: one seeded, resumable, time-budgeted function.

    canvasd train --name emoji64 --max-minutes 90
    canvasd train export runs/emoji64/ckpt.pt --to src/canvasd/backends/emoji/weights

(the command's options are mapped to `TrainConfig` by `canvasd.cli.training`.)

Recipe: clean-image-prediction DDPM (1000 steps, cosine betas) on pixel-unshuffled 64x64
premultiplied RGBA, x-MSE weighted by min(snr, 5) + 1 (see `TrainConfig.sample_snr_cap`), AdamW with
linear warmup then cosine decay, grad clipping, EMA. (`--prediction-type v_prediction` trains the
earlier v-prediction variant.)
With a time budget (`max_minutes`) the cosine runs over *training time*, not steps, so the run
always ends with a decayed learning rate exactly when the budget is spent, however fast the shared
CPU happens to be. Checkpoints (`runs/<name>/ckpt.pt`) hold model, EMA, optimizer, step, elapsed
training time and RNG states; running again with the same name resumes.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from canvasd.backends.emoji.defaults import DEFAULT_GUIDANCE, GUIDANCE_MIN_TIMESTEP, QUALITY_STEPS, ROW_MULTIPLE, SOLVER
from canvasd.backends.emoji.model import (
    ModelConfig, build_unet, rgba_uint8_to_model, shift_timesteps, to_latent,
)
from canvasd.backends.precision import cpu_has_fast_bf16
from canvasd.training.runbook import RunBook, RunConfig
from canvasd.training.trainset import EmojiData, load_training_data


@dataclass
class TrainConfig(RunConfig):
    name: str = "emoji64"
    data_dir: str = "data"
    data_name: str = "emoji64"
    runs_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 200
    min_lr_frac: float = 0.05  # cosine decays to this fraction of lr
    max_steps: int | None = None
    max_minutes: float | None = None  # training-time budget (data prep and final export excluded)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    p_uncond: float = 0.1  # caption dropped -> "" (classifier-free guidance)
    p_styled: float = 0.35  # caption with the image's style phrase appended ("..., flat style")
    # Captions list the name first, then aliases and shared tags ("food", "face"); drawing uniformly
    # would show an image with its own name only ~1/8 of the time. p_name: use the name instead.
    p_name: float = 0.5
    finetune_from: str | None = None  # start a new run from this checkpoint with a fresh lr schedule
    # None = plain v-MSE. Min-SNR-gamma weights v-MSE by min(snr, gamma) / (snr + 1), which is ~0 at
    # high noise: measured here, a model trained so ignores the prompt at the start of sampling and
    # copies the initial noise's layout into every image. Kept as an option, off by default.
    min_snr_gamma: float | None = None
    # prediction_type "sample": the x-MSE is weighted by min(snr, cap) + 1. That is the v-MSE
    # (weight snr + 1) with its low-noise end capped, so no noise level is starved: weight 1 at
    # pure noise (where min-SNR's weight would be ~0) and at most cap + 1 for nearly clean inputs.
    sample_snr_cap: float = 5.0
    # Fraction of each batch whose timestep is drawn from the noisier half [T/2, T) instead of all
    # of [0, T): 0.5 puts 3x the density on the half where a sample's concept and silhouette are
    # decided. For fine-tuning a model whose low-noise predictions are already clean (its
    # reconstruction sheet) but whose concepts are not yet told apart (apple vs tomato).
    high_noise_p: float = 0.0
    # Training timesteps drawn uniformly, then moved by `model.shift_timesteps(.., shift)`: > 1 puts
    # more of them at high noise, where the concept is decided. Exported as the sampler's
    # `sampling.timestep_shift`, so sampling visits noise levels with the density training saw.
    timestep_shift: float = 1.0
    augment_p: float = 0.25  # probability of random scale 0.9-1.0 + shift of <= 2 px
    hflip: bool = False  # off: emoji are not mirror-symmetric (text, arrows, flags)
    ckpt_every_minutes: float = 5.0
    seed: int = 0
    threads: int = 2
    # bf16 autocast for the forward pass (fp32 master weights, loss and optimizer). None = where the
    # CPU has native bf16 kernels (`cpu_has_fast_bf16`).
    bf16: bool | None = None
    max_images: int | None = None
    log_every: int = 10

    @classmethod
    def tiny(cls, **kw) -> "TrainConfig":
        """A few-second config for tests: a 3-level 32-channel UNet."""
        base = dict(
            model=ModelConfig(block_out_channels=(32, 32, 32), norm_num_groups=8, head_channels=16),
            batch_size=4, warmup_steps=2, max_steps=4, ckpt_every_minutes=0.0, threads=1, log_every=1,
        )
        base.update({k: v for k, v in kw.items() if v is not None})
        return cls(**base)


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[3]
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001 - provenance only
        return "unknown"


def make_noise_scheduler(mcfg: ModelConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**mcfg.scheduler_config())


# ---- batches ----------------------------------------------------------------------------------


def sample_captions(data: EmojiData, idx: np.ndarray, rng: np.random.Generator, cfg: TrainConfig) -> np.ndarray:
    """Index into data.captions.strings for each image: "" / plain caption / caption + style."""
    t = data.captions
    r = rng.random(len(idx))
    out = np.zeros(len(idx), np.int64)
    for j, i in enumerate(idx):
        c = data.concept[i]
        if r[j] < cfg.p_uncond:
            out[j] = 0
        elif r[j] < cfg.p_uncond + cfg.p_styled and (t.styled[i] >= 0).any():
            choices = t.styled[i][t.styled[i] >= 0]
            out[j] = choices[0 if rng.random() < cfg.p_name else rng.integers(len(choices))]
        else:
            k = 0 if rng.random() < cfg.p_name else rng.integers(t.plain_count[c])
            out[j] = t.plain[c, k]
    return out


def augment(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Random shrink (scale 0.9-1) and shift (<= 2 px) on a fraction p of the batch.

    Done on premultiplied [0,1] values so the zero padding is exact transparency."""
    b = x.shape[0]
    apply = torch.rand(b, generator=gen) < p
    if p <= 0 or not apply.any():
        return x
    scale = 1 - 0.1 * torch.rand(b, generator=gen)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2 * 2 / x.shape[-1])
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = 1 / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    x01 = (x + 1) / 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(x01, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = torch.where(apply[:, None, None, None], warped, x01)
    return out * 2 - 1


def sample_timesteps(n: int, num_train_timesteps: int, high_noise_p: float, gen: torch.Generator,
                     shift: float = 1.0, alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """n training timesteps: uniform over [0, T), or with probability high_noise_p over [T/2, T).
    shift > 1: the uniform draw is moved by `shift_timesteps` first, so training sees noise levels
    with the density the shifted sampler visits them (`sampling.timestep_shift`)."""
    if shift == 1.0:
        t = torch.randint(0, num_train_timesteps, (n,), generator=gen)
    else:
        u = torch.rand(n, generator=gen, dtype=torch.float64) * (num_train_timesteps - 1)
        shifted = shift_timesteps(u.numpy(), alphas_cumprod.double().numpy(), shift)
        t = torch.from_numpy(np.rint(shifted)).long().clamp(0, num_train_timesteps - 1)
    if high_noise_p <= 0:
        return t
    half = num_train_timesteps // 2
    noisy = torch.randint(half, num_train_timesteps, (n,), generator=gen)
    return torch.where(torch.rand(n, generator=gen) < high_noise_p, noisy, t)


# ---- checkpoint / export ------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def export(ckpt_path: str | Path, weights_dir: str | Path, use_ema: bool = True,
           guidance_min_timestep: int = GUIDANCE_MIN_TIMESTEP) -> Path:
    """Write fp16 safetensors + config.json (architecture, scheduler, text encoder, recipe).
    `guidance_min_timestep` is the sampler's guidance interval; it is chosen by looking at samples
    after training, so it is an export setting, not a recipe field."""
    from safetensors.torch import save_file

    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    sd = ck["ema" if use_ema else "model"]
    out = Path(weights_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}, str(out / "model.safetensors"))
    cfg = ck["cfg"]
    mcfg = ModelConfig.from_dict(cfg["model"])
    config = {
        "format": "canvasd-emoji/1",
        "model": mcfg.to_dict(),
        "scheduler": {"train": mcfg.scheduler_config(), "sampler": "DPMSolverMultistepScheduler",
                      "sampler_options": {"algorithm_type": SOLVER, "solver_order": 2}},
        "text_encoder": {"package": mcfg.text_encoder, "model": "sentence-transformers/all-MiniLM-L6-v2",
                         "max_tokens": mcfg.max_tokens, "pooled": "mean, L2-normalised"},
        "sampling": {"quality_steps": QUALITY_STEPS, "default_guidance": DEFAULT_GUIDANCE, "row_multiple": ROW_MULTIPLE,
                     "solver": SOLVER, "timestep_shift": float(cfg.get("timestep_shift", 1.0)),
                     "guidance_min_timestep": int(guidance_min_timestep)},
        "training": {
            "recipe": {k: v for k, v in cfg.items() if k != "model"},
            "step": ck["step"],
            "train_minutes": round(ck["train_seconds"] / 60, 1),
            "final_loss_ema": ck.get("loss_ema"),
            "weights": "ema" if use_ema else "raw",
            "git_commit": ck.get("git_commit", "unknown"),
            "data": ck.get("data_info", {}),
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


# ---- the loop ---------------------------------------------------------------------------------


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * warm * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * cos)


def train(cfg: TrainConfig, export_to: str | Path | None = None, progress_bar: bool = True,
          guidance_min_timestep: int = GUIDANCE_MIN_TIMESTEP) -> dict:
    """Train (or resume) `cfg.name`; returns a summary. Stops at max_steps or the time budget."""

    if cfg.max_steps is None and cfg.max_minutes is None:
        raise ValueError("set max_steps or max_minutes")
    torch.set_num_threads(cfg.threads)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "ckpt.pt"

    data = load_training_data(cfg.data_dir, cfg.data_name, cfg.model.max_tokens, cfg.max_images)
    n = len(data.images)
    images = torch.from_numpy(np.ascontiguousarray(data.images))
    text = data.text

    torch.manual_seed(cfg.seed)
    model = build_unet(cfg.model).train()
    ema = build_unet(cfg.model).eval().requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = make_noise_scheduler(cfg.model)
    alphas_cumprod = sched.alphas_cumprod.float()
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    book = RunBook(run_dir, log_every=cfg.log_every, ckpt_every_minutes=cfg.ckpt_every_minutes)
    sched_t0, sched_s0 = 0.0, 0  # where this run's lr schedule and time budget start

    source = ckpt_path if ckpt_path.exists() else (Path(cfg.finetune_from) if cfg.finetune_from else None)
    if source is not None and source.is_dir():
        # A shipped weights folder (model.safetensors + config.json): model and EMA start from its
        # weights, with a fresh optimizer and lr schedule - how a new machine continues training.
        from safetensors.torch import load_file

        sd = {k: v.float() for k, v in load_file(str(source / "model.safetensors")).items()}
        src_cfg = json.loads((source / "config.json").read_text())
        src_pred = src_cfg["model"].get("prediction_type", "v_prediction")
        if src_pred != cfg.model.prediction_type:
            # The body's features carry over; the output layer meant the other target: restart it
            # from zero (the first predictions are the mean grey, not the old target's sign).
            sd = {k: (torch.zeros_like(v) if k.startswith("conv_out.") else v) for k, v in sd.items()}
            print(f"output layer reset: {src_pred} -> {cfg.model.prediction_type}", flush=True)
        model.load_state_dict(sd)
        ema.load_state_dict(sd)
        book.step = sched_s0 = int(src_cfg.get("training", {}).get("step", 0))
        print(f"initialised from weights {source} (step {book.step}), fresh optimizer", flush=True)
        source = None
    if source is not None:
        ck = torch.load(source, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        book.resume(ck["step"], ck["train_seconds"], ck.get("loss_ema"))
        rng.bit_generator.state = ck["np_rng"]
        gen.set_state(ck["torch_rng"])
        sched_t0, sched_s0 = ck.get("sched_t0", 0.0), ck.get("sched_s0", 0)
        if source != ckpt_path:  # fine-tune: fresh warmup + cosine over this run's budget
            sched_t0, sched_s0 = book.train_seconds, book.step
            for g in opt.param_groups:
                g["initial_lr"] = cfg.lr
        print(f"resumed {source} at step {book.step} ({book.train_seconds / 60:.1f} min trained)", flush=True)
    data_info = {"name": cfg.data_name, "train_images": n, "concepts": len(data.meta["concepts"]),
                 "styles": [s["name"] for s in data.meta["styles"]], "caption_strings": len(data.captions.strings)}
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    def progress() -> float:
        p = 0.0
        if cfg.max_steps:
            p = max(p, (book.step - sched_s0) / cfg.max_steps)
        if cfg.max_minutes:
            p = max(p, (book.train_seconds - sched_t0) / (cfg.max_minutes * 60))
        return p

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": book.step,
            "train_seconds": book.train_seconds, "loss_ema": book.loss_ema, "np_rng": rng.bit_generator.state,
            "torch_rng": gen.get_state(), "cfg": cfg.to_dict(), "sched_t0": sched_t0, "sched_s0": sched_s0,
            "git_commit": git_commit(), "data_info": data_info,
        })
        book.checkpointed()

    use_bf16 = cpu_has_fast_bf16() if cfg.bf16 is None else cfg.bf16
    ema_params = list(ema.parameters())
    params = list(model.parameters())
    book.start(cfg.max_steps, progress_bar)
    while progress() < 1.0:
        t0 = time.perf_counter()
        idx = rng.integers(0, n, size=cfg.batch_size)
        cap = torch.from_numpy(sample_captions(data, idx, rng, cfg))
        x = rgba_uint8_to_model(images[torch.from_numpy(idx)])
        x = augment(x, cfg.augment_p, gen)
        if cfg.hflip:
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        z0 = to_latent(x, cfg.model.patch)
        noise = torch.randn(z0.shape, generator=gen)
        t = sample_timesteps(len(z0), cfg.model.num_train_timesteps, cfg.high_noise_p, gen, cfg.timestep_shift, alphas_cumprod)
        a = alphas_cumprod[t].sqrt()[:, None, None, None]
        s = (1 - alphas_cumprod[t]).sqrt()[:, None, None, None]
        zt = a * z0 + s * noise
        target = z0 if cfg.model.prediction_type == "sample" else a * noise - s * z0  # x0 or v
        tokens, mask, pooled = text.tokens[cap].float(), text.mask[cap].float(), text.pooled[cap].float()

        lr = lr_at(cfg, book.step - sched_s0, progress())
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            pred = model(zt, t, encoder_hidden_states=tokens, encoder_attention_mask=mask, class_labels=pooled).sample
        per = ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))
        snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
        if cfg.model.prediction_type == "sample":
            per = per * (snr.clamp(max=cfg.sample_snr_cap) + 1)
        elif cfg.min_snr_gamma:
            per = per * snr.clamp(max=cfg.min_snr_gamma) / (snr + 1)
        loss = per.mean()
        book.optimizer_step(loss, opt, params, ema_params, cfg.grad_clip, cfg.ema_decay, book.step)
        left = (cfg.max_minutes * 60 - book.train_seconds + sched_t0) / 60 if cfg.max_minutes else float("nan")
        if book.record(t0, loss.item(), lr, left_min=f"{left:.1f}"):
            checkpoint()
            print(f"\ncheckpoint step {book.step} loss_ema {book.loss_ema:.4f} trained "
                  f"{book.train_seconds / 60:.1f} min", flush=True)
    book.close()
    checkpoint()
    weights = export(ckpt_path, export_to or run_dir / "weights", guidance_min_timestep=guidance_min_timestep)
    summary = {"step": book.step, "loss_ema": book.loss_ema, "train_minutes": book.train_seconds / 60,
               "weights": str(weights)}
    print(json.dumps(summary), flush=True)
    return summary
