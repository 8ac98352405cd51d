"""`canvasd generate`: one request, without a server, through the server's own path.

The options become a request body that `api.rules.validate` checks exactly as it checks
`POST /v1/images/generations` (so the command accepts what the server accepts, and refuses the
rest with the server's message); the job runs on the same engine, and the images are fitted and
encoded by the same `render_one`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from canvasd.cli.common import CommandError, ConfigOpt, build_settings

SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def request_body(prompt: str, output: Path, **params: Any) -> dict[str, Any]:
    """The JSON body the options stand for (only what was given, as a client would send it)."""
    output_format = SUFFIX_FORMATS.get(output.suffix.lower())
    if output_format is None:
        raise CommandError(f"--output: {output.name!r} must end in one of {', '.join(SUFFIX_FORMATS)} "
                            "(the image format is taken from it)")
    body = {"prompt": prompt, "output_format": output_format}
    body.update({k: v for k, v in params.items() if v is not None})
    return body


def output_paths(output: Path, n: int) -> list[Path]:
    return [output] if n == 1 else [output.with_stem(f"{output.stem}-{i}") for i in range(n)]


def run_request(settings: Any, body: dict[str, Any]) -> tuple[list[bytes], Any]:
    """Validate `body` as the server does, run it on the engine, render it; returns the encoded
    images and the plan's output options."""
    from canvasd.api import rules
    from canvasd.api.errors import OpenAIError
    from canvasd.api.render import Renderer
    from canvasd.backends.registry import ModelRegistry
    from canvasd.engine.events import ModelUnavailable
    from canvasd.engine.scheduler import Engine

    registry = ModelRegistry(settings)
    try:
        plan = rules.validate("generations", "json", body, registry=registry, strict=settings.compat == "strict")
    except OpenAIError as exc:  # the server's 4xx, named by the option that carries the parameter
        flag = {"model": "request-model", "output_format": "output"}.get(exc.param or "", exc.param or "")
        raise CommandError(f"--{flag.replace('_', '-')}: {exc.message}" if flag else exc.message) from None

    async def generate() -> list[bytes]:
        # The registry loads the requested model on its first job, on a thread that then exits, as
        # in the server (torch work on a thread that stays alive leaves an OpenMP team behind that
        # slows the engine's steps).
        engine = Engine(registry.backends, settings, models=registry)
        engine.start()
        try:
            images = await engine.submit(plan.job).result()
        except ModelUnavailable as exc:
            raise CommandError(str(exc)) from None
        finally:
            await engine.ashutdown(timeout_s=5.0)
        return await Renderer(settings.render_threads).all(images, plan.out)

    return asyncio.run(generate()), plan.out


def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Image file to write; its suffix (.png, .jpg, .webp) is the format. "
        "n > 1: OUTPUT-0, OUTPUT-1, ...")] = Path("image.png"),
    model: Annotated[Optional[str], typer.Option(
        "--request-model", help="The request's `model`: a local model id or an OpenAI name "
        "(default: the first model).")] = None,
    size: Annotated[Optional[str], typer.Option(help="WxH or auto, as the API takes it.")] = None,
    quality: Annotated[Optional[str], typer.Option(help="low, medium, high, auto, ... as the API takes it.")] = None,
    n: Annotated[Optional[int], typer.Option("--n", "-n", help="Number of images.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the first image (image i uses seed + i).")] = None,
    background: Annotated[Optional[str], typer.Option(help="transparent, opaque or auto.")] = None,
    output_compression: Annotated[Optional[int], typer.Option(help="0-100, for jpeg and webp.")] = None,
    num_inference_steps: Annotated[Optional[int], typer.Option(
        help="Denoising steps (default: the quality's).")] = None,
    guidance_scale: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale.")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option(help="What to steer away from.")] = None,
    config: ConfigOpt = None,
    **flags: Any,
) -> None:
    """Generate images locally without a server: the request is validated, run and encoded by the
    server's own code. Model and engine settings are those of `canvasd serve`."""
    body = request_body(prompt, output, model=model, size=size, quality=quality, n=n, seed=seed,
                        background=background, output_compression=output_compression,
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        negative_prompt=negative_prompt)
    settings = build_settings(config, flags)
    blobs, out = run_request(settings, body)
    for path, data in zip(output_paths(output, len(blobs)), blobs):
        path.write_bytes(data)
        typer.echo(f"{path} ({out.width}x{out.height} {out.output_format})")
