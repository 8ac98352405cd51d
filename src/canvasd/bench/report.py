"""What a bench run reports: per-level results, the ratios between scenarios, the markdown tables
for the README, the plot, and the machine it ran on."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canvasd.bench.config import SCENARIO_LABELS

@dataclass
class LevelResult:
    scenario: str
    stream: bool
    concurrency: int
    requests: int
    ok: int
    errors: int
    images: int
    wall_s: float
    images_per_s: float
    latency_s: dict[str, float | None]
    ttfp_s: dict[str, float | None] | None
    peak_rss_mb: float | None
    mean_batch: float | None
    first_error: str | None = None
    model_tflops_per_s: float | None = None  # the denoiser's FLOPs per second (bench/mfu.py)
    mfu: float | None = None  # model_tflops_per_s over the device's measured matmul peak


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    xs = sorted(values)

    def q(p: float) -> float:  # linear interpolation between closest ranks
        pos = (len(xs) - 1) * p
        lo, hi = math.floor(pos), math.ceil(pos)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return {"p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "mean": sum(xs) / len(xs)}


def ratios(results: list[LevelResult]) -> list[dict[str, Any]]:
    by = {(r.scenario, r.stream, r.concurrency): r for r in results}
    rows = []
    for (scenario, stream, c), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if scenario != "http":
            continue
        row: dict[str, Any] = {"concurrency": c, "stream": stream}
        for other, name in (("engine", "http_over_engine"), ("http-serial", "batched_over_serial")):
            o = by.get((other, stream, c))
            row[name] = round(r.images_per_s / o.images_per_s, 3) if o and o.images_per_s else None
        rows.append(row)
    return rows


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.3g}%"


def markdown_table(results: list[LevelResult]) -> str:
    lines = [
        "| scenario | stream | clients | images/s | p50 s | p95 s | p99 s | first partial p50 s | mean batch | model TFLOP/s | MFU | peak RSS MB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ttfp = r.ttfp_s["p50"] if r.ttfp_s else None
        lines.append(
            f"| {SCENARIO_LABELS[r.scenario]} | {'yes' if r.stream else 'no'} | {r.concurrency} "
            f"| {_fmt(r.images_per_s)} | {_fmt(r.latency_s['p50'])} | {_fmt(r.latency_s['p95'])} "
            f"| {_fmt(r.latency_s['p99'])} | {_fmt(ttfp)} | {_fmt(r.mean_batch, 1)} "
            f"| {'–' if r.model_tflops_per_s is None else f'{r.model_tflops_per_s:.3g}'} | {_pct(r.mfu)} "
            f"| {_fmt(r.peak_rss_mb, 0)} | {r.errors} |"
        )
    return "\n".join(lines)


def headline(report: dict[str, Any], clients: int = 8) -> list[str]:
    """The figures a GPU check quotes: per scenario at `clients` concurrent requests (or the
    highest level run), images/s, p50 latency and MFU, and the batched/serial ratio."""
    results = report["results"]
    levels = sorted({r["concurrency"] for r in results})
    if not levels:
        return []
    c = clients if clients in levels else levels[-1]
    lines = []
    for r in results:
        if r["concurrency"] != c:
            continue
        lines.append(f"{SCENARIO_LABELS[r['scenario']]}{' stream' if r['stream'] else ''} at {c} clients: "
                     f"{r['images_per_s']:.3g} images/s, p50 {_fmt(r['latency_s']['p50'])} s, MFU {_pct(r.get('mfu'))}"
                     + (f", {r['errors']} errors" if r["errors"] else ""))
    for row in report.get("ratios", []):
        if row["concurrency"] == c and row.get("batched_over_serial") is not None:
            lines.append(f"batching ratio at {c} clients{' (stream)' if row['stream'] else ''}: "
                         f"{row['batched_over_serial']:.2f}x images/s batched over serial")
    return lines


def mfu_summary(profile: dict[str, Any]) -> str:
    """One line: what the MFU column divides by, and what it multiplies."""
    peak = profile["peak"]
    per_step = ", ".join(f"{size}: {flops / 1e9:.4g} GFLOP" for size, flops in
                         profile["flops_per_image_step"].items())
    return (f"MFU = images/s x {profile['mean_flops_per_image'] / 1e9:.4g} GFLOP per image "
            f"({profile['mean_steps_per_image']:.3g} steps; denoiser per image-step {per_step}) "
            f"/ matmul peak {peak['tflops_per_s']:.4g} TFLOP/s ({peak['dtype']} {peak['side']}x"
            f"{peak['side']} on {peak['device']}, measured in this run)")


def ratio_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| clients | stream | (b)/(a) HTTP vs engine | (b)/(c) batching vs serial |",
             "|---:|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['concurrency']} | {'yes' if row['stream'] else 'no'} "
                     f"| {_fmt(row['http_over_engine'])} | {_fmt(row['batched_over_serial'])} |")
    return "\n".join(lines)


def scaling_table(scaling: dict[str, Any]) -> str:
    ks = list(scaling["step_s"])
    lines = ["| images in the step | " + " | ".join(ks) + " |", "|---|" + "---:|" * len(ks),
             "| seconds per step | " + " | ".join(f"{scaling['step_s'][k]:.3f}" for k in ks) + " |",
             "| seconds per image-step | " + " | ".join(f"{scaling['per_image_step_s'][k]:.4f}" for k in ks) + " |",
             "| batching ceiling vs one at a time | " + " | ".join(f"{scaling['ceiling'][k]:.2f}x" for k in ks) + " |"]
    if "second_stage_s" in scaling:
        lines += ["| second stage, seconds | " + " | ".join(f"{scaling['second_stage_s'][k]:.3f}" for k in ks) + " |",
                  "| second stage, seconds per image | "
                  + " | ".join(f"{scaling['second_stage_per_image_s'][k]:.4f}" for k in ks) + " |"]
    return "\n".join(lines)


def plot(results: list[LevelResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[tuple[str, bool], list[LevelResult]] = {}
    for r in results:
        series.setdefault((r.scenario, r.stream), []).append(r)
    for (scenario, stream), rs in series.items():
        rs.sort(key=lambda r: r.concurrency)
        label = SCENARIO_LABELS[scenario] + (" stream" if stream else "")
        style = "--" if stream else "-"
        xs = [r.concurrency for r in rs]
        line, = ax_tp.plot(xs, [r.images_per_s for r in rs], style, marker="o", label=label)
        ax_lat.plot(xs, [r.latency_s["p50"] or math.nan for r in rs], style, marker="o",
                    color=line.get_color(), label=label + " p50")
        ax_lat.plot(xs, [r.latency_s["p95"] or math.nan for r in rs], ":", marker="x",
                    color=line.get_color(), label=label + " p95")
    levels = sorted({r.concurrency for r in results})
    for ax, ylabel in ((ax_tp, "images / s"), (ax_lat, "latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_tp.set_title("Throughput")
    ax_lat.set_title("Latency")
    ax_tp.legend(fontsize=8)
    ax_lat.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info() -> dict[str, Any]:
    import psutil

    info = {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": platform.processor() or None,
    }
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
        ).stdout.strip() or None
    except Exception:
        info["git_commit"] = None
    return info
