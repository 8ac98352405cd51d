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
    quick: Annotated[bool, typer.Option(help="Concurrency 1,4; few requests.")] = False,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON report and the plot go.")] = Path("benchmarks/results"),
) -> None:
    """Benchmark side by side: raw engine, HTTP with batching, HTTP serial (the peers' design)."""
    require_extra("bench")  # before minutes of work, not when the plot is drawn
    levels = _levels(concurrency)
    if not re.fullmatch(r"[1-9][0-9]*x[1-9][0-9]*", size):
        raise typer.BadParameter(f"expected WxH, got {size!r}", param_hint="'--size'")
    from canvasd.bench import BenchConfig, run_bench
    from canvasd.bench.config import model_spec

    model_spec(model)  # a bad --model is refused now, with the settings' message
    overrides = dict(
        model=model, concurrency=levels, requests=requests, rounds=rounds, stream=stream,
        partial_images=partial_images, size=size, quality=quality, mixed=mixed, max_batch=max_batch,
        threads=torch_threads, precision=precision, quick=quick, out_dir=out_dir,
    )
    if scenarios:
        overrides["scenarios"] = tuple(scenarios)
    try:
        cfg = BenchConfig(**overrides).effective()
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    run_bench(cfg)
