"""What every `canvasd` command shares: one-line errors, the layered settings, optional extras."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from canvasd.settings import Settings, SettingsError, load_settings


def _click_class(name: str) -> type[BaseException]:
    # typer raises the exceptions of the click it runs on: the `click` package in older releases,
    # a vendored copy in newer ones. Both are ancestors of the public `typer.BadParameter`.
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


ClickException = _click_class("ClickException")


class CommandError(Exception):
    """A command that cannot run as asked (a missing extra, a missing dataset, a request the
    server would refuse): one line, exit code 2."""


class OneLineErrors(TyperGroup):
    """Bad input (a usage error, a `SettingsError`, a missing extra) is one line on stderr and
    exit code 2, never a traceback or a framed panel."""

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
                typer.echo(f"canvasd: error: {one_line(message)}", err=True)
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        except (SettingsError, CommandError) as exc:
            typer.echo(f"canvasd: error: {one_line(str(exc))}", err=True)
            sys.exit(2)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def one_line(message: str) -> str:
    return " ".join(message.replace("Value error, ", "").split())


def new_app(help_text: str | None, **kwargs: Any) -> typer.Typer:
    """A typer app (the root or a command group) with canvasd's conventions."""
    return typer.Typer(cls=OneLineErrors, add_completion=False, help=help_text, pretty_exceptions_enable=False,
                       rich_markup_mode=None, **kwargs)


ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", help="TOML settings file (default: $CANVASD_CONFIG).")
]


def embedded_weights_dir() -> Path:
    from canvasd.backends.emoji.backend import PACKAGED_WEIGHTS

    return PACKAGED_WEIGHTS


def build_settings(config: Optional[Path], flags: dict[str, Any]) -> Settings:
    """The layered settings, refused early when the embedded model is asked for but not installed."""
    settings = load_settings(config, flags)
    embedded = [m for m in settings.models if m.backend == "emoji" and m.path is None]
    if embedded and not (embedded_weights_dir() / "config.json").exists():
        raise SettingsError(
            f"model {embedded[0].id!r}: the embedded model's weights are not in this install "
            f"({embedded_weights_dir()}); pass --model name=/path/to/diffusers-folder")
    return settings


# Optional dependencies, by the extra of pyproject.toml that installs them (import name first).
EXTRAS: dict[str, tuple[str, ...]] = {
    "bench": ("openai", "matplotlib", "psutil"),
    "train": ("cairosvg", "emoji", "matplotlib"),
    "ray": ("ray", "boto3"),
}


def require_extra(extra: str, modules: tuple[str, ...] | None = None) -> None:
    """Refuse, before any work, a command whose optional dependencies are not installed."""
    missing = [m for m in (modules or EXTRAS[extra]) if importlib.util.find_spec(m) is None]
    if missing:
        raise CommandError(f"this command needs {', '.join(missing)}: pip install 'canvasd[{extra}]'")
