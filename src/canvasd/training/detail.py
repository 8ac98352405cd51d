"""Evaluate the emoji model's second stage: detail against the real art, concepts, speed.

    canvasd eval detail --data-dir data --out runs/eval-detail

Measures (all on premultiplied RGBA in [0, 1], so invisible colours never count):

- **High-band share inside the drawing**: the energy of what a 128 px image cannot hold (the image
  minus its 128 px reduction enlarged back), over the image's energy around its mean, both inside
  the drawing (alpha > 1/2, eroded by 1/32 of the side so the silhouette's own edge does not count:
  the first stage already draws that, and `fit_image` steepens it). Reported for the real 256 px
  renders and for each way of answering; the target is the answer's share at least half the real
  art's.
- **Edge sharpness**: mean gradient magnitude (finite differences) over the drawing and a margin
  around it, as a ratio to the real render's (1 = as crisp as the art).
- **PSNR** against the real 256 px render, from the real 64 px reduction (how faithful the redraw is).
- Concepts: the same nearest-neighbour accuracy as `canvasd eval report`, on two-stage answers
  reduced back to 64 px, next to the first stage alone on the same prompts and seeds.
- Speed: one medium 1024x1024 answer (generation, fitting, PNG encoding), one stage vs two.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from canvasd.backends.emoji.backend import EmojiBackend
from canvasd.backends.emoji.model import model_to_rgba_uint8, rgba_uint8_to_model
from canvasd.contracts import Job
from canvasd.media.resize import fit_image
from canvasd.training.eval import (
    PARAPHRASES, concept_ranks, features, generate_many, resolve_paraphrases, score_paraphrases, training_bank,
)
from canvasd.training.sheet import contact_sheet
from canvasd.training.train_upsampler import reduce_to
from canvasd.training.trainset import load_arrays, style_phrase

BAND_PX = 128  # energy above what an image this size can hold counts as detail


def _premultiplied01(rgba: np.ndarray) -> torch.Tensor:
    """(N,H,W,4) uint8 straight -> (N,4,H,W) premultiplied in [0, 1]."""
    return (rgba_uint8_to_model(rgba) + 1) / 2


def inside_mask(alpha: torch.Tensor, erode_frac: float = 1 / 32) -> torch.Tensor:
    """(N,1,H,W) alpha in [0,1] -> bool mask of the drawing's inside (alpha > 1/2, eroded)."""
    r = max(1, round(alpha.shape[-1] * erode_frac))
    solid = (alpha > 0.5).float()
    eroded = -F.max_pool2d(-solid, 2 * r + 1, stride=1, padding=r)
    return eroded > 0.5


def highband_energy(rgba: np.ndarray, band: int = BAND_PX) -> tuple[np.ndarray, np.ndarray]:
    """(N,H,W,4) uint8 -> per image (energy above `band` px, energy around the mean), both inside
    the drawing."""
    x = _premultiplied01(rgba)
    size = x.shape[-1]
    low = F.interpolate(F.interpolate(x, size=band, mode="bilinear", antialias=True, align_corners=False),
                        size=size, mode="bicubic", align_corners=False)
    m = inside_mask(x[:, 3:4]).float()
    count = m.sum(dim=(1, 2, 3)).clamp_min(1)
    mean = (x * m).sum(dim=(2, 3), keepdim=True) / count[:, None, None, None]
    return (((x - low) ** 2) * m).sum(dim=(1, 2, 3)).numpy(), (((x - mean) ** 2) * m).sum(dim=(1, 2, 3)).numpy()


def highband_share(rgba: np.ndarray, band: int = BAND_PX) -> float:
    """Share of a set's inside-the-drawing energy above `band` px, pooled over the set (a flat
    drawing has almost no energy of either kind, so per-image ratios would be noise)."""
    high, total = highband_energy(rgba, band)
    return float(high.sum() / max(total.sum(), 1e-8))


def edge_energy(rgba: np.ndarray) -> np.ndarray:
    """(N,H,W,4) uint8 -> (N,) mean gradient magnitude over the drawing and a margin around it."""
    x = _premultiplied01(rgba)
    gx = x[..., :, 1:] - x[..., :, :-1]
    gy = x[..., 1:, :] - x[..., :-1, :]
    mag = (gx[..., :-1, :] ** 2 + gy[..., :, :-1] ** 2).sum(1).sqrt()
    r = max(1, x.shape[-1] // 64)
    region = F.max_pool2d((x[:, 3:4] > 0.02).float(), 2 * r + 1, stride=1, padding=r)[:, 0, :-1, :-1]
    return ((mag * region).sum(dim=(1, 2)) / region.sum(dim=(1, 2)).clamp_min(1)).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) PSNR in dB between two (N,H,W,4) uint8 sets, on premultiplied RGBA."""
    mse = ((_premultiplied01(a) - _premultiplied01(b)) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(1 / mse)).numpy()


def alpha_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) intersection over union of the two sets' silhouettes (alpha > 1/2): whether a stage
    keeps the drawing's outline where the real art has it."""
    sa, sb = a[..., 3] > 127, b[..., 3] > 127
    inter, union = (sa & sb).sum(axis=(1, 2)), (sa | sb).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def fit_today(low: np.ndarray, size: int) -> np.ndarray:
    """The one-stage answer: each 64 px image fitted to `size` (LANCZOS, alpha edge steepened)."""
    return np.stack([np.asarray(fit_image(Image.fromarray(im, "RGBA"), size, size)) for im in low])


@torch.inference_mode()
def upsample(backend: EmojiBackend, low: np.ndarray, prompts: list[str], level: float, batch: int = 16) -> np.ndarray:
    """The second stage on given 64 px images (e.g. real reductions), in batches."""
    pipe = backend.pipe
    out = []
    for i in range(0, len(low), batch):
        x = rgba_uint8_to_model(low[i:i + batch])
        pooled = pipe.text.encode(prompts[i:i + batch]).pooled
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=pipe.bf16):
            high = pipe.upsampler(x, pooled, torch.full((len(x),), level))
        out.append(model_to_rgba_uint8(high.float()))
    return np.concatenate(out)


def detail_rows(real: np.ndarray, answers: dict[str, np.ndarray]) -> dict:
    """Detail of each way of answering against the real renders (same order, same size)."""
    real_share, real_edges = highband_share(real), edge_energy(real)
    rows = {"real art": {"highband_share": real_share, "edge_ratio": 1.0}}
    for name, imgs in answers.items():
        share = highband_share(imgs)
        rows[name] = {"highband_share": share, "highband_vs_real": share / max(real_share, 1e-12),
                      "edge_ratio": float(np.nanmean(edge_energy(imgs)) / np.nanmean(real_edges)),
                      "psnr_db": float(np.mean(psnr(imgs, real))),
                      "alpha_iou": float(np.mean(alpha_iou(imgs, real)))}
    return rows


def _answer_latency(backend: EmojiBackend, steps: int, guidance: float, refine: bool, repeats: int = 3) -> float:
    """Median seconds for one 1024x1024 answer: generation, fitting and PNG encoding."""
    side = 1024 if refine else 64  # a 64 px answer skips the second stage; it is fitted to 1024 all the same
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        job = Job(kind="generate", model=backend.id, prompt="red apple", steps=steps, seed=r, guidance_scale=guidance,
                  output_width=side, output_height=side)
        image = backend.run(job, lambda *_: True)[0]
        fit_image(image, 1024, 1024).save(io.BytesIO(), "PNG")
        if r:  # the first run warms up
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def evaluate_detail(weights_dir: str | Path, data_dir: str | Path, out_dir: str | Path, max_images: int = 128,
                    seeds: int = 2, quality: str = "medium", level: float | None = None, seed: int = 0,
                    speed: bool = True) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = EmojiBackend("canvasd-emoji", str(weights_dir))
    backend.load()
    if backend.pipe.upsampler is None:
        raise ValueError(f"{weights_dir} has no second stage (an upsampler/ folder)")
    caps = backend.capabilities
    steps, g = caps.quality_steps[quality], caps.default_guidance
    level = backend.pipe.upsampler_level if level is None else level
    side = backend.pipe.refined_size
    rng = np.random.default_rng(seed)
    report: dict = {"weights": str(weights_dir), "quality": quality, "steps": steps, "level": level, "size": side,
                    "band_px": BAND_PX}

    # 1. from the real 64 px reductions of held-out 256 px renders
    hi, hi_meta = load_arrays(data_dir, f"emoji{side}")
    held = np.flatnonzero(hi["split"] == 1)
    held = np.sort(rng.choice(held, size=min(max_images, len(held)), replace=False))
    real = hi["images"][held]
    low = reduce_to(real, 64)
    names = [hi_meta["concepts"][int(c)]["captions"][0] for c in hi["concept"][held]]
    prompts = [f"{n}, {style_phrase(hi_meta, s)}" for n, s in zip(names, hi["style"][held])]
    two = upsample(backend, low, prompts, level)
    report["from_real_64px"] = {"images": len(held), **detail_rows(real, {
        "one stage (fitted)": fit_today(low, side), "two stages": two})}

    # 2. from generated 64 px samples of the same prompts: detail against the real art's
    def jobs(ps: list[str], n: int, out_side: int) -> list[Job]:
        return [Job(kind="generate", model=backend.id, prompt=p, n=n, steps=steps, seed=1000 + i, guidance_scale=g,
                    output_width=out_side, output_height=out_side) for i, p in enumerate(ps)]

    gen_low = np.stack([r[0] for r in generate_many(backend, jobs(prompts, 1, 64))])
    gen_two = np.stack([r[0] for r in generate_many(backend, jobs(prompts, 1, 1024))])
    rows = detail_rows(real, {"one stage (fitted)": fit_today(gen_low, side), "two stages": gen_two})
    # a generated drawing is not the real one: no PSNR or silhouette overlap against it
    report["generated"] = {"images": len(prompts), **{k: {kk: vv for kk, vv in v.items()
                                                          if kk not in ("psnr_db", "alpha_iou")}
                                                      for k, v in rows.items()}}

    # 3. concepts: two-stage answers reduced to 64 px, against the first stage alone
    if (Path(data_dir) / "emoji64.npz").exists():
        arrays, meta = load_arrays(data_dir, "emoji64")
        bank, bank_concept = training_bank(arrays)
        ids = {c["id"]: i for i, c in enumerate(meta["concepts"])}
        target = np.array([ids.get(hi_meta["concepts"][int(c)]["id"], -1) for c in hi["concept"][held]])
        para, _ = resolve_paraphrases(PARAPHRASES, meta)
        p_low = generate_many(backend, jobs([p for p, _ in para], seeds, 64))
        p_two = generate_many(backend, jobs([p for p, _ in para], seeds, 1024))
        concepts = {}
        for name, h_imgs, p_imgs in (("one stage", gen_low, p_low), ("two stages", reduce_to(gen_two, 64),
                                                                       [reduce_to(np.stack(x), 64) for x in p_two])):
            r = concept_ranks(features(h_imgs), bank, bank_concept)
            ok = target >= 0
            # scored as `eval report` scores them; None, not NaN, where a small dataset names none
            # of the paraphrases' concepts (and no diversity from a single seed)
            p = score_paraphrases(para, p_imgs, bank, bank_concept, meta) if para else None
            concepts[name] = {
                "heldout_top1": float((r[ok, 0] == target[ok]).mean()),
                "heldout_top5": float((r[ok] == target[ok, None]).any(1).mean()),
                "paraphrase_top1": p["top1"] if p else None,
                "paraphrase_top5": p["top5"] if p else None,
                "diversity": p["diversity_mean"] if p and seeds > 1 else None,
            }
        report["concepts"] = {"heldout_prompts": int((target >= 0).sum()), "paraphrases": len(para), "seeds": seeds,
                              **concepts}
    if speed:
        one, two_s = (_answer_latency(backend, steps, g, refine) for refine in (False, True))
        report["speed"] = {"threads": torch.get_num_threads(), "one_stage_s": one, "two_stage_s": two_s,
                           "ratio": two_s / one}

    # contact sheet at 512 px: first stage (fitted), second stage, real art - real inputs, then generated
    picks = list(range(min(4, len(held))))
    cells, labels = [], []
    for i in picks:
        for im, label in ((fit_today(low[i:i + 1], 512)[0], "real 64 px, fitted"),
                          (fit_today(two[i:i + 1], 512)[0], "second stage"),
                          (fit_today(real[i:i + 1], 512)[0], f"real art: {prompts[i]}")):
            cells.append(Image.fromarray(im, "RGBA"))
            labels.append(label)
    for i in picks:
        for im, label in ((fit_today(gen_low[i:i + 1], 512)[0], f"first stage: {prompts[i]}"),
                          (fit_today(gen_two[i:i + 1], 512)[0], "two stages"),
                          (fit_today(real[i:i + 1], 512)[0], "real art")):
            cells.append(Image.fromarray(im, "RGBA"))
            labels.append(label)
    contact_sheet(cells, labels, cols=6, cell=512, text_lines=1).save(out / "detail_sheet.png")
    (out / "detail.json").write_text(json.dumps(report, indent=2))
    (out / "detail.md").write_text(detail_markdown(report))
    return report


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def detail_markdown(r: dict) -> str:
    lines = [f"Second stage to {r['size']} px, quality `{r['quality']}` ({r['steps']} steps), level {r['level']}; "
             f"detail = energy above a {r['band_px']} px image inside the drawing.", ""]
    for key, title in (("from_real_64px", "From the real 64 px reductions of held-out renders"),
                       ("generated", "From generated 64 px samples of the same prompts")):
        block = r[key]
        lines += [f"{title} ({block['images']} images):", "",
                  "| answer | high-band share | vs real art | edge ratio | PSNR (dB) | alpha IoU |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, v in block.items():
            if isinstance(v, dict):
                psnr_db, iou = v.get("psnr_db"), v.get("alpha_iou")
                lines.append(f"| {name} | {v['highband_share']:.4f} | {v.get('highband_vs_real', 1.0):.2f} | "
                             f"{v['edge_ratio']:.2f} | {'' if psnr_db is None else f'{psnr_db:.2f}'} | "
                             f"{'' if iou is None else f'{iou:.3f}'} |")
        lines.append("")
    if "concepts" in r:
        c = r["concepts"]
        lines += [f"Concepts ({c['heldout_prompts']} held-out prompts, {c['paraphrases']} paraphrases x {c['seeds']} "
                  "seeds; answers reduced to 64 px):", "",
                  "| | held-out top-1 | top-5 | paraphrase top-1 | top-5 | diversity |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name in ("one stage", "two stages"):
            v = c[name]
            lines.append(f"| {name} | {v['heldout_top1']:.3f} | {v['heldout_top5']:.3f} | "
                         f"{_figure(v['paraphrase_top1'])} | {_figure(v['paraphrase_top5'])} | "
                         f"{_figure(v.get('diversity'))} |")
        lines.append("")
    if "speed" in r:
        s = r["speed"]
        lines += [f"One medium 1024x1024 answer ({s['threads']} threads, PNG encoding included): one stage "
                  f"{s['one_stage_s']:.3f} s, two stages {s['two_stage_s']:.3f} s ({s['ratio']:.2f}x)."]
    return "\n".join(lines) + "\n"
