"""`canvasd serve` and `canvasd settings`: their options are the settings schema's fields."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import typer

from canvasd.cli.common import ConfigOpt, build_settings, require_extra
from canvasd.cli.options import settings_options
from canvasd.settings import unknown_env_vars


@settings_options()
def serve(config: ConfigOpt = None, **flags: Any) -> None:
    """Serve the OpenAI Images API (the embedded model when no --model is given).

    Every option is also the environment variable CANVASD_<NAME> and the key <name> of the TOML
    file; flags win over the environment, which wins over the file.

    With --replicas or --ray-address (or RAY_ADDRESS): through Ray Serve, the same API in front and
    engine replicas behind it (docs/scale-out.md)."""
    settings = build_settings(config, flags)
    from canvasd.registry import check_honoured, check_single_process

    for model in settings.models:
        check_honoured(model)
    if settings.scale_out or os.environ.get("RAY_ADDRESS"):  # Ray's own variable names a cluster too
        require_extra("ray")
        from canvasd.serve.ray import serve_forever

        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
        serve_forever(settings)
        return
    check_single_process(settings)
    from canvasd.server import serve as run_server

    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()  # trace: uvicorn's own
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for warning in unknown_env_vars():
        logging.getLogger("canvasd.settings").warning(warning)
    run_server(settings, log_level=settings.log_level)


@settings_options()
def show_settings(config: ConfigOpt = None, **flags: Any) -> None:
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
