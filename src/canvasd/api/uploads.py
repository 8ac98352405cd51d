"""Image intake for edits and variations: multipart bodies and the JSON edit form.

Bounded memory: the multipart body is parsed as it streams in (python-multipart's push parser);
file parts are written to spooled temp files (RAM up to 1 MiB, disk beyond) and every limit is
enforced while reading — a part over `max_upload_bytes` stops being stored at the limit. The rest
of a refused body is read and discarded (up to a cap) so the client can read the 400 instead of
seeing a reset connection.

Decoding (Pillow) happens in `load_form_images` / `load_json_images`, called by the validator at
its "images" step (so the fault order holds) on a worker thread:
- mime policy: parts declared image/png, image/jpeg (image/jpg) or image/webp are accepted.
  `application/octet-stream` or no Content-Type (the Python SDK sends octet-stream for raw
  `bytes`): permissive mode sniffs the bytes (accepted when they are PNG/JPEG/WebP); strict mode
  answers the real API's `unsupported_file_mimetype` / `missing_file_mimetype`. Any other
  declared type (text/plain, image/gif, …) is refused in both modes.
- decompression bombs: the pixel count is read from the header and checked against
  `max_upload_pixels` before any pixel is decoded;
- corrupt / truncated / non-image bytes → 400 ``invalid_image_file`` naming the part;
- EXIF orientation is applied; images become RGBA.
- mask: must have an alpha channel and the first image's size; alpha 0 marks the area to repaint.
- JSON edits: ``images: [{"image_url": "data:image/png;base64,…"}]`` (+ ``mask: {image_url}``).
  ``file_id`` → 400 (no Files API here); http(s) URLs → 400: the server never fetches URLs given
  by clients (no SSRF surface) — send a data URL instead.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any, AsyncIterator

from python_multipart.multipart import MultipartParser, parse_options_header

from canvasd.api import errors as E
from canvasd.api.rules import ImageRules, InputImages

MiB = 1024 * 1024
SPOOL_BYTES = 1 * MiB  # a file part stays in RAM up to this, then spills to disk
TEXT_PART_MAX = 256 * 1024  # a text field (prompt ≤ 32000 chars fits many times over)
MAX_TEXT_PARTS = 64
MAX_FILE_PARTS = 40  # beyond the 16 images + mask + markup: refuse, do not store
DRAIN_MAX = 256 * MiB  # after a refusal, discard at most this much more before answering
JSON_BODY_MAX = 4 * MiB  # generations (no images)
DATA_URL_MAX = 20_971_520  # ImageRefParam.image_url maxLength
ALLOWED_MIMES = ("image/jpeg", "image/png", "image/webp")
MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
SNIFF_MIMES = ("application/octet-stream", "")
PIL_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
DALLE2_MAX_BYTES = 4 * MiB


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
                self._fail(E.array_too_long("image", 16, self._n_images))
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
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
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
                collector._fail(E.OpenAIError(
                    413, f"Request body too large: the limit is {total_limit // MiB} MB.",
                    code="request_too_large"))
                continue
            try:
                parser.write(chunk)
            except Exception:  # python-multipart's parse errors
                collector._fail(E.bad_request("Invalid multipart body: it could not be parsed."))
        if collector.error is None:
            try:
                parser.finalize()
            except Exception:
                collector._fail(E.bad_request("Invalid multipart body: it could not be parsed."))
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
        raise E.OpenAIError(413, f"Request body too large: the limit is {limit // MiB} MB.",
                            code="request_too_large")
    return bytes(buf)


# --- decoding ----------------------------------------------------------------------------------

def _normalise_mime(mime: str | None) -> str | None:
    if mime is None:
        return None
    m = mime.split(";", 1)[0].strip().lower()
    return MIME_ALIASES.get(m, m)


def decode_image(
    data: IO[bytes] | bytes,
    param: str,
    declared_mime: str | None,
    rules: ImageRules,
    *,
    size: int,
) -> tuple[Any, str]:
    """(RGBA-able PIL image with EXIF orientation applied, detected mime) or an OpenAIError.

    The returned image keeps its original mode so callers can check for alpha."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    allowed = ("image/png",) if rules.dalle2 else ALLOWED_MIMES
    mime = _normalise_mime(declared_mime)
    if mime in allowed:
        pass
    elif mime is None or mime == "":
        if rules.strict:
            raise E.missing_mimetype(param)
    elif mime in SNIFF_MIMES:
        if rules.strict:
            raise E.unsupported_mimetype(param, mime, allowed)
    else:
        raise E.unsupported_mimetype(param, mime, allowed)

    if rules.dalle2 and size >= DALLE2_MAX_BYTES:
        raise E.bad_request("Uploaded image must be a PNG and less than 4 MB.", param, "invalid_image_file")
    if size > rules.max_bytes:
        raise E.bad_request(f"Invalid file '{param}': the file is larger than the "
                            f"{rules.max_bytes // MiB} MB limit.", param, "file_too_large")
    if size == 0:
        raise E.invalid_image_file(param, "the file is empty.")

    fp = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    fp.seek(0)
    try:
        img = Image.open(fp, formats=list(PIL_FORMATS))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise E.invalid_image_file(param, "the file is not a valid PNG, JPEG or WebP image.") from None
    except Image.DecompressionBombError:
        raise _too_many_pixels(param, None, rules.max_pixels) from None
    w, h = img.size
    if w * h > rules.max_pixels:
        raise _too_many_pixels(param, (w, h), rules.max_pixels)
    detected = PIL_FORMATS.get(img.format or "", "")
    if rules.dalle2 and detected != "image/png":
        raise E.bad_request("Uploaded image must be a PNG and less than 4 MB.", param, "invalid_image_file")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError:
        raise _too_many_pixels(param, (w, h), rules.max_pixels) from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise E.invalid_image_file(param, "the image data is truncated or corrupt.") from None
    return img, detected


def _too_many_pixels(param: str, wh: tuple[int, int] | None, max_pixels: int) -> E.OpenAIError:
    dims = f"{wh[0]}x{wh[1]} " if wh else ""
    return E.bad_request(
        f"Invalid image file '{param}': the image {dims}has more than the {max_pixels} pixels this "
        "server accepts.", param, "image_too_large")


def has_alpha(img: Any) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info)


def _to_rgba(img: Any) -> Any:
    return img if img.mode == "RGBA" else img.convert("RGBA")


def _finish(images: list[tuple[Any, str]], mask: tuple[Any, str] | None, rules: ImageRules,
            image_params: list[str], mask_param: str) -> InputImages:
    """Profile rules that need every decoded image (square dall-e-2 inputs, mask size/alpha)."""
    if rules.dalle2:
        first = images[0][0]
        if first.size[0] != first.size[1]:
            raise E.bad_request("Uploaded image must be square.", image_params[0], "invalid_image_file")
        if mask is None and rules.endpoint == "edits" and not (first.mode in ("RGBA", "LA", "L") or has_alpha(first)):
            raise E.bad_request(
                f"Invalid input image - format must be in ['RGBA', 'LA', 'L'], got {first.mode}.",
                image_params[0], "invalid_image_format")
    out_mask = None
    if mask is not None:
        m = mask[0]
        if not has_alpha(m):
            raise E.bad_request(
                "Invalid mask image: the mask must have an alpha channel (e.g. an RGBA PNG); fully "
                "transparent pixels (alpha 0) mark the area to edit.", mask_param, "invalid_mask_image")
        if m.size != images[0][0].size:
            w, h = images[0][0].size
            raise E.bad_request(
                f"Invalid mask image: the mask must be the same size as the image ({w}x{h}), "
                f"got {m.size[0]}x{m.size[1]}.", mask_param, "invalid_mask_image")
        out_mask = _to_rgba(m)
    return InputImages(images=[_to_rgba(im) for im, _ in images], mask=out_mask)


def _check_count(count: int, rules: ImageRules, param: str) -> None:
    if count > 16:
        raise E.array_too_long(param, 16, count)
    if count > rules.max_images:
        if rules.max_images == 1:
            raise E.array_too_long(param, 1, count)
        raise E.bad_request(
            f"Invalid '{param}': this model accepts at most {rules.max_images} input images, got {count}.",
            param, "array_above_max_length")


def load_form_images(body: FormBody, rules: ImageRules) -> InputImages:
    """The multipart `image` / `image[]` / `mask` parts, checked and decoded."""
    single = rules.endpoint == "variations"
    expected = "a file" if single else "one of an array of files or file"
    value = body.fields.get("image")
    if value is None:
        raise E.missing_required("image")
    if isinstance(value, UploadedFile):
        files, params = [value], ["image"]
    elif isinstance(value, list) and value and all(isinstance(v, UploadedFile) for v in value):
        if rules.dalle2 and body.image_is_array:
            raise E.invalid_type("image", "a file", [])
        files = value
        params = [f"image[{i}]" for i in range(len(files))]
        _check_count(len(files), rules, "image")
    else:
        raise E.invalid_type("image", expected, value if not isinstance(value, list) else [])
    if "markup" in body.fields:
        raise E.bad_request("Invalid 'markup': markup images are not supported by this server.",
                            "markup", "unsupported_parameter")
    decoded = [decode_image(f.file, p, f.content_type, rules, size=f.size) for f, p in zip(files, params)]
    mask_value = body.fields.get("mask")
    mask = None
    if mask_value is not None:
        if not isinstance(mask_value, UploadedFile):
            raise E.invalid_type("mask", "a file", mask_value if not isinstance(mask_value, list) else [])
        mask = decode_image(mask_value.file, "mask", mask_value.content_type, rules, size=mask_value.size)
    return _finish(decoded, mask, rules, params, "mask")


_DATA_URL_RE = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),", re.IGNORECASE)


def _decode_ref(ref: Any, param: str, rules: ImageRules) -> tuple[Any, str]:
    """One ImageRefParam object: {"image_url": "data:…"} (or an unsupported file_id)."""
    if not isinstance(ref, dict):
        raise E.invalid_type(param, "an object", ref)
    for key in ref:
        if key not in ("image_url", "file_id"):
            raise E.unknown_parameter(f"{param}.{key}")
    url, file_id = ref.get("image_url"), ref.get("file_id")
    if (url is None) == (file_id is None):
        raise E.bad_request(f"Invalid '{param}': expected exactly one of 'image_url' or 'file_id'.",
                            param, "invalid_value")
    if file_id is not None:
        raise E.bad_request(
            f"Invalid '{param}.file_id': this server has no Files API, so file ids cannot be used. "
            "Send the image inline as a base64 data URL in 'image_url' (data:image/png;base64,…).",
            f"{param}.file_id", "unsupported_parameter")
    uparam = f"{param}.image_url"
    if not isinstance(url, str):
        raise E.invalid_type(uparam, "a string", url)
    if len(url) > DATA_URL_MAX:
        raise E.string_too_long(uparam, DATA_URL_MAX, len(url))
    if url.lower().startswith(("http://", "https://")):
        raise E.bad_request(
            f"Invalid '{uparam}': this server does not download images from URLs. Send the image "
            "inline as a base64 data URL (data:image/png;base64,…) or use a multipart upload.",
            uparam, "unsupported_image_url")
    m = _DATA_URL_RE.match(url)
    if not m or "base64" not in m.group(2).lower():
        raise E.bad_request(
            f"Invalid '{uparam}': expected a base64 data URL such as 'data:image/png;base64,…'.",
            uparam, "invalid_image_url")
    payload = re.sub(r"\s+", "", url[m.end():])
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise E.bad_request(f"Invalid '{uparam}': the base64 data could not be decoded.",
                            uparam, "invalid_image_url") from None
    return decode_image(data, uparam, m.group(1) or None, rules, size=len(data))


def load_json_images(raw: dict[str, Any], rules: ImageRules) -> InputImages:
    """The JSON edit form's `images` (+ `mask`)."""
    if "images" not in raw:
        raise E.missing_required("images")
    images = raw["images"]
    if not isinstance(images, list):
        raise E.invalid_type("images", "an array of objects", images)
    if not images:
        raise E.empty_array("images")
    _check_count(len(images), rules, "images")
    params = [f"images[{i}]" for i in range(len(images))]
    decoded = [_decode_ref(ref, p, rules) for ref, p in zip(images, params)]
    mask = None
    if raw.get("mask") is not None:
        mask = _decode_ref(raw["mask"], "mask", rules)
    return _finish(decoded, mask, rules, [f"{p}.image_url" for p in params], "mask.image_url")
