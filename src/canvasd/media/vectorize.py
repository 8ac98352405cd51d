"""`output_format: "svg"`: the generated image traced into vector paths by VTracer (PyPI `vtracer`).

The image is traced at the resolution it was generated at, and the SVG's root gets the requested
size as `width`/`height` with the traced size as `viewBox`, so a 64 px emoji becomes a 1024x1024
SVG of smooth curves instead of a trace of upscaling blur. When the requested aspect differs
from the generated one, the image is first fitted (letterboxed) like the raster formats.

Transparent pixels stay transparent (VTracer keys them out); an opaque request is flattened onto
white first. `svg.reasoning.effort` selects how much detail the trace keeps: more colour levels,
smaller speckles and finer layer differences as the effort rises.
"""

from __future__ import annotations

import io
import re

from PIL import Image

MEDIA_TYPE = "image/svg+xml"
TRACER = "vtracer"

# effort -> (filter_speckle px, color_precision bits, layer_difference)
EFFORT_PRESETS: dict[str, tuple[int, int, int]] = {
    "none": (8, 4, 48),
    "minimal": (6, 5, 32),
    "low": (5, 5, 24),
    "medium": (4, 6, 16),
    "high": (2, 7, 8),
    "xhigh": (1, 8, 4),
    "max": (1, 8, 2),
}
DEFAULT_EFFORT = "medium"

_SVG_ROOT = re.compile(r'<svg\b([^>]*?)\swidth="(\d+)"\s+height="(\d+)"')


def vectorize(image: Image.Image, width: int, height: int, transparent: bool,
              effort: str | None = None) -> bytes:
    """SVG bytes of `image`, sized `width` x `height`."""
    import vtracer

    from canvasd.media.resize import fit_image

    if image.width * height != image.height * width:  # another aspect: letterbox first
        image = fit_image(image, width, height)
    rgba = image.convert("RGBA")
    if not transparent:
        rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    buf = io.BytesIO()
    rgba.save(buf, "PNG", compress_level=1)
    speckle, colours, layers = EFFORT_PRESETS[effort or DEFAULT_EFFORT]
    svg = vtracer.convert_raw_image_to_svg(
        buf.getvalue(), img_format="png", colormode="color", hierarchical="stacked", mode="spline",
        filter_speckle=speckle, color_precision=colours, layer_difference=layers,
        corner_threshold=60, length_threshold=4.0, max_iterations=10, splice_threshold=45,
        path_precision=3)
    return _resize_root(svg, width, height).encode("utf-8")


def _resize_root(svg: str, width: int, height: int) -> str:
    def root(m: re.Match[str]) -> str:
        return (f'<svg{m.group(1)} width="{width}" height="{height}" '
                f'viewBox="0 0 {m.group(2)} {m.group(3)}" preserveAspectRatio="none"')

    out, count = _SVG_ROOT.subn(root, svg, count=1)
    if count != 1:  # pragma: no cover - VTracer changed its header
        raise RuntimeError("unexpected SVG header from vtracer")
    return out
