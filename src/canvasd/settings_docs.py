"""The settings tables of docs/configuration.md, rendered from `canvasd.settings`.

`python -m canvasd.settings_docs` rewrites the tables in place (between the marker comments);
a test checks that the file holds exactly what this renders, so the docs cannot drift from the
schema.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from canvasd.registry import HONOURED_BY, NOT_YET_HONOURED
from canvasd.settings import ModelSettings, Settings, env_name, flag_name

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"  # in a source checkout
MARKERS = {
    "server": ("<!-- settings:server:begin -->", "<!-- settings:server:end -->"),
    "model": ("<!-- settings:model:begin -->", "<!-- settings:model:end -->"),
}


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):  # X | None: "none" shows in the default column
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is Literal:
        return " \\| ".join(str(a) for a in args)
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return "list of tables"
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|")


def _default(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    if name == "models":
        return "the embedded model"
    value = info.get_default(call_default_factory=True)
    return "none" if value is None or value in ([], {}) else f"`{value}`"


def server_table() -> str:
    rows = ["| TOML key | flag | environment | type | default | meaning |", "|---|---|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        flag = flag_name(name)
        if info.annotation is bool:
            flag += f"`, `--no-{flag[2:]}"
        rows.append(f"| `{name}` | `{flag}` | `{env_name(name)}` | {_type_name(info.annotation)} "
                    f"| {_default(Settings, name)} | {_cell(info.description)} |")
    return "\n".join(rows)


def model_table() -> str:
    rows = ["| key | type | default | meaning | accepted values |", "|---|---|---|---|---|"]
    for name, info in ModelSettings.model_fields.items():
        default = "required" if info.is_required() else _default(ModelSettings, name)
        allowed = NOT_YET_HONOURED.get(name)
        accepted = "any" if allowed is None else ", ".join("none" if a is None else f"`{a}`" for a in allowed)
        if allowed is not None and (by := sorted(b for b, fields in HONOURED_BY.items() if name in fields)):
            accepted = f"any on {', '.join(by)}; else {accepted}"
        rows.append(f"| `{name}` | {_type_name(info.annotation)} | {default} | {_cell(info.description)} | {accepted} |")
    return "\n".join(rows)


def render(doc: str) -> str:
    """`doc` with its marked tables replaced by the current ones."""
    for key, table in (("server", server_table()), ("model", model_table())):
        begin, end = MARKERS[key]
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        if not pattern.search(doc):
            raise ValueError(f"{DOC}: markers {begin} ... {end} not found")
        doc = pattern.sub(lambda _: f"{begin}\n{table}\n{end}", doc)
    return doc


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
    sys.stdout.write(f"updated {DOC}\n")
