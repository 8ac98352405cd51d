"""`canvasd serve`'s options, generated from the fields of `canvasd.settings.Settings`.

Each field becomes one option: `--<name>` (underscores as dashes), `--<name>/--no-<name>` for a
boolean, the singular repeatable flag a list or table field declares (`--api-key`, `--model`,
`--alias`), and a choice list for a `Literal`. Its help text is the field's description. An option
left out is None, so the environment and the TOML file below it keep their say.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union, get_args, get_origin

import typer

from canvasd.settings import Settings, env_name, flag_name, flag_of

F = TypeVar("F", bound=Callable[..., Any])


def _scalar(annotation: Any) -> Any:
    """The type typer builds the option from (a `Literal` becomes a choice)."""
    if get_origin(annotation) in (Union, types.UnionType):  # X | None: the option is optional anyway
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal or annotation in (str, int, float, bool, Path):
        return annotation
    raise TypeError(f"no CLI option type for {annotation!r}")


def _option(field: str) -> inspect.Parameter:
    info = Settings.model_fields[field]
    default = info.get_default(call_default_factory=True)
    flag = flag_of(field)
    shown = "" if default is None or isinstance(default, (list, dict)) else f"default {default}; "
    help_text = f"{info.description}{' Repeatable.' if flag else ''} ({shown}env {env_name(field)})"
    if flag:
        names = [flag.name] + ([flag.short] if flag.short else [])
        annotation: Any = Annotated[Optional[list[str]], typer.Option(
            *names, metavar=flag.item, help=help_text, show_default=False)]
    else:
        py_type = _scalar(info.annotation)
        name = flag_name(field)
        names = [f"{name}/--no-{name[2:]}"] if py_type is bool else [name]
        annotation = Annotated[Optional[py_type], typer.Option(*names, help=help_text, show_default=False)]
    return inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def settings_options(*fields: str) -> Callable[[F], F]:
    """Give `command(**flags)` one option per setting (all, or `fields`); it receives them as
    field-name keywords."""
    unknown = set(fields) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"not settings: {sorted(unknown)}")

    def add_options(command: F) -> F:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        params = own + [_option(field) for field in (fields or Settings.model_fields)]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return add_options
