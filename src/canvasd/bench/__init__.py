"""`canvasd bench`: throughput and latency of canvasd, side by side, in one invocation.

Scenarios, all on the same model and the same request plan:
  engine       (a) canvasd without HTTP, in this process: each request body is validated by the
                   API's rules into a job for an `Engine`, and its images are fitted and encoded
                   by the API's renderer - the same bytes (b) sends, minus HTTP/JSON/base64.
  http         (b) canvasd over HTTP: a real uvicorn on 127.0.0.1 serving `create_app`, called
                   with the official `openai` SDK (AsyncOpenAI), step-level batching on.
  http-serial  (c) the same with batching off: one job at a time, the peers' design.

Each scenario runs every concurrency level (closed loop: C clients, each sending its next request
when the previous one answers), non-streamed and/or streamed (with partial images). All scenarios
are started first and stay up; each level then runs in every scenario back to back, the order
rotating from level to level and round to round (`rounds`), so a ratio compares measurements taken
within seconds of each other rather than minutes apart on a machine whose speed drifts. Reported per
level: images/s, latency p50/p95/p99, time to first partial image (streamed), peak RSS of the
serving process, mean samples per denoising step. Output: a JSON file, a PNG plot, the ratios
(b)/(a) and (b)/(c) per concurrency, and a markdown table for the README.

Bounded by construction: requests go only to 127.0.0.1; each level sends a fixed number of
requests and stops early at `level_timeout_s`; every server process is stopped and joined.

`model="fake"` benchmarks the harness itself with `FakeBackend` (sleep-simulated step cost:
no model, numbers are not canvasd's performance).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from canvasd.bench.config import BenchConfig, is_fake, model_spec
from canvasd.bench.report import (
    machine_info,
    markdown_table,
    headline,
    mfu_summary,
    plot,
    ratio_table,
    ratios,
    scaling_table,
)
from canvasd.bench.scenarios import run_all

__all__ = ["BenchConfig", "run_bench"]


def run_bench(config: BenchConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the scenarios, write JSON + PNG into `out_dir`, print the tables; return the report."""
    cfg = replace(config or BenchConfig(), **overrides).effective()
    spec = model_spec(cfg.model, cfg.device, cfg.dtype)
    started = time.strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    scaling: dict[str, Any] = {}
    profile: dict[str, Any] = {}
    results = asyncio.run(run_all(cfg, spec, scaling, profile))
    if profile:
        from canvasd.bench.mfu import mfu

        for r in results:
            tflops, share = mfu(r.images_per_s, profile)
            r.model_tflops_per_s, r.mfu = round(tflops, 6), round(share, 8)
    rows = ratios(results)
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "model": {"id": spec.id, "backend": "fake" if is_fake(spec) else spec.backend, "path": spec.path,
                  "simulated": is_fake(spec)},
        "machine": machine_info(),
        "started": started,
        "duration_s": round(time.perf_counter() - t0, 1),
        "results": [asdict(r) for r in results],
        "ratios": rows,
        "step_scaling": scaling or None,
        "mfu_profile": profile or None,
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench-{spec.id}-{started}"
    json_path, png_path = stem.with_suffix(".json"), stem.with_suffix(".png")
    json_path.write_text(json.dumps(report, indent=2))
    title = f"canvasd bench: {spec.id}" + (" (SIMULATED fake backend)" if is_fake(spec) else "")
    plot(results, png_path, title)
    report["files"] = {"json": str(json_path), "png": str(png_path)}
    print()
    print(markdown_table(results))
    print()
    print(ratio_table(rows))
    if profile:
        print()
        print(mfu_summary(profile))
    if scaling:
        print()
        print(scaling_table(scaling))
    print()
    print("\n".join(headline(report)))
    print(f"\nwrote {json_path} and {png_path}")
    return report
