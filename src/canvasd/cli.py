"""The `canvasd` command: serve | generate | train | eval | bench."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from canvasd.config import EMBEDDED_MODEL_ID, ModelSpec, Settings, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def embedded_weights_dir() -> Path:
    return Path(__file__).parent / "backends" / "emoji" / "weights"


def embedded_model_available() -> bool:
    return (embedded_weights_dir() / "config.json").exists()


def parse_model_arg(arg: str) -> ModelSpec:
    """`name=/path/to/folder`: a diffusers pipeline folder, or an emoji-model weights folder."""
    if "=" not in arg:
        raise typer.BadParameter(f"--model expects name=/path/to/folder, got {arg!r}")
    name, path = arg.split("=", 1)
    folder = Path(path).expanduser()
    if (folder / "model_index.json").exists():
        return ModelSpec(id=name, backend="diffusers", path=str(folder))
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return ModelSpec(id=name, backend="emoji", path=str(folder))
    raise typer.BadParameter(
        f"{folder} is neither a diffusers pipeline folder (no model_index.json) "
        "nor a canvasd emoji weights folder (config.json + model.safetensors)"
    )


def build_settings(models: list[str], config: Optional[Path], **overrides) -> Settings:
    specs = [parse_model_arg(m) for m in models]
    settings = load_settings(config, models=specs, **overrides)
    if not settings.models:
        if not embedded_model_available():
            typer.echo(
                "canvasd: no model to serve: the embedded model's weights are not in this "
                f"install ({embedded_weights_dir()}); pass --model name=/path/to/diffusers-folder",
                err=True,
            )
            raise typer.Exit(2)
        settings.models.append(ModelSpec(id=EMBEDDED_MODEL_ID, backend="emoji"))
    return settings


ModelOpt = Annotated[
    list[str],
    typer.Option("--model", "-m", help="name=/path: a local diffusers pipeline (repeatable)."),
]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file.")]


@app.command()
def serve(
    model: ModelOpt = [],
    config: ConfigOpt = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default 8000).")] = None,
    compat: Annotated[
        Optional[str], typer.Option(help="permissive (default) or strict (real API's refusals).")
    ] = None,
    api_key: Annotated[list[str], typer.Option("--api-key", help="Accepted Bearer key.")] = [],
    alias: Annotated[
        list[str], typer.Option("--alias", help="openai-name=local-model (repeatable).")
    ] = [],
    public_base_url: Annotated[Optional[str], typer.Option(help="Base of `url` responses.")] = None,
    max_batch: Annotated[Optional[int], typer.Option(help="Samples per denoising step.")] = None,
    max_queue: Annotated[Optional[int], typer.Option(help="Images waiting before 429.")] = None,
    batching: Annotated[
        Optional[bool], typer.Option("--batching/--no-batching", help="Step-level batching.")
    ] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch threads (default: all).")] = None,
    precision: Annotated[
        Optional[str], typer.Option(help="auto (bf16 where the CPU has native bf16), fp32 or bf16.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Serve the OpenAI Images API (the embedded model when no --model is given)."""
    aliases = dict(a.split("=", 1) for a in alias)
    settings = build_settings(
        model, config, host=host, port=port, compat=compat, api_keys=api_key or None,
        aliases=aliases or None, public_base_url=public_base_url, max_batch=max_batch,
        max_queue=max_queue, batching=batching, torch_threads=threads, precision=precision,
    )
    import uvicorn

    from canvasd.api.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level)


@app.command()
def generate(
    prompt: str,
    output: Annotated[Path, typer.Option("--output", "-o", help="Image file to write.")] = Path(
        "image.png"
    ),
    model: ModelOpt = [],
    config: ConfigOpt = None,
    size: str = "1024x1024",
    quality: str = "medium",
    seed: int = 0,
    n: int = 1,
    background: str = "transparent",
) -> None:
    """Generate images locally without a server (writes OUTPUT, or OUTPUT-i for n>1)."""
    from canvasd.contracts import Job
    from canvasd.media.encode import encode_image
    from canvasd.media.resize import fit_image
    from canvasd.registry import ModelRegistry

    settings = build_settings(model, config)
    registry = ModelRegistry(settings)
    model_id = settings.default_model
    backend = registry.get(model_id)
    backend.load()
    caps = backend.capabilities
    width, height = (int(v) for v in size.lower().split("x"))
    gen_w, gen_h = caps.native_size if caps.upscales else (width, height)
    job = Job(
        kind="generate", model=model_id, prompt=prompt, n=n, width=gen_w, height=gen_h,
        steps=caps.quality_steps[quality], guidance_scale=caps.default_guidance, seed=seed,
    )
    images = backend.run(job, lambda *_: True)
    fmt = output.suffix.lstrip(".").lower().replace("jpg", "jpeg") or "png"
    for i, img in enumerate(images):
        path = output if n == 1 else output.with_stem(f"{output.stem}-{i}")
        data = encode_image(fit_image(img, width, height), fmt, None, background == "transparent")
        path.write_bytes(data)
        typer.echo(str(path))


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASSTHROUGH)
def train(
    ctx: typer.Context,
    build_data: Annotated[
        bool, typer.Option("--build-data", help="Only build the emoji dataset (cached) and exit.")
    ] = False,
    data_dir: Annotated[Path, typer.Option(help="Dataset folder.")] = Path("data"),
) -> None:
    """Train the embedded model (resumes from runs/<name>/ckpt.pt). `canvasd train --help` for all
    options; the dataset is built first when missing."""
    from canvasd.training.data import build_dataset

    if "--help" in ctx.args or "-h" in ctx.args:
        from canvasd.training import train as train_mod

        train_mod.main(["--help"])
    path = build_dataset(data_dir)
    typer.echo(f"dataset: {path}")
    if build_data:
        return
    from canvasd.training import train as train_mod

    train_mod.main(["--data-dir", str(data_dir), *ctx.args])


@app.command(name="eval", context_settings=_PASSTHROUGH)
def evaluate(ctx: typer.Context) -> None:
    """Evaluate the embedded model: concept accuracy, diversity, contact sheet, speed.
    `canvasd eval --help` for options."""
    from canvasd.training import eval as eval_mod

    eval_mod.main(list(ctx.args))


@app.command()
def bench(
    model: Annotated[
        Optional[str], typer.Option(help="name=/path (diffusers folder), 'fake', or the embedded model.")
    ] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated levels.")] = "1,2,4,8,16",
    requests: Annotated[Optional[int], typer.Option(help="Requests per level and round.")] = None,
    rounds: Annotated[int, typer.Option(help="Rounds per level, interleaved across scenarios and pooled.")] = 1,
    scenarios: Annotated[str, typer.Option(help="Subset of engine,http,http-serial.")] = "",
    stream: Annotated[str, typer.Option(help="off | on | both")] = "both",
    partial_images: int = 2,
    size: str = "1024x1024",
    quality: str = "low",
    mixed: Annotated[bool, typer.Option(help="Cycle sizes x qualities.")] = False,
    max_batch: Optional[int] = None,
    threads: Optional[int] = None,
    precision: Annotated[str, typer.Option(help="Denoiser precision: auto, fp32 or bf16.")] = "auto",
    quick: Annotated[bool, typer.Option(help="Concurrency 1,4; few requests.")] = False,
    out_dir: Path = Path("benchmarks/results"),
) -> None:
    """Benchmark side by side: raw engine, HTTP with batching, HTTP serial (the peers' design)."""
    from canvasd.bench import BenchConfig, run_bench

    overrides = dict(
        model=model, concurrency=tuple(int(c) for c in concurrency.split(",")), requests=requests, rounds=rounds,
        stream=stream, partial_images=partial_images, size=size, quality=quality, mixed=mixed,
        max_batch=max_batch, threads=threads, precision=precision, quick=quick, out_dir=out_dir,
    )
    if scenarios:
        overrides["scenarios"] = tuple(scenarios.split(","))
    run_bench(BenchConfig(), **overrides)


def main() -> None:  # console script entry
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
