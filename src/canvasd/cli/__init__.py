"""The `canvasd` command: serve | generate | train | eval | bench."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from canvasd.settings import (
    EMBEDDED_MODEL_ID, ModelSettings, Settings, SettingsError, load_settings, unknown_env_vars,
)
from canvasd.cli.options import settings_options


def _click_class(name: str) -> type[BaseException]:
    # typer raises the exceptions of the click it runs on: the `click` package in older releases,
    # a vendored copy in newer ones. Both are ancestors of the public `typer.BadParameter`.
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


ClickException = _click_class("ClickException")


class OneLineErrors(TyperGroup):
    """Bad input (a click usage error, a `SettingsError`) is one line on stderr and exit code 2,
    never a traceback or a framed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            message = exc.format_message()  # type: ignore[attr-defined]
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help text: not an error to flatten
                typer.echo(message, err=True)
            else:
                message = " ".join(message.replace("Value error, ", "").split())
                typer.echo(f"canvasd: error: {message}", err=True)
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        except SettingsError as exc:
            typer.echo(f"canvasd: error: {exc}", err=True)
            sys.exit(2)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, help=__doc__,
                  pretty_exceptions_enable=False, rich_markup_mode=None)


def embedded_weights_dir() -> Path:
    from canvasd.backends.emoji.backend import PACKAGED_WEIGHTS

    return PACKAGED_WEIGHTS


def embedded_model_available() -> bool:
    return (embedded_weights_dir() / "config.json").exists()


def build_settings(config: Optional[Path], flags: dict) -> Settings:
    """The layered settings, refused early when the embedded model is asked for but not installed."""
    settings = load_settings(config, flags)
    embedded = [m for m in settings.models if m.backend == "emoji" and m.path is None]
    if embedded and not embedded_model_available():
        raise SettingsError(
            f"model {embedded[0].id!r}: the embedded model's weights are not in this install "
            f"({embedded_weights_dir()}); pass --model name=/path/to/diffusers-folder")
    return settings


ModelOpt = Annotated[
    list[str],
    typer.Option("--model", "-m", help="name=/path[,key=value...]: a local model (repeatable)."),
]
ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", help="TOML settings file (default: $CANVASD_CONFIG).")
]


@app.command()
@settings_options
def serve(config: ConfigOpt = None, **flags) -> None:
    """Serve the OpenAI Images API (the embedded model when no --model is given).

    Every option is also the environment variable CANVASD_<NAME> and the key <name> of the TOML
    file; flags win over the environment, which wins over the file."""
    settings = build_settings(config, flags)
    import uvicorn

    from canvasd.api.app import create_app

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for warning in unknown_env_vars():
        logging.getLogger("canvasd.settings").warning(warning)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


@app.command("settings")
@settings_options
def show_settings(config: ConfigOpt = None, **flags) -> None:
    """Print the settings `canvasd serve` would run with, given the same options, file and
    environment (JSON; secrets masked), and exit."""
    from canvasd.registry import check_honoured

    settings = build_settings(config, flags)
    for model in settings.models:
        check_honoured(model)
    data = settings.model_dump(mode="json")
    data["api_keys"] = ["***"] * len(settings.api_keys)
    data["url_secret"] = None if settings.url_secret is None else "***"
    typer.echo(json.dumps(data, indent=2))
    for warning in unknown_env_vars():
        typer.echo(f"canvasd: warning: {warning}", err=True)


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

    settings = build_settings(config, {"models": [m for m in model]})
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
