"""Encode a PIL image as the bytes of an OpenAI `output_format`: png, jpeg or webp.

`output_compression` (0-100, default 100) follows OpenAI: 100 is the best quality / least
compression. The mapping, chosen for speed on a shared CPU (timings for 1024x1024 in the media
report / tests):

- jpeg: Pillow ``quality = max(compression, 1)``; at quality >= 90 chroma is kept at full
  resolution (4:4:4) so the crisp coloured edges of emoji art don't bleed; below 90, libjpeg's
  usual 4:2:0. Huffman tables are optimised (~10 % smaller, a few ms) unless Pillow's
  fixed buffer for that overflows (very noisy images at high quality), then standard tables.
- webp: always *lossy* VP8 with ``quality = compression`` (alpha, when kept, is stored losslessly
  by libwebp). 100 does not switch to lossless: lossless photos come out ~5x larger and 4-20x
  slower to encode, and the OpenAI API's own webp output is lossy too. ``method=2`` trades a few
  percent of size for ~2.5x faster encoding than Pillow's default 4.
- png: lossless, so `compression` cannot apply (the API layer refuses png with compression < 100).
  ``compress_level=PNG_COMPRESS_LEVEL`` (zlib level 1, via Pillow's zlib-ng): ~2x faster than
  Pillow's default 6 for ~10-25% larger files.

Transparency: ``transparent=True`` keeps the alpha channel (png/webp; an image without one is
written as RGB). ``transparent=False`` —
and jpeg, which has no alpha — flattens onto white (the OpenAI look of opaque emoji-style art)
and writes RGB.

Bytes are deterministic for identical input: metadata carried in ``image.info`` (ICC profile,
EXIF, text chunks, transparency keys) is dropped and nothing time-dependent is written.
"""

from __future__ import annotations

import io

from PIL import Image

OUTPUT_FORMATS = ("png", "jpeg", "webp")
# every output format's media type (svg: canvasd.media.vectorize writes it)
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "svg": "image/svg+xml"}
PNG_COMPRESS_LEVEL = 1
WEBP_METHOD = 2
JPEG_FULL_CHROMA_FROM = 90  # quality at and above which jpeg keeps 4:4:4 chroma
DEFAULT_COMPRESSION = 100

_WHITE = (255, 255, 255, 255)


def encode_image(
    image: Image.Image, output_format: str, compression: int | None, transparent: bool
) -> bytes:
    """The file bytes of `image` in `output_format` ("png" | "jpeg" | "webp")."""
    fmt = output_format.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unsupported output_format {output_format!r}")
    quality = DEFAULT_COMPRESSION if compression is None else int(compression)
    if not 0 <= quality <= 100:
        raise ValueError(f"compression must be within 0..100, got {compression!r}")

    keep_alpha = transparent and fmt != "jpeg"
    pixels = _with_alpha(image) if keep_alpha else _flatten_on_white(image)
    pixels.info = {}  # no ICC/EXIF/text chunks: identical input -> identical bytes

    buf = io.BytesIO()
    if fmt == "png":
        pixels.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "jpeg":
        q = max(quality, 1)
        options = {"quality": q, "subsampling": 0 if q >= JPEG_FULL_CHROMA_FROM else 2}
        try:
            pixels.save(buf, "JPEG", optimize=True, **options)
        except OSError:
            # Pillow sizes its one-shot buffer for optimize=True at 1-2 bytes/pixel; very noisy
            # images at high quality exceed it ("broken data stream"). Plain Huffman tables then.
            buf = io.BytesIO()
            pixels.save(buf, "JPEG", optimize=False, **options)
    else:
        pixels.save(buf, "WEBP", quality=quality, method=WEBP_METHOD, lossless=False)
    return buf.getvalue()


def _with_alpha(image: Image.Image) -> Image.Image:
    """RGBA if the image has alpha, else RGB (an opaque alpha plane only costs bytes); always a
    new image, so clearing its `info` leaves the caller's untouched."""
    mode = "RGBA" if has_alpha(image) else "RGB"
    return image.convert(mode) if image.mode != mode else image.copy()


def _flatten_on_white(image: Image.Image) -> Image.Image:
    """RGB: alpha (if any) composited over opaque white."""
    if not has_alpha(image):
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(white, rgba).convert("RGB")


def has_alpha(image: Image.Image) -> bool:
    """Whether the image carries transparency: an alpha band, or a transparency key."""
    return image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
