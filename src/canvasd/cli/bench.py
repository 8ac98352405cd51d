"""`canvasd bench`: raw engine vs HTTP with batching vs HTTP serial, side by side."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from canvasd.backends.precision import Precision
from canvasd.cli.common import CommandError, require_extra


def _levels(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\s*[1-9][0-9]*(\s*,\s*[1-9][0-9]*)*\s*", text):
        raise typer.BadParameter(f"expected comma-separated positive integers, got {text!r}",
                                 param_hint="'--concurrency'")
    return tuple(int(c) for c in text.split(","))


def bench(
    model: Annotated[Optional[str], typer.Option(
        help="name=/path[,key=value...] (a local model, as `serve --model`), 'fake' (a simulated backend), "
        "or the embedded model when omitted.")] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated client counts.")] = "1,2,4,8,16",
    requests: Annotated[Optional[int], typer.Option(min=1, help="Requests per level and round.")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds per level, interleaved across scenarios and pooled.")] = 1,
    scenarios: Annotated[Optional[list[str]], typer.Option(
        "--scenario", help="engine, http or http-serial: run only these (repeatable; default: all three).")] = None,
    stream: Annotated[Literal["off", "on", "both"], typer.Option(help="Streamed requests, plain ones, or both.")] = "both",
    partial_images: Annotated[int, typer.Option(min=0, max=3, help="Partial images of streamed requests.")] = 2,
    size: Annotated[str, typer.Option(help="Requested size, WxH.")] = "1024x1024",
    quality: Annotated[Literal["low", "medium", "high", "auto"], typer.Option(help="Requested quality.")] = "low",
    mixed: Annotated[bool, typer.Option(help="Cycle sizes x qualities.")] = False,
    max_batch: Annotated[Optional[int], typer.Option(min=1, help="The server setting max_batch.")] = None,
    torch_threads: Annotated[Optional[int], typer.Option(min=1, help="The server setting torch_threads.")] = None,
    precision: Annotated[Precision, typer.Option(help="The server setting precision.")] = "auto",
    device: Annotated[Optional[str], typer.Option(
        help="The model's device: auto, cpu, cuda, cuda:N, mps, xpu (as `--model name=/path,device=...`).")] = None,
    dtype: Annotated[Optional[Literal["auto", "bf16", "fp16", "fp32"]], typer.Option(
        help="The model's dtype.")] = None,
    client_model: Annotated[str, typer.Option(
        help="The `model` requests name: an OpenAI alias (its sizes) or the local model's id (any size).")] = "gpt-image-1",
    mfu: Annotated[bool, typer.Option(
        "--mfu/--no-mfu", help="Report model FLOPs utilisation (counts the denoiser's FLOPs, times a matmul).")] = True,
    quick: Annotated[bool, typer.Option(help="Concurrency 1,4; few requests.")] = False,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON report and the plot go.")] = Path("benchmarks/results"),
    replicas: Annotated[Optional[str], typer.Option(
        help="Instead of the scenarios: Ray Serve with these engine replica counts side by side "
        "(e.g. 1,2; the cores are split evenly between the replicas).")] = None,
) -> None:
    """Benchmark side by side: raw engine, HTTP with batching, HTTP serial (the peers' design);
    with --replicas, 1..N engine replicas on Ray Serve (docs/scale-out.md)."""
    require_extra("bench")  # before minutes of work, not when the plot is drawn
    if replicas is not None:
        require_extra("ray")
    levels = _levels(concurrency)
    if not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", size):
        raise typer.BadParameter(f"expected WxH, got {size!r}", param_hint="'--size'")
    from canvasd.bench import BenchConfig, run_bench
    from canvasd.bench.config import model_spec

    try:  # a bad --model, --device or --dtype is refused now, with the settings' message
        model_spec(model, device, dtype)
    except ValueError as exc:
        raise CommandError(" ".join(str(exc).split())) from None
    overrides = dict(
        model=model, concurrency=levels, requests=requests, rounds=rounds, stream=stream,
        partial_images=partial_images, size=size, quality=quality, mixed=mixed, max_batch=max_batch,
        threads=torch_threads, precision=precision, device=device, dtype=dtype, client_model=client_model,
        mfu=mfu, quick=quick, out_dir=out_dir,
    )
    if scenarios:
        overrides["scenarios"] = tuple(scenarios)
    try:
        cfg = BenchConfig(**overrides).effective()
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if replicas is not None:
        from canvasd.bench.replicas import run_replicas_bench

        try:
            counts = _levels(replicas)
            run_replicas_bench(counts, cfg)
        except (ValueError, typer.BadParameter) as exc:
            raise CommandError(str(exc)) from None
        return
    run_bench(cfg)
