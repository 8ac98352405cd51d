"""JSON request bodies: parse, then refuse what Python's `json` accepts but nothing after it can use.

`json.loads` accepts two things that would otherwise surface as 500s much later:
- lone UTF-16 surrogates (``"\\ud800"``): they decode into a `str` that cannot be encoded as
  UTF-8, so the tokenizer, the access log, or the error message that echoes the value fails
  (for `user`, only after the whole image was generated);
- deep nesting: the C scanner raises `RecursionError` near the interpreter's recursion limit, and
  shallower but still deep documents make every recursive consumer (pydantic, logging) fragile.

Both are refused here with a 400, before any other work. The walk is iterative, so it cannot
itself hit the recursion limit, and it stops at the first fault.
"""

from __future__ import annotations

import json
import re
from typing import Any

from canvasd.api import errors as E

# No OpenAI image request nests deeper than 4 (edits: body -> images[] -> {image_url}); 32
# leaves room for extensions while keeping every recursive consumer far from Python's limit.
MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request's JSON object, or an OpenAIError (400) for anything else."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise E.invalid_json() from None
    if not isinstance(data, dict):
        raise E.bad_request(
            f"Invalid type for request body: expected an object, but got {E.json_type_name(data)} instead.",
            None, "invalid_type")
    check_json_value(data)
    return data


def check_json_value(data: Any) -> None:
    """Refuse lone surrogates in any key or string, and nesting deeper than MAX_DEPTH."""
    # (value, depth, top-level key naming the parameter at fault)
    stack: list[tuple[Any, int, str | None]] = [(data, 0, None)]
    while stack:
        value, depth, param = stack.pop()
        if depth > MAX_DEPTH:
            raise E.bad_request(
                f"Invalid JSON body: it is nested more than {MAX_DEPTH} levels deep.",
                _printable(param), "invalid_json")
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise _surrogate_error(param)
        elif isinstance(value, dict):
            for key, item in value.items():
                here = key if param is None else param
                if _SURROGATE.search(key):
                    raise _surrogate_error(None if param is None else param)
                stack.append((item, depth + 1, here))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, param) for item in value)


def _printable(param: str | None) -> str | None:
    return None if param is None or _SURROGATE.search(param) else param


def _surrogate_error(param: str | None) -> E.OpenAIError:
    where = f"'{param}'" if param is not None else "the request body"
    return E.bad_request(
        f"Invalid JSON body: a string in {where} contains a lone UTF-16 surrogate (an unpaired "
        "\\ud800-\\udfff escape), which is not valid Unicode.", param, "invalid_unicode")
