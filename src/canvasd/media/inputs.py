"""Uploaded images prepared for a job: edit inputs fitted to the job's size, and the uploaded
alpha mask turned into the job's repaint mask.

The API hands a backend images of exactly the size it generates at, so every backend sees the
same, already-fitted inputs; fitting uses the same aspect-keeping letterbox as the outputs.
"""

from __future__ import annotations

from PIL import Image

from canvasd.media.resize import fit_image


def fit_input(image: Image.Image, width: int, height: int) -> Image.Image:
    """An input image fitted to width x height (aspect kept, letterboxed; alpha not sharpened:
    an input's edges are the client's, not an upscaling artefact)."""
    if image.size == (width, height):
        return image
    return fit_image(image, width, height, sharpen_alpha=False)


def repaint_mask(mask: Image.Image, width: int, height: int) -> Image.Image:
    """Uploaded RGBA mask (alpha 0 = edit) -> the job's "L" mask (255 = repaint), fitted like the
    image; letterbox padding is 'keep'."""
    alpha = mask.getchannel("A")
    repaint = alpha.point(lambda a: 255 if a == 0 else 0)
    if repaint.size == (width, height):
        return repaint
    carrier = Image.merge("RGBA", (repaint, repaint, repaint, Image.new("L", repaint.size, 255)))
    fitted = fit_input(carrier, width, height)
    # padding is transparent (alpha 0) -> keep; inside, the (resampled) red channel is the mask
    r, _, _, a = fitted.split()
    return Image.composite(r.point(lambda v: 255 if v >= 128 else 0), Image.new("L", (width, height), 0), a)
