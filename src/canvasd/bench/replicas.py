"""`canvasd bench --replicas 1,2`: the same model on Ray Serve with 1, 2, ... engine replicas on this
machine, side by side: images/s and latency per concurrency level, each replica's threads stated.

The machine's cores are split evenly: R replicas get ``cores / R`` CPUs each and as many torch
threads (at least one). On one machine this measures what splitting the same cores into replicas
does (batching per replica shrinks, per-replica overheads add up, Ray's hops add latency); it cannot
show what R machines would do. Each replica count is deployed, warmed up, measured level by level
with the official SDK through Serve's HTTP proxy on 127.0.0.1, then deleted before the next.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from canvasd.bench.config import (
    BENCH_KEY,
    LOOPBACK,
    BenchConfig,
    is_fake,
    model_spec,
    request_plan,
    scenario_settings,
)
from canvasd.bench.report import LevelResult, _fmt, machine_info
from canvasd.bench.scenarios import LevelSamples, Runner, run_level, sdk_request


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def replica_layout(replicas: int, cores: int) -> tuple[float, int]:
    """(CPUs per replica, torch threads per replica) when `replicas` share `cores`."""
    cpus = cores / replicas
    return cpus, max(1, math.floor(cpus))


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| replicas | CPUs x threads / replica | stream | clients | images/s | p50 s | p95 s | errors |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        res = r["result"]
        lines.append(
            f"| {r['replicas']} | {r['cpus_per_replica']:g} x {r['threads_per_replica']} | "
            f"{'on' if res['stream'] else 'off'} | {res['concurrency']} | {res['images_per_s']:.2f} | "
            f"{_fmt(res['latency_s']['p50'])} | {_fmt(res['latency_s']['p95'])} | {res['errors']} |")
    return "\n".join(lines)


async def _measure(cfg: BenchConfig, settings: Any, replicas: int) -> list[LevelResult]:
    from openai import AsyncOpenAI
    from ray import serve

    from canvasd.serve.ray import APP_NAME, deploy

    url = deploy(settings)
    client = AsyncOpenAI(base_url=url + "/v1", api_key=BENCH_KEY, max_retries=0,
                         timeout=cfg.level_timeout_s + 60)
    do_request = sdk_request(client, cfg)
    try:
        deadline = time.monotonic() + cfg.ready_timeout_s
        while True:  # warm-up; the first request may wait out the replicas loading
            try:
                await do_request(request_plan(cfg, 1)[0], False)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)
        runner = Runner(f"ray-{replicas}", do_request, os.getpid(), lambda: None)
        results = []
        for stream in cfg.stream_modes():
            for c in cfg.concurrency:
                samples = LevelSamples()
                plan = request_plan(cfg, cfg.requests_at(c))
                for _ in range(cfg.rounds):
                    await run_level(runner, stream, c, plan, cfg, samples)
                results.append(samples.result(runner.scenario, stream, c))
        return results
    finally:
        await client.close()
        serve.delete(APP_NAME)


def run_replicas_bench(counts: tuple[int, ...], config: BenchConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Measure each replica count in turn; write JSON into `out_dir`, print the table."""
    import ray
    from ray import serve

    from canvasd.engine.scheduler import usable_cores

    cfg = replace(config or BenchConfig(), **overrides).effective()
    spec = model_spec(cfg.model)
    if is_fake(spec):
        raise ValueError("--replicas needs a real model (the fake backend lives in the bench process only)")
    cores = usable_cores()
    started = time.strftime("%Y%m%d-%H%M%S")
    rows: list[dict[str, Any]] = []
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024 * 1024)
    port = _free_port()  # Serve's proxy keeps the port it started on for every later deployment
    try:
        with tempfile.TemporaryDirectory(prefix="canvasd-bench-ray-") as image_dir:
            for replicas in counts:
                cpus, threads = replica_layout(replicas, cores)
                per_model = spec.model_copy(update={"replicas": replicas, "num_cpus": cpus})
                settings = scenario_settings(cfg, per_model, True, image_dir)
                settings.host, settings.port = LOOPBACK, port
                settings.torch_threads = threads
                print(f"replicas={replicas}: {cpus:g} CPUs and {threads} torch thread(s) each")
                for result in asyncio.run(_measure(cfg, settings, replicas)):
                    rows.append({"replicas": replicas, "cpus_per_replica": cpus,
                                 "threads_per_replica": threads, "result": asdict(result)})
    finally:
        serve.shutdown()
        ray.shutdown()
    report = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
              "replica_counts": list(counts), "cores": cores, "model": {"id": spec.id, "path": spec.path},
              "machine": machine_info(), "started": started, "rows": rows}
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-replicas-{spec.id}-{started}.json"
    path.write_text(json.dumps(report, indent=2))
    print()
    print(table(rows))
    print(f"\nwrote {path}")
    report["file"] = str(path)
    return report
