"""JSON edit bodies without holding them whole: the body is spooled as it arrives, then parsed
event by event (ijson), and each `images[].image_url` / `mask.image_url` data URL is
base64-decoded into its own spooled file as soon as the parser hands it over.

A 100 MB body of data URLs used to live in memory three times at once (the bytes, the parsed
strings, the decoded images); here at most one data URL string (≤ 20 MB, the spec's limit) and a
decoding chunk are in memory, the rest is on disk past `SPOOL_BYTES`. Everything else in the body
becomes an ordinary dict, checked like any JSON body (`jsonbody.check_json_value`): lone
surrogates and deep nesting are 400s. ijson's pure-Python backend is used on purpose: it keeps
lone surrogates (the C backend turns them into '?', silently changing the request).
"""

from __future__ import annotations

import base64
import binascii
import re
import tempfile
from dataclasses import dataclass
from typing import IO, Any, AsyncIterator

import ijson

from canvasd.api import errors as E
from canvasd.api.jsonbody import MAX_DEPTH, check_json_value
from canvasd.api.multipart import DRAIN_MAX, MiB, SPOOL_BYTES

_backend = ijson.get_backend("python")
_DATA_URL_RE = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),", re.IGNORECASE)
_B64_CHUNK = 4 * MiB  # characters per decoding step (a multiple of 4)


@dataclass
class DataURLFile:
    """A data URL's decoded bytes, spooled; stands where the string was in the parsed body."""

    mime: str | None  # as declared in the URL (data:<mime>;base64,…), None when empty
    file: IO[bytes]
    size: int
    length: int  # characters of the original URL (for the spec's maxLength check)

    def close(self) -> None:
        self.file.close()


async def spool_body(stream: AsyncIterator[bytes], limit: int) -> IO[bytes]:
    """The whole body in a spooled temp file (RAM up to SPOOL_BYTES), refusing beyond `limit`."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    size = drained = 0
    over = False
    try:
        async for chunk in stream:
            if over:
                drained += len(chunk)
                if drained > DRAIN_MAX:
                    break
                continue
            size += len(chunk)
            if size > limit:
                over = True
                continue
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    if over:
        spool.close()
        raise E.OpenAIError(413, f"Request body too large: the limit is {limit // MiB} MB.",
                            code="request_too_large")
    spool.seek(0)
    return spool


def _decode_data_url(url: str) -> DataURLFile | None:
    """Decode a base64 data URL into a spooled file; None when it is not one (the validator then
    reports the string with its usual errors)."""
    m = _DATA_URL_RE.match(url)
    if not m or "base64" not in m.group(2).lower():
        return None
    payload = re.sub(r"\s+", "", url[m.end():])
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    size = 0
    try:
        for start in range(0, len(payload), _B64_CHUNK):
            piece = base64.b64decode(payload[start:start + _B64_CHUNK], validate=True)
            out.write(piece)
            size += len(piece)
    except (binascii.Error, ValueError):
        out.close()
        return None
    out.seek(0)
    return DataURLFile(m.group(1) or None, out, size, len(url))


def parse_json_edit(body: IO[bytes]) -> tuple[dict[str, Any], list[DataURLFile]]:
    """The body as a dict whose data URLs are DataURLFile objects (caller closes them)."""
    files: list[DataURLFile] = []
    root: list[Any] = []
    stack: list[Any] = []  # containers being built
    keys: list[str | None] = []  # pending key per open map
    try:
        # basic_parse: no dotted prefixes (building them costs O(depth) per event, which made a
        # deeply nested body quadratic); the path is kept here, and depth is refused early
        for event, value in _backend.basic_parse(body, use_float=True):
            if event in ("start_map", "start_array"):
                if len(stack) >= MAX_DEPTH + 1:
                    raise E.bad_request(f"Invalid JSON body: it is nested more than {MAX_DEPTH} levels deep.",
                                        None, "invalid_json")
                container: Any = {} if event == "start_map" else []
                _attach(root, stack, keys, container)
                stack.append(container)
                keys.append(None)
            elif event in ("end_map", "end_array"):
                stack.pop()
                keys.pop()
            elif event == "map_key":
                keys[-1] = value
            else:
                if event == "string" and _is_image_url(stack, keys):
                    spooled = _decode_data_url(value)
                    if spooled is not None:
                        files.append(spooled)
                        value = spooled
                _attach(root, stack, keys, value)
    except E.OpenAIError:
        _close(files)
        raise
    except (ijson.JSONError, ijson.IncompleteJSONError, ValueError, UnicodeDecodeError, RecursionError):
        _close(files)
        raise E.invalid_json() from None
    if not root or not isinstance(root[0], dict):
        _close(files)
        got = E.json_type_name(root[0]) if root else "nothing"
        raise E.bad_request(f"Invalid type for request body: expected an object, but got {got} instead.",
                            None, "invalid_type")
    try:
        check_json_value(root[0])
    except E.OpenAIError:
        _close(files)
        raise
    return root[0], files


def _is_image_url(stack: list[Any], keys: list[str | None]) -> bool:
    """At images[i].image_url or mask.image_url of the top-level object."""
    if len(stack) == 3:  # root map -> images array -> ref map
        return (keys[0] == "images" and isinstance(stack[1], list) and isinstance(stack[2], dict)
                and keys[2] == "image_url")
    if len(stack) == 2:  # root map -> mask map
        return keys[0] == "mask" and isinstance(stack[1], dict) and keys[1] == "image_url"
    return False


def _attach(root: list[Any], stack: list[Any], keys: list[str | None], value: Any) -> None:
    if not stack:
        root.append(value)
    elif isinstance(stack[-1], dict):
        stack[-1][keys[-1]] = value
    else:
        stack[-1].append(value)


def _close(files: list[DataURLFile]) -> None:
    for f in files:
        f.close()
