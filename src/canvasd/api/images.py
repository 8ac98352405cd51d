"""Upload decoding policy for edits and variations: mime, size and pixel budgets, alpha, EXIF.

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
from typing import IO, Any

from canvasd.api import errors as E
from canvasd.api.jsonstream import DataURLFile
from canvasd.api.multipart import MiB, FormBody, UploadedFile
from canvasd.api.rules import ImageRules, InputImages
from canvasd.contracts import MAX_INPUT_IMAGES
from canvasd.media.encode import has_alpha

DATA_URL_MAX = 20_971_520  # ImageRefParam.image_url maxLength
ALLOWED_MIMES = ("image/jpeg", "image/png", "image/webp")
# image/mpo: phones' multi-picture JPEGs (a JPEG whose first frame is the picture)
MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png",
                "image/mpo": "image/jpeg"}
SNIFF_MIMES = ("application/octet-stream", "")
PIL_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# Pillow's JPEG opener hands multi-picture files back as format "MPO"
DETECTED_MIMES = {**PIL_FORMATS, "MPO": "image/jpeg"}
DALLE2_MAX_BYTES = 4 * MiB
# Longest side over shortest side of an upload: a 1x16,777,216 PNG passes the pixel guard but
# decodes, transposes and fits through buffers sized by its long side; real photos and panoramas
# stay far below this.
MAX_ASPECT_RATIO = 64


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
    if max(w, h) > MAX_ASPECT_RATIO * max(1, min(w, h)):
        raise E.bad_request(
            f"Invalid image file '{param}': its aspect ratio ({w}x{h}) is more extreme than 1:"
            f"{MAX_ASPECT_RATIO}.", param, "invalid_image_dimensions")
    # the request's budget is spent from the headers, before any pixel is decoded
    if rules.pixels_spent + w * h > rules.max_request_pixels:
        raise E.bad_request(
            f"Invalid image file '{param}': the request's images have more than the "
            f"{rules.max_request_pixels} pixels in total this server decodes for one request.",
            param, "request_too_many_pixels")
    rules.pixels_spent += w * h
    detected = DETECTED_MIMES.get(img.format or "", "")
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
    # convert one by one, dropping each original as its RGBA copy is made (the caller's list is
    # this list): at most one image exists twice at a time
    rgba = []
    while images:
        im, _ = images.pop(0)
        rgba.append(_to_rgba(im))
    return InputImages(images=rgba, mask=out_mask)


def _check_count(count: int, rules: ImageRules, param: str) -> None:
    if count > MAX_INPUT_IMAGES:
        raise E.array_too_long(param, MAX_INPUT_IMAGES, count)
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
    if isinstance(url, DataURLFile):  # decoded while the body was parsed (jsonstream)
        if url.length > DATA_URL_MAX:
            raise E.string_too_long(uparam, DATA_URL_MAX, url.length)
        return decode_image(url.file, uparam, url.mime, rules, size=url.size)
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
