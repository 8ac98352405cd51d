"""Streaming multipart reader with limits (and the bounded whole-body reader for JSON).

Bounded memory: the multipart body is parsed as it streams in (python-multipart's push parser);
file parts are written to spooled temp files (RAM up to 1 MiB, disk beyond) and every limit is
enforced while reading — a part over `max_upload_bytes` stops being stored at the limit. The rest
of a refused body is read and discarded (up to a cap) so the client can read the 400 instead of
seeing a reset connection. Nothing here decodes images: that policy is `api/images.py`.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any, AsyncIterator

from python_multipart.multipart import MultipartParser, parse_options_header

from canvasd.api import errors as E
from canvasd.contracts import MAX_INPUT_IMAGES

MiB = 1024 * 1024
SPOOL_BYTES = 1 * MiB  # a file part stays in RAM up to this, then spills to disk
TEXT_PART_MAX = 256 * 1024  # a text field (prompt ≤ 32000 chars fits many times over)
MAX_TEXT_PARTS = 64
MAX_FILE_PARTS = 40  # well beyond MAX_INPUT_IMAGES + mask + markup: refuse, do not store
DRAIN_MAX = 256 * MiB  # after a refusal, discard at most this much more before answering
JSON_BODY_MAX = 4 * MiB  # generations (no images)


def total_body_limit(max_upload_bytes: int) -> int:
    """Whole multipart body: two full-size files' worth (documented; one image is the common case)."""
    return 2 * max_upload_bytes + MiB


@dataclass
class UploadedFile:
    name: str  # the part's field name as sent: image, image[], mask, …
    filename: str | None
    content_type: str | None  # None: the part had no Content-Type header
    file: IO[bytes]
    size: int = 0
    truncated: bool = False  # stopped storing at the size limit

    def read(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    def close(self) -> None:
        self.file.close()


@dataclass
class FormBody:
    """Parsed multipart body. `fields` maps top-level names to str, nested dicts (svg[model]),
    lists (key[]) or UploadedFile / list[UploadedFile] (image, image[]), in arrival order."""

    fields: dict[str, Any] = field(default_factory=dict)
    image_is_array: bool = False
    files: list[UploadedFile] = field(default_factory=list)

    def close(self) -> None:
        for f in self.files:
            f.close()


_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


def _split_key(key: str) -> tuple[str, list[str]]:
    m = _KEY_RE.match(key)
    if not m:
        return key, []
    return m.group(1), re.findall(r"\[([^\[\]]*)\]", m.group(2))


class _FormCollector:
    """python-multipart callbacks that build a FormBody and enforce the limits as bytes arrive."""

    def __init__(self, max_file_bytes: int):
        self.body = FormBody()
        self.max_file_bytes = max_file_bytes
        self.error: E.OpenAIError | None = None
        self._hname = b""
        self._hvalue = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._file: UploadedFile | None = None
        self._text: bytearray | None = None
        self._discard = False
        self._n_text = 0
        self._n_files = 0
        self._n_images = 0

    # header callbacks
    def on_part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._file = None
        self._text = None
        self._discard = self.error is not None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._hname.strip().lower()] = self._hvalue.strip()
        self._hname = b""
        self._hvalue = b""

    def on_headers_finished(self) -> None:
        if self._discard:
            return
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in opts:
            self._fail(E.bad_request("Invalid multipart body: a part has no name."))
            return
        self._name = opts[b"name"].decode("utf-8", "replace")
        if b"filename" in opts:
            self._n_files += 1
            base, _ = _split_key(self._name)
            if base == "image":
                self._n_images += 1
            if self._n_files > MAX_FILE_PARTS:
                self._fail(E.array_too_long("image", MAX_INPUT_IMAGES, self._n_images))
                return
            ctype = self._headers.get(b"content-type")
            self._file = UploadedFile(
                name=self._name,
                filename=opts[b"filename"].decode("utf-8", "replace"),
                content_type=ctype.decode("latin-1").strip() if ctype is not None else None,
                file=tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES),
            )
            self.body.files.append(self._file)
        else:
            self._n_text += 1
            if self._n_text > MAX_TEXT_PARTS:
                self._fail(E.bad_request(f"Too many form fields (more than {MAX_TEXT_PARTS})."))
                return
            self._text = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._discard:
            return
        chunk = data[start:end]
        if self._file is not None:
            if self._file.size + len(chunk) > self.max_file_bytes:
                self._file.truncated = True
                self._fail(E.bad_request(
                    f"Invalid file '{self._param_name()}': the file is larger than the "
                    f"{self.max_file_bytes // MiB} MB limit.", self._param_name(), "file_too_large"))
                return
            self._file.file.write(chunk)
            self._file.size += len(chunk)
        elif self._text is not None:
            if len(self._text) + len(chunk) > TEXT_PART_MAX:
                self._fail(E.bad_request(
                    f"Invalid '{self._name}': form field larger than {TEXT_PART_MAX // 1024} KB.",
                    self._name))
                return
            self._text.extend(chunk)

    def on_part_end(self) -> None:
        if self._discard or self._name is None:
            return
        if self._file is not None:
            self._add(self._name, self._file)
        elif self._text is not None:
            self._add(self._name, self._text.decode("utf-8", "replace"))

    def _param_name(self) -> str:
        base, _ = _split_key(self._name or "image")
        if base == "image" and (self._n_images > 1 or (self._name or "").endswith("[]")):
            return f"image[{self._n_images - 1}]"
        return base

    def _fail(self, err: E.OpenAIError) -> None:
        if self.error is None:
            self.error = err
        self._discard = True

    def _add(self, key: str, value: Any) -> None:
        fields = self.body.fields
        base, path = _split_key(key)
        if base == "image" and isinstance(value, UploadedFile):
            current = fields.get("image")
            if path == [""] or isinstance(current, (list, UploadedFile)):
                self.body.image_is_array = True
                prev = current if isinstance(current, list) else ([current] if current is not None else [])
                fields["image"] = prev + [value]
            else:
                fields["image"] = value
            return
        if not path:
            if base in fields:  # repeated scalar: keep all, the validator reports the array
                prev = fields[base]
                fields[base] = (prev if isinstance(prev, list) else [prev]) + [value]
            else:
                fields[base] = value
            return
        if path == [""]:
            prev = fields.get(base)
            fields[base] = (prev if isinstance(prev, list) else []) + [value]
            return
        node = fields.setdefault(base, {})
        if not isinstance(node, dict):
            return  # `svg` given both as a scalar and nested: the scalar wins, type error later
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                return
            node = nxt
        node[path[-1]] = value


async def read_multipart(
    content_type: str, stream: AsyncIterator[bytes], max_file_bytes: int
) -> FormBody:
    """Parse a multipart body from `stream`; raises OpenAIError (after draining) on any limit."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise E.bad_request("Invalid multipart body: the Content-Type header has no boundary.")
    collector = _FormCollector(max_file_bytes)
    callbacks = {name: getattr(collector, name) for name in (
        "on_part_begin", "on_part_data", "on_part_end", "on_header_field", "on_header_value",
        "on_header_end", "on_headers_finished")}
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    except Exception:  # python-multipart refuses boundaries over 256 bytes (RFC 2046: 70)
        raise E.bad_request("Invalid multipart body: the boundary in the Content-Type header is "
                            "invalid (at most 256 characters).") from None
    total_limit = total_body_limit(max_file_bytes)
    received = 0
    drained = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if collector.error is not None:
                drained += len(chunk)
                if drained > DRAIN_MAX:
                    break
                continue
            if received > total_limit:
                collector._fail(E.request_too_large(total_limit))
                continue
            try:
                parser.write(chunk)
            except Exception:  # python-multipart's parse errors
                collector._fail(E.invalid_multipart())
        if collector.error is None:
            try:
                parser.finalize()
            except Exception:
                collector._fail(E.invalid_multipart())
    except BaseException:
        collector.body.close()
        raise
    if collector.error is not None:
        collector.body.close()
        raise collector.error
    return collector.body


async def read_limited(stream: AsyncIterator[bytes], limit: int) -> bytes:
    """A whole (JSON) body, refusing beyond `limit` bytes (the rest is discarded, capped)."""
    buf = bytearray()
    over = False
    drained = 0
    async for chunk in stream:
        if over:
            drained += len(chunk)
            if drained > DRAIN_MAX:
                break
            continue
        if len(buf) + len(chunk) > limit:
            over = True
            buf = bytearray()
            continue
        buf.extend(chunk)
    if over:
        raise E.request_too_large(limit)
    return bytes(buf)
