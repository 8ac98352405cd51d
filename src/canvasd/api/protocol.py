"""The OpenAI response shapes (pydantic v2) and the usage rule.

Requests are not modelled here: rules.py parses bodies itself so unknown keys, wrong types and
nulls get OpenAI's exact errors. Responses are serialised with ``exclude_none`` so a field is
either present with a valid value or absent (the SDK's strict validation rejects ``null`` for
typed fields and any out-of-enum value).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel

from canvasd.api.rules import SVG_TRACER, OutputOptions


class InputTokensDetails(BaseModel):
    text_tokens: int
    image_tokens: int


class OutputTokensDetails(BaseModel):
    image_tokens: int
    text_tokens: int


class ImagesUsage(BaseModel):
    """Usage inside stream events (schema ImagesUsage: no output details)."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails


class Usage(ImagesUsage):
    """Usage of a non-streamed response (schema ImageGenUsage)."""

    output_tokens_details: OutputTokensDetails | None = None


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class SvgUsage(BaseModel):
    """Usage of the SVG step (newest API's `svg_usage`): here a tracer, no language model, so
    no tokens."""

    input_tokens: int = 0
    model: str
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    background: Literal["transparent", "opaque"] | None = None
    output_format: Literal["png", "webp", "jpeg", "svg"] | None = None
    size: str | None = None
    quality: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    usage: Usage | None = None
    safety_identifier: str | None = None
    svg_usage: SvgUsage | None = None


class _StreamEvent(BaseModel):
    b64_json: str
    created_at: int
    size: str
    quality: Literal["low", "medium", "high", "xhigh", "max", "auto"]
    background: Literal["transparent", "opaque", "auto"]
    output_format: Literal["png", "webp", "jpeg"]


class PartialImageEvent(_StreamEvent):
    type: Literal["image_generation.partial_image", "image_edit.partial_image"]
    partial_image_index: int


class CompletedEvent(_StreamEvent):
    type: Literal["image_generation.completed", "image_edit.completed"]
    usage: ImagesUsage
    safety_identifier: str | None = None


class StreamError(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEvent(BaseModel):
    """Mid-stream failure (spec §6.2): the SDKs raise APIError for a `data` object with `error`."""

    type: Literal["error"] = "error"
    error: StreamError


def event_prefix(out: OutputOptions) -> str:
    return "image_edit" if out.endpoint == "edits" else "image_generation"


# --- usage ----------------------------------------------------------------------------------

# Output image tokens OpenAI documents for a 1024x1024 image (GPT image guide, "Cost and latency").
OUTPUT_TOKENS_1024 = {"low": 272, "medium": 1056, "high": 4160, "xhigh": 4160, "max": 4160}
_REF_AREA = 1024 * 1024


def output_image_tokens(quality: str, width: int, height: int) -> int:
    """Tokens of one output image: OpenAI's reference count for its quality at 1024x1024,
    scaled by the image's area (1024x1536 at high: 4160 * 1.5 = 6240, as in the guide)."""
    ref = OUTPUT_TOKENS_1024.get(quality, OUTPUT_TOKENS_1024["medium"])
    return max(1, round(ref * width * height / _REF_AREA))


def input_image_tokens(width: int, height: int) -> int:
    """Tokens of one input image, OpenAI's vision tiling rule (high detail): fit within 2048x2048,
    scale the shortest side down to 768, then 85 + 170 per 512x512 tile."""
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return 85 + 170 * tiles


def compute_usage(text_tokens: int, input_sizes: list[tuple[int, int]], out: OutputOptions,
                  n_images: int) -> Usage:
    """Usage of a whole request: text tokens from the model's own tokenizer (`count_tokens`),
    image tokens by the two rules above."""
    image_in = sum(input_image_tokens(w, h) for w, h in input_sizes)
    image_out = n_images * output_image_tokens(out.quality, out.width, out.height)
    return Usage(
        input_tokens=text_tokens + image_in,
        output_tokens=image_out,
        total_tokens=text_tokens + image_in + image_out,
        input_tokens_details=InputTokensDetails(text_tokens=text_tokens, image_tokens=image_in),
        output_tokens_details=OutputTokensDetails(image_tokens=image_out, text_tokens=0),
    )


def per_image_usage(total: Usage, index: int, out: OutputOptions) -> ImagesUsage:
    """Usage of one `*.completed` event when n > 1 images are streamed: each event carries its own
    image's output tokens; the input tokens are counted on the first event only, so the events
    sum to the request's usage."""
    image_out = output_image_tokens(out.quality, out.width, out.height)
    details = total.input_tokens_details if index == 0 else InputTokensDetails(text_tokens=0, image_tokens=0)
    inp = details.text_tokens + details.image_tokens
    return ImagesUsage(input_tokens=inp, output_tokens=image_out, total_tokens=inp + image_out,
                       input_tokens_details=details)


def build_response(created: int, data: list[ImageData], out: OutputOptions, usage: Usage,
                   safety_identifier: str | None, prompt: str) -> dict:
    """The ImagesResponse body for the profile's shape: GPT image models get the resolved settings
    and usage; dall-e models only `created` + `data` (dall-e-3 adds `revised_prompt`, which here is
    the prompt unchanged — nothing rewrites prompts)."""
    if out.shape == "dall-e-3":
        for d in data:
            d.revised_prompt = prompt
    if out.shape != "gpt":
        return ImagesResponse(created=created, data=data).model_dump(exclude_none=True)
    return ImagesResponse(
        created=created, data=data, background=out.background,  # type: ignore[arg-type]
        output_format=out.output_format, size=out.size, quality=out.quality,  # type: ignore[arg-type]
        usage=usage, safety_identifier=safety_identifier or None,
        svg_usage=SvgUsage(model=SVG_TRACER) if out.output_format == "svg" else None,
    ).model_dump(exclude_none=True)
