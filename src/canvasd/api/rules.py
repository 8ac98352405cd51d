"""Request validation: ONE table of per-profile parameter rules, and the validator that turns a
request body into an engine `Job` plus output options.

Profiles. A request's `model` selects a profile: the OpenAI name's (gpt-image-1, gpt-image-2,
dall-e-3, …) or ``local`` for a local model id. The profile decides prompt length, `n`, the
allowed values of `quality` / `size`, the response shape and — in ``strict`` compat mode — which
parameters the real API refuses on that model. The backend's `Capabilities` then decide what the
local model can honour (alpha, masks, image input, sizes); a request it can't honour is refused.

Modes (``settings.compat``):
- ``permissive`` (default): every parameter documented for the endpoint is accepted on every
  model and honoured by the local model (``response_format=url`` with gpt-image-1, `stream` with
  dall-e-3, every size the backend can render, …). Values are still checked against the profile.
  Automatic1111-style ``steps`` and ``cfg_scale`` are aliases of ``num_inference_steps`` and
  ``guidance_scale``.
- ``strict``: mirrors the real API's per-model refusals (``response_format`` or ``style`` on GPT
  image models → ``unknown_parameter``; ``input_fidelity`` on gpt-image-2; ``xhigh`` on
  gpt-image-2; dall-e-2 uploads must be square PNGs < 4 MB; …). Local model ids behave as in
  permissive mode.
In both modes: keys unknown to the endpoint → ``unknown_parameter``; ``null`` = not given (except
``prompt``/``images``, which are required); values are type- and range-checked; the fault order
is the measured one: unknown keys → (model) → prompt → images → n → the other parameters.

Extensions (top-level fields, e.g. the SDK's ``extra_body``): `seed`, `num_inference_steps`,
`guidance_scale`, `negative_prompt`, `lora`, and on edits/variations `strength`; accepted in both
modes. `lora` selects among the model's configured LoRA adapters: a name, a list of names and/or
``{"name", "scale"}`` objects, ``[]`` for none (form fields: ``name`` or ``a:0.8,b``); absent = the
adapters the model's config lists, at their scales.

Resolutions (documented for the README):
- quality: ``auto`` → the backend's ``default_quality``; ``standard`` → medium, ``hd`` → high;
  ``xhigh``/``max`` use the backend's step count for them when it has one, else ``high``'s.
  Steps come from ``capabilities.quality_steps`` unless ``num_inference_steps`` is given.
- size: ``auto`` (or omitted) → what the real API gives, on every model and local id: 1024x1024
  (edits on GPT-shaped profiles: the preset closest to the first image's aspect). Permissive mode
  accepts every preset and free WxH the backend can render on every model; strict mode keeps each
  OpenAI model's own list (or gpt-image-2's flexible rules). Backends with ``upscales`` generate
  at their native size and the output is fitted to the requested size; others generate at the
  requested size, which must then be a multiple of ``size_multiple`` within
  ``min_side..max_side`` (for ``auto``: the preset's aspect at about their native pixel count,
  fitted to the preset).
- quality echo: the resolved quality as the profile's real API reports it (``xhigh``/``max``
  only on gpt-image-2.5 profiles and local ids; elsewhere ``high``).
- variations without ``model``: the dall-e-2 profile (``url`` default, 1024x1024, no usage).
- background: ``auto`` → ``transparent`` when the backend has native alpha and the output format
  is png/webp (dall-e profiles: always opaque), else ``opaque``.
- seed: a random 31-bit seed when not given; image i uses ``seed + i``.
- input_fidelity (edits): ``high`` keeps more of the input (strength 0.5 unless `strength` given).
- style, moderation, user, safety_identifier, complexity: validated, then no effect on the image
  (there is no style model or moderation here); `safety_identifier` (else `user`) is echoed.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from canvasd.api import errors as E
from canvasd.contracts import HIGH_FIDELITY_STRENGTH, MAX_INPUT_IMAGES, Capabilities, Job
from canvasd.media.inputs import fit_input, repaint_mask

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

    from canvasd.backends.registry import ModelRegistry

Endpoint = Literal["generations", "edits", "variations"]
Source = Literal["json", "form"]
Shape = Literal["gpt", "dall-e-2", "dall-e-3"]

# --- the parameters every endpoint documents (their union over models) --------------------------

_GPT_OUTPUT = ("output_format", "output_compression", "background", "moderation", "stream",
               "partial_images", "safety_identifier", "complexity", "frame_count",
               "frame_duration_ms", "svg")
EXTENSIONS_GEN = ("seed", "num_inference_steps", "guidance_scale", "negative_prompt", "lora")
EXTENSIONS_EDIT = EXTENSIONS_GEN + ("strength",)
# Automatic1111-style names that Open WebUI admins paste as extra parameters: accepted in
# permissive mode as aliases of the extensions above (strict mode: unknown_parameter). Other A1111
# extras (sampler_name, …) have no clear meaning here and stay unknown parameters.
PARAM_ALIASES = {"steps": "num_inference_steps", "cfg_scale": "guidance_scale"}

DOCUMENTED: dict[tuple[Endpoint, Source], frozenset[str]] = {
    ("generations", "json"): frozenset(
        ("prompt", "model", "n", "quality", "response_format", "size", "style", "user")
        + _GPT_OUTPUT + EXTENSIONS_GEN),
    ("edits", "form"): frozenset(
        ("image", "mask", "markup", "prompt", "model", "n", "size", "quality", "response_format",
         "input_fidelity", "user") + _GPT_OUTPUT + EXTENSIONS_EDIT),
    ("edits", "json"): frozenset(
        ("images", "mask", "prompt", "model", "n", "size", "quality", "response_format",
         "input_fidelity", "user") + _GPT_OUTPUT + EXTENSIONS_EDIT),
    ("variations", "form"): frozenset(
        ("image", "model", "n", "response_format", "size", "user") + EXTENSIONS_EDIT),
}

# What the real API accepts per profile family (strict mode); extensions always pass.
_GPT_GEN = frozenset(("prompt", "model", "n", "quality", "size", "user") + _GPT_OUTPUT)
_GPT_EDIT = frozenset(("image", "images", "mask", "markup", "prompt", "model", "n", "size", "quality",
                       "input_fidelity", "user") + _GPT_OUTPUT)
_DALLE2_GEN = frozenset(("prompt", "model", "n", "quality", "response_format", "size", "user"))
_DALLE2_EDIT = frozenset(("image", "mask", "prompt", "model", "n", "size", "quality",
                          "response_format", "user"))
_DALLE2_VAR = frozenset(("image", "model", "n", "response_format", "size", "user"))
_DALLE3_GEN = _DALLE2_GEN | {"style"}

FIXED_SIZES = ("1024x1024", "1024x1536", "1536x1024")


@dataclass(frozen=True, kw_only=True)
class FlexSize:
    """gpt-image-2 style free WxH (spec §2 size row)."""

    multiple: int = 16
    max_edge: int = 3840
    max_ratio: float = 3.0
    min_pixels: int = 655_360
    max_pixels: int = 8_294_400


@dataclass(frozen=True, kw_only=True)
class Profile:
    name: str
    shape: Shape
    prompt_max: int
    n_max: int
    quality: tuple[str, ...]  # values accepted (message lists them in this order)
    sizes: tuple[str, ...] | None  # fixed presets as listed in errors ('auto' always accepted); None: flexible
    flex: FlexSize | None
    endpoints: frozenset[str]  # endpoints the real API serves for it (strict)
    strict_params: dict[str, frozenset[str]]  # endpoint -> accepted keys (strict)
    response_format_default: str = "b64_json"
    input_fidelity: tuple[str, ...] | None = ("high", "low")  # None: parameter refused (strict)
    strict_quality_refused: tuple[str, ...] = ()  # e.g. gpt-image-2 + 'xhigh'
    json_edits: bool = True
    dalle2_uploads: bool = False  # strict: one square PNG < 4 MB
    # `quality` values the real API puts in its responses for this model (older SDKs validate
    # responses against low/medium/high): a resolved quality outside them is echoed as the
    # closest one in them
    response_qualities: tuple[str, ...] = ("low", "medium", "high")


_GPT_PARAMS = {"generations": _GPT_GEN, "edits": _GPT_EDIT}
_GPT_QUALITY = ("low", "medium", "high", "auto")

GPT_FIXED = Profile(
    name="gpt-image", shape="gpt", prompt_max=32000, n_max=10, quality=_GPT_QUALITY,
    sizes=FIXED_SIZES + ("auto",), flex=None, endpoints=frozenset(("generations", "edits")),
    strict_params=_GPT_PARAMS)
GPT_MINI = Profile(
    name="gpt-image-1-mini", shape="gpt", prompt_max=32000, n_max=10, quality=_GPT_QUALITY,
    sizes=FIXED_SIZES + ("auto",), flex=None, endpoints=frozenset(("generations", "edits")),
    strict_params=_GPT_PARAMS, input_fidelity=("low",))
GPT_2 = Profile(
    name="gpt-image-2", shape="gpt", prompt_max=32000, n_max=10, quality=_GPT_QUALITY + ("xhigh", "max"),
    sizes=None, flex=FlexSize(), endpoints=frozenset(("generations", "edits")),
    strict_params=_GPT_PARAMS, input_fidelity=None, strict_quality_refused=("xhigh", "max"))
GPT_25 = Profile(
    name="gpt-image-2.5", shape="gpt", prompt_max=32000, n_max=10,
    quality=("low", "medium", "high", "xhigh", "max", "auto"), sizes=None, flex=FlexSize(),
    endpoints=frozenset(("generations", "edits")), strict_params=_GPT_PARAMS,
    response_qualities=("low", "medium", "high", "xhigh", "max"))
DALLE2 = Profile(
    name="dall-e-2", shape="dall-e-2", prompt_max=1000, n_max=10, quality=("standard", "auto"),
    sizes=("256x256", "512x512", "1024x1024"), flex=None,
    endpoints=frozenset(("generations", "edits", "variations")),
    strict_params={"generations": _DALLE2_GEN, "edits": _DALLE2_EDIT, "variations": _DALLE2_VAR},
    response_format_default="url", input_fidelity=None, json_edits=False, dalle2_uploads=True)
DALLE3 = Profile(
    name="dall-e-3", shape="dall-e-3", prompt_max=4000, n_max=1, quality=("standard", "hd", "auto"),
    sizes=("1024x1024", "1792x1024", "1024x1792"), flex=None, endpoints=frozenset(("generations",)),
    strict_params={"generations": _DALLE3_GEN},
    response_format_default="url", input_fidelity=None, json_edits=False)
LOCAL = Profile(
    name="local", shape="gpt", prompt_max=32000, n_max=10,
    quality=("low", "medium", "high", "auto", "standard", "hd", "xhigh", "max"),
    sizes=None, flex=None, endpoints=frozenset(("generations", "edits", "variations")), strict_params={},
    response_qualities=("low", "medium", "high", "xhigh", "max"))

PROFILES: dict[str, Profile] = {
    "gpt-image-1": GPT_FIXED,
    "gpt-image-1-mini": GPT_MINI,
    "gpt-image-1.5": GPT_FIXED,
    "chatgpt-image-latest": GPT_FIXED,
    "gpt-image-2": GPT_2,
    "gpt-image-2-2026-04-21": GPT_2,
    "gpt-image-2.5-sunburst": GPT_25,
    "gpt-image-2.5-sunburst-2026-09-08": GPT_25,
    "gpt-image-2.5-flare": GPT_25,
    "gpt-image-2.5-flare-2026-09-08": GPT_25,
    "gpt-image-2.6-sunburst": GPT_25,  # capabilities undocumented: treated like 2.5
    "gpt-image-2.6-flare": GPT_25,
    "dall-e-2": DALLE2,
    "dall-e-3": DALLE3,
}

# Ranges (both modes)
N_MIN = 1
COMPRESSION = (0, 100)
PARTIAL_IMAGES = (0, 3)
STEPS = (1, 500)
GUIDANCE = (0.0, 50.0)
STRENGTH = (0.0, 1.0)
SEED = (0, 2**32 - 1)
FRAME_COUNT = (2, 16)
OUTPUT_FORMATS = ("png", "webp", "jpeg")
BACKGROUNDS = ("transparent", "opaque", "auto")
MODERATION = ("auto", "low")
STYLES = ("vivid", "natural")
RESPONSE_FORMATS = ("url", "b64_json")
FIDELITY = ("high", "low")
COMPLEXITY = ("low", "medium", "high")
SVG_EFFORT = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
SVG_TRACER = "vtracer"  # the one vectoriser here (`svg.model`, and `svg_usage.model`)
QUALITY_ALIASES = {"standard": "medium", "hd": "high"}
REF_OUTPUT_SIDE = 1024
# every size the real API has ever offered; permissive mode honours each on every model whose
# backend can render it (strict mode keeps the per-model lists)
PRESET_SIZES = ("256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "1792x1024", "1024x1792")
SIZE_RE = re.compile(r"^(\d{1,6})x(\d{1,6})$")


# --- outputs of validation ----------------------------------------------------------------------

@dataclass
class InputImages:
    """Decoded uploads (api/images.py): RGBA images, the first one is the edit target."""

    images: list["Image"] = field(default_factory=list)
    mask: "Image | None" = None  # RGBA as uploaded (alpha 0 = repaint)


@dataclass(kw_only=True)
class ImageRules:
    """What the upload step must enforce for this request."""

    endpoint: Endpoint
    source: Source
    strict: bool
    max_images: int
    dalle2: bool  # strict dall-e-2: one square PNG < 4 MB, alpha or mask
    max_bytes: int
    max_pixels: int  # one image
    max_request_pixels: int = 4096 * 4096  # all of the request's images together
    pixels_spent: int = 0  # decoded so far (the upload step counts, header by header)


@dataclass
class OutputOptions:
    endpoint: Endpoint
    shape: Shape
    response_format: str  # b64_json | url
    output_format: str  # png | jpeg | webp
    compression: int | None
    transparent: bool
    width: int  # what the client gets
    height: int
    quality: str  # resolved: low | medium | high | xhigh | max
    background: str  # resolved: transparent | opaque
    stream: bool
    partial_images: int
    svg_effort: str | None = None  # output_format svg: the trace's detail (svg.reasoning.effort)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass
class Plan:
    job: Job
    out: OutputOptions
    model: str  # as requested (alias or local id)
    input_sizes: list[tuple[int, int]]
    safety_identifier: str | None = None


ImageLoader = Callable[[ImageRules], InputImages]


# --- typed accessors ------------------------------------------------------------------------

_LORA_EXPECTED = "an adapter name, or a list of names and {\"name\", \"scale\"} objects"


def _lora_request(p: "Params") -> tuple[tuple[str, float | None], ...] | None:
    """The `lora` extension as (name, scale or None = the configured scale) pairs; None = absent."""
    v = p.get("lora")
    if v is None:
        return None
    if isinstance(v, str) and p.source == "form":
        items: list[Any] = []
        for part in filter(None, (x.strip() for x in v.split(","))):
            name, _, scale = part.partition(":")
            if scale:
                try:
                    items.append({"name": name.strip(), "scale": float(scale)})
                except ValueError:
                    raise E.invalid_type("lora", _LORA_EXPECTED, v, unconvertible="adapter names") from None
            else:
                items.append(name.strip())
        v = items
    elif isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise E.invalid_type("lora", _LORA_EXPECTED, v)
    out: list[tuple[str, float | None]] = []
    for item in v:
        if isinstance(item, str) and item:
            out.append((item, None))
        elif (isinstance(item, dict) and set(item) <= {"name", "scale"} and isinstance(item.get("name"), str)
              and (item.get("scale") is None or (isinstance(item["scale"], (int, float))
                                                 and not isinstance(item["scale"], bool)
                                                 and math.isfinite(item["scale"])))):
            out.append((item["name"], None if item.get("scale") is None else float(item["scale"])))
        else:
            raise E.invalid_type("lora", _LORA_EXPECTED, v)
    return tuple(out)


class Params:
    """The request's top-level fields with OpenAI's type errors. Form values arrive as strings."""

    def __init__(self, raw: dict[str, Any], source: Source):
        self.raw = raw
        self.source = source

    def given(self, name: str) -> bool:
        return self.raw.get(name) is not None

    def get(self, name: str) -> Any:
        return self.raw.get(name)

    def string(self, name: str) -> str | None:
        v = self.raw.get(name)
        if v is None:
            return None
        if not isinstance(v, str):
            raise E.invalid_type(name, "a string", v)
        return v

    def integer(self, name: str, lo: int | None, hi: int | None) -> int | None:
        v = self.raw.get(name)
        if v is None:
            return None
        if isinstance(v, str) and self.source == "form":
            if not re.fullmatch(r"\s*[+-]?\d+\s*", v):
                raise E.invalid_type(name, "an integer", v, unconvertible="an integer")
            v = int(v)
        elif isinstance(v, bool) or not isinstance(v, int):
            raise E.invalid_type(name, "an integer", v)
        if hi is not None and v > hi:
            raise E.above_max(name, hi, v)
        if lo is not None and v < lo:
            raise E.below_min(name, lo, v)
        return v

    def number(self, name: str, lo: float, hi: float) -> float | None:
        v = self.raw.get(name)
        if v is None:
            return None
        if isinstance(v, str) and self.source == "form":
            try:
                v = float(v)
            except ValueError:
                raise E.invalid_type(name, "a number", v, unconvertible="a number") from None
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise E.invalid_type(name, "a number", v)
        if not math.isfinite(v):
            raise E.invalid_type(name, "a number", v, unconvertible="a number")
        if v > hi:
            raise E.above_max(name, _num(hi), _num(v), kind="decimal")
        if v < lo:
            raise E.below_min(name, _num(lo), _num(v), kind="decimal")
        return float(v)

    def boolean(self, name: str) -> bool | None:
        v = self.raw.get(name)
        if v is None:
            return None
        if isinstance(v, str) and self.source == "form":
            low = v.strip().lower()
            if low in ("true", "false"):
                return low == "true"
            raise E.invalid_type(name, "a boolean", v, unconvertible="a boolean")
        if not isinstance(v, bool):
            raise E.invalid_type(name, "a boolean", v)
        return v

    def enum(self, name: str, allowed: tuple[str, ...], listed: tuple[str, ...] | None = None) -> str | None:
        v = self.raw.get(name)
        if v is None:
            return None
        listed = listed or allowed
        if not isinstance(v, str):
            raise E.invalid_type(name, E.enum_expected(listed), v)
        if v not in allowed:
            raise E.invalid_value(name, v, listed)
        return v


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


# --- the validator --------------------------------------------------------------------------

@dataclass
class Target:
    """The requested model resolved: profile + local backend."""

    requested: str
    local_id: str
    profile: Profile
    caps: Capabilities

    @property
    def is_local(self) -> bool:
        return self.profile is LOCAL


def resolve_model(requested: Any, registry: "ModelRegistry", endpoint: Endpoint = "generations") -> Target:
    if requested is None:
        if endpoint == "variations":
            # only dall-e-2 ever served variations: DALL-E 2 sample code expects its defaults
            # (`url` responses, 1024x1024, no usage) from `create_variation(image=...)`
            local_id = registry.resolve("dall-e-2")
            if local_id is None or local_id not in registry.backends:
                local_id = registry.settings.default_model
            return Target("dall-e-2", local_id, DALLE2, registry.capabilities(local_id))
        local_id = registry.settings.default_model
        return Target(local_id, local_id, LOCAL, registry.capabilities(local_id))
    if not isinstance(requested, str):
        raise E.invalid_type("model", "a string", requested)
    local_id = registry.resolve(requested)
    if local_id is None or local_id not in registry.backends:
        raise E.model_not_found(requested)
    profile = LOCAL if requested in registry.backends else PROFILES.get(requested, LOCAL)
    return Target(requested, local_id, profile, registry.capabilities(local_id))


def validate(
    endpoint: Endpoint,
    source: Source,
    raw: dict[str, Any],
    *,
    registry: "ModelRegistry",
    strict: bool,
    load_images: ImageLoader | None = None,
    max_upload_bytes: int = 50 * 1024 * 1024,
    max_upload_pixels: int = 4096 * 4096,
    max_request_pixels: int = 4096 * 4096,
) -> Plan:
    """Check a request body in the measured fault order and build the engine Job."""
    if not strict:
        raw = _apply_aliases(raw, source)
    p = Params(raw, source)
    documented = DOCUMENTED[(endpoint, source)]

    # 1. keys unknown to the endpoint (whatever their value, null included)
    for key in raw:
        if key not in documented:
            raise E.unknown_parameter(key)

    # 2. model -> profile, then the real API's per-model refusals (strict)
    target = resolve_model(raw.get("model"), registry, endpoint)
    prof, caps = target.profile, target.caps
    if strict and not target.is_local:
        if endpoint not in prof.endpoints or (endpoint == "edits" and source == "json" and not prof.json_edits):
            supported = [m for m, pr in PROFILES.items() if endpoint in pr.endpoints
                         and (endpoint != "edits" or source == "form" or pr.json_edits)]
            raise E.invalid_value("model", target.requested, supported)
        accepted = prof.strict_params[endpoint] | set(EXTENSIONS_EDIT)
        for key in raw:
            if key not in accepted:
                raise E.unknown_parameter(key)

    # 3. prompt
    prompt = ""
    if endpoint != "variations":
        if "prompt" not in raw:
            raise E.missing_required("prompt")
        prompt = raw["prompt"]
        if not isinstance(prompt, str):
            raise E.invalid_type("prompt", "a string", prompt)
        if prompt == "":
            raise E.empty_string("prompt")
        if len(prompt) > prof.prompt_max:
            raise E.string_too_long("prompt", prof.prompt_max, len(prompt))

    # 4. images
    inputs = InputImages()
    if endpoint != "generations":
        if load_images is None:  # pragma: no cover - programming error
            raise RuntimeError("edits/variations need an image loader")
        max_images = 1 if endpoint == "variations" else min(MAX_INPUT_IMAGES, max(1, caps.max_input_images))
        dalle2 = strict and prof.dalle2_uploads
        if dalle2 and endpoint == "edits":
            max_images = 1
        inputs = load_images(ImageRules(
            endpoint=endpoint, source=source, strict=strict, max_images=max_images, dalle2=dalle2,
            max_bytes=max_upload_bytes, max_pixels=max_upload_pixels, max_request_pixels=max_request_pixels))

    # dall-e-2's documented edit rule: without a mask, the image's own transparent pixels are the
    # area to edit
    if (endpoint == "edits" and prof is DALLE2 and inputs.mask is None and inputs.images
            and inputs.images[0].getchannel("A").getextrema()[0] == 0):
        inputs.mask = inputs.images[0]

    # 5. n
    n = p.integer("n", N_MIN, prof.n_max) or 1

    # 6. the other parameters, table order
    quality_req = p.enum("quality", prof.quality)
    if strict and quality_req in prof.strict_quality_refused:
        raise E.bad_request(f"The model '{target.requested}' does not support quality '{quality_req}'.",
                            "quality", "invalid_value")
    size_req = p.string("size")
    response_format = p.enum("response_format", RESPONSE_FORMATS)
    # svg (the newest API's vector output) for models with native alpha: the traced shapes need a
    # clean background; other models keep the raster list
    output_format = p.enum("output_format", OUTPUT_FORMATS + ("svg",) if caps.alpha else OUTPUT_FORMATS) or "png"
    compression = p.integer("output_compression", *COMPRESSION)
    background_req = p.enum("background", BACKGROUNDS)
    p.enum("moderation", MODERATION)
    p.enum("style", STYLES)
    fidelity = p.enum("input_fidelity", FIDELITY)
    if strict and fidelity is not None and not target.is_local:
        _check_fidelity(target, fidelity)
    stream = bool(p.boolean("stream"))
    partial_images = p.integer("partial_images", *PARTIAL_IMAGES) or 0
    user = p.string("user")
    safety_identifier = p.string("safety_identifier")
    p.enum("complexity", COMPLEXITY)
    svg_effort = _svg_options(p, output_format)
    seed = p.integer("seed", *SEED)
    steps_req = p.integer("num_inference_steps", *STEPS)
    guidance = p.number("guidance_scale", *GUIDANCE)
    negative = p.string("negative_prompt")
    strength = p.number("strength", *STRENGTH)
    lora = _lora_request(p)

    # 7. cross-field rules
    if output_format == "svg":
        _check_svg(n, stream, p, compression)
    if output_format == "png" and compression is not None and compression < 100:
        raise E.bad_request(
            "Invalid 'output_compression': the 'png' output format is lossless and only supports "
            "output_compression=100; use 'jpeg' or 'webp' for compression.",
            "output_compression", "invalid_png_output_compression")
    if background_req == "transparent" and output_format == "jpeg":
        raise E.bad_request(
            "Invalid value: 'jpeg'. A 'transparent' background requires output_format 'png' or 'webp'.",
            "output_format", "invalid_value")

    # 8. what the local model can honour
    if endpoint == "generations" and not caps.text_to_image:
        raise E.bad_request(f"The model '{target.requested}' does not support text-to-image generation; "
                            "use /v1/images/edits.", "model", "unsupported_model")
    if endpoint != "generations" and not caps.image_to_image:
        raise E.bad_request(f"The model '{target.requested}' does not support image input "
                            f"(/v1/images/{endpoint}).", "image", "unsupported_model")
    if inputs.mask is not None and not caps.inpaint:
        raise E.bad_request(f"The model '{target.requested}' does not support masks (inpainting); "
                            "send the edit without 'mask'.", "mask", "unsupported_parameter")
    if background_req == "transparent" and not caps.alpha:
        raise E.bad_request(f"The model '{target.requested}' cannot produce transparent backgrounds; "
                            "use background 'opaque' or 'auto'.", "background", "invalid_value")
    if negative is not None and not caps.negative_prompt:
        raise E.bad_request(f"The model '{target.requested}' does not support 'negative_prompt'.",
                            "negative_prompt", "unsupported_parameter")
    if guidance is not None and not caps.guidance_scale:
        raise E.bad_request(f"The model '{target.requested}' does not support 'guidance_scale' "
                            "(it has no guidance).", "guidance_scale", "unsupported_parameter")
    for name, _ in lora or ():
        if name not in caps.loras:
            listed = f"it lists {E.quote_list(caps.loras)}" if caps.loras else "it lists none"
            raise E.bad_request(f"The model '{target.requested}' has no LoRA adapter '{name}'; {listed}.",
                                "lora", "invalid_value")

    # 9. resolve
    quality = _resolve_quality(quality_req, caps)
    steps = steps_req or _steps_for(quality, caps)
    out_w, out_h = _resolve_size(size_req, target, endpoint, inputs, strict)
    if caps.upscales:
        job_w, job_h = caps.native_size
    elif size_req is None or size_req == "auto":
        # the preset's aspect at about the backend's native pixel count; the output is fitted
        job_w, job_h = _native_area_size(out_w, out_h, caps)
    else:
        _check_generatable(out_w, out_h, target)
        job_w, job_h = out_w, out_h
    transparent = _resolve_background(background_req, output_format, prof, caps)
    if seed is None:
        seed = secrets.randbelow(2**31)
    if strength is None and fidelity == "high" and endpoint == "edits":
        strength = HIGH_FIDELITY_STRENGTH

    in_w, in_h = caps.refined_size if caps.upscales and caps.refined_size else (job_w, job_h)
    init_images = [fit_input(im, in_w, in_h) for im in inputs.images]
    mask = repaint_mask(inputs.mask, in_w, in_h) if inputs.mask is not None else None

    job = Job(
        kind={"generations": "generate", "edits": "edit", "variations": "variation"}[endpoint],
        model=target.local_id, prompt=prompt, n=n, width=job_w, height=job_h, output_width=out_w,
        output_height=out_h, steps=steps,
        guidance_scale=caps.default_guidance if guidance is None else guidance, seed=seed,
        negative_prompt=negative, strength=strength, init_images=init_images, mask=mask, lora=lora,
        transparent=transparent, partial_images=partial_images if stream else 0,
    )
    out = OutputOptions(
        endpoint=endpoint, shape=prof.shape,
        response_format=response_format or prof.response_format_default,
        output_format=output_format, compression=compression, transparent=transparent,
        width=out_w, height=out_h, quality=_echoed_quality(quality, prof),
        background="transparent" if transparent else "opaque",
        stream=stream, partial_images=partial_images if stream else 0, svg_effort=svg_effort,
    )
    return Plan(job=job, out=out, model=target.requested,
                input_sizes=[im.size for im in inputs.images],
                safety_identifier=safety_identifier or user)


def _apply_aliases(raw: dict[str, Any], source: Source) -> dict[str, Any]:
    """Permissive mode: `steps` / `cfg_scale` become the extensions they name (their values are
    checked under their own names, so an error names what the client sent)."""
    if not any(alias in raw for alias in PARAM_ALIASES):
        return raw
    out = dict(raw)
    aliased = Params(raw, source)
    for alias, target in PARAM_ALIASES.items():
        if alias not in out:
            continue
        out.pop(alias)
        value = (aliased.integer(alias, *STEPS) if target == "num_inference_steps"
                 else aliased.number(alias, *GUIDANCE))
        if out.get(target) is not None and value is not None:
            raise E.bad_request(f"Invalid '{alias}': it is another name for '{target}'; give only one "
                                "of them.", alias, "conflicting_parameters")
        if value is not None or target not in out:
            out[target] = value
    return out


def _check_fidelity(target: Target, fidelity: str) -> None:
    allowed = target.profile.input_fidelity
    if allowed is None:
        raise E.bad_request(
            f"The model '{target.requested}' does not support the 'input_fidelity' parameter.",
            "input_fidelity", "invalid_input_fidelity_model", type=E.USER_ERROR)
    if fidelity not in allowed:
        raise E.bad_request(
            f"Invalid value: '{fidelity}'. The model '{target.requested}' only supports input_fidelity "
            f"{E.quote_list(allowed)}.", "input_fidelity", "invalid_value")


def _svg_options(p: Params, output_format: str) -> str | None:
    """The `svg` object (its `reasoning.effort`, the trace's detail) for svg output; gif options
    are refused: this server has no gif output."""
    frame_count = p.integer("frame_count", *FRAME_COUNT)
    frame_ms = p.integer("frame_duration_ms", 0, 655_350)
    for name, given in (("frame_count", frame_count), ("frame_duration_ms", frame_ms)):
        if given is not None:
            raise E.bad_request(
                f"Invalid '{name}': it only applies to output_format 'gif', which this server does "
                "not support.", name, "unsupported_parameter")
    svg = p.get("svg")
    if svg is None:
        return None
    if not isinstance(svg, dict):
        raise E.invalid_type("svg", "an object", svg)
    for key in svg:
        if key not in ("model", "reasoning"):
            raise E.unknown_parameter(f"svg.{key}")
    if output_format != "svg":
        raise E.bad_request("Invalid 'svg': it only applies to output_format 'svg'.", "svg",
                            "unsupported_parameter")
    model = svg.get("model")
    if model is not None and model != SVG_TRACER:
        if not isinstance(model, str):
            raise E.invalid_type("svg.model", "a string", model)
        raise E.invalid_value("svg.model", model, (SVG_TRACER,))
    reasoning = svg.get("reasoning")
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise E.invalid_type("svg.reasoning", "an object", reasoning)
    for key in reasoning:
        if key != "effort":
            raise E.unknown_parameter(f"svg.reasoning.{key}")
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str):
        raise E.invalid_type("svg.reasoning.effort", E.enum_expected(SVG_EFFORT), effort)
    if effort not in SVG_EFFORT:
        raise E.invalid_value("svg.reasoning.effort", effort, SVG_EFFORT)
    return effort


def _check_svg(n: int, stream: bool, p: Params, compression: int | None) -> None:
    """The API's SVG rules: one image, not streamed, no compression."""
    if n != 1:
        raise E.bad_request("Invalid 'n': output_format 'svg' supports only n=1.", "n", "invalid_value")
    if stream:
        raise E.bad_request("Invalid 'stream': output_format 'svg' cannot be streamed.", "stream",
                            "invalid_value")
    if p.given("partial_images") and p.raw.get("partial_images") not in (0, "0"):
        raise E.bad_request("Invalid 'partial_images': output_format 'svg' has no partial images.",
                            "partial_images", "invalid_value")
    if compression is not None:
        raise E.bad_request("Invalid 'output_compression': it does not apply to output_format 'svg'.",
                            "output_compression", "invalid_value")


def _resolve_quality(requested: str | None, caps: Capabilities) -> str:
    q = requested or "auto"
    if q == "auto":
        q = caps.default_quality
    q = QUALITY_ALIASES.get(q, q)
    if q not in caps.quality_steps and q not in ("xhigh", "max"):
        q = caps.default_quality
    return q


def _echoed_quality(quality: str, prof: Profile) -> str:
    if quality in prof.response_qualities:
        return quality
    return "high" if quality in ("xhigh", "max") else "medium"


def _steps_for(quality: str, caps: Capabilities) -> int:
    if quality in caps.quality_steps:
        return caps.quality_steps[quality]
    return caps.quality_steps.get("high", max(caps.quality_steps.values()))


def parse_size(value: str) -> tuple[int, int] | None:
    m = SIZE_RE.match(value)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _resolve_size(size: str | None, target: Target, endpoint: Endpoint,
                  inputs: InputImages, strict: bool) -> tuple[int, int]:
    prof, caps = target.profile, target.caps
    if size is None or size == "auto":
        return _auto_size(target, endpoint, inputs)
    if not strict:
        prof = LOCAL  # permissive: every size the backend can render, on every model
    if prof.sizes is not None:  # fixed presets
        if size not in prof.sizes:
            raise E.invalid_value("size", size, prof.sizes)
        return parse_size(size)  # type: ignore[return-value]
    wh = parse_size(size)
    if wh is None:
        raise E.bad_request(f"Invalid size '{size}'. Expected WIDTHxHEIGHT, for example '1824x1024'.",
                            "size", "invalid_value", type=E.USER_ERROR)
    w, h = wh
    if prof.flex is not None:
        _check_flex(size, w, h, prof.flex)
    else:  # what the backend can make / fit
        if w < 1 or h < 1 or max(w, h) > caps.max_side or (not caps.upscales and min(w, h) < caps.min_side):
            raise E.bad_request(
                f"Invalid size '{size}'. Width and height must be between {caps.min_side if not caps.upscales else 1} "
                f"and {caps.max_side} for model '{target.requested}'.", "size", "invalid_value")
    return w, h


def _check_flex(size: str, w: int, h: int, flex: FlexSize) -> None:
    def fail(reason: str) -> E.OpenAIError:
        return E.bad_request(f"Invalid size '{size}'. {reason}", "size", "invalid_value", type=E.USER_ERROR)

    if w % flex.multiple or h % flex.multiple or w == 0 or h == 0:
        raise fail(f"Width and height must both be divisible by {flex.multiple}.")
    if max(w, h) > flex.max_edge:
        raise fail(f"The longest edge must be at most {flex.max_edge} pixels.")
    if max(w, h) > flex.max_ratio * min(w, h):
        raise fail("The aspect ratio must be between 1:3 and 3:1.")
    if not flex.min_pixels <= w * h <= flex.max_pixels:
        raise fail(f"The total number of pixels must be between {flex.min_pixels} and {flex.max_pixels}.")


def _auto_size(target: Target, endpoint: Endpoint, inputs: InputImages) -> tuple[int, int]:
    """What the real API gives for `auto`, on every model: 1024x1024, or for an edit the GPT
    preset closest to the first image's aspect (dall-e models: always square)."""
    first = inputs.images[0].size if inputs.images else None
    if first is not None and target.profile.shape == "gpt":
        ratio = first[0] / first[1]
        if ratio >= 1.25:
            return 1536, 1024
        if ratio <= 0.8:
            return 1024, 1536
    return REF_OUTPUT_SIDE, REF_OUTPUT_SIDE


def _native_area_size(w: int, h: int, caps: Capabilities) -> tuple[int, int]:
    """w:h at about the backend's native pixel count, snapped to its grid and side limits."""
    area = caps.native_size[0] * caps.native_size[1]
    scale = math.sqrt(area / (w * h))
    m = caps.size_multiple
    gw = min(caps.max_side, max(caps.min_side, round(w * scale / m) * m))
    gh = min(caps.max_side, max(caps.min_side, round(h * scale / m) * m))
    return gw, gh


def _check_generatable(w: int, h: int, target: Target) -> None:
    caps = target.caps
    m = caps.size_multiple
    if w % m or h % m or min(w, h) < caps.min_side or max(w, h) > caps.max_side:
        raise E.bad_request(
            f"Invalid size '{w}x{h}'. The local model '{target.local_id}' generates sizes whose width "
            f"and height are multiples of {m} between {caps.min_side} and {caps.max_side}.",
            "size", "invalid_value")


def _resolve_background(requested: str | None, output_format: str, prof: Profile,
                        caps: Capabilities) -> bool:
    if requested == "transparent":
        return True
    if requested == "opaque" or prof.shape != "gpt":
        return False
    return caps.alpha and output_format in ("png", "webp", "svg")


# --- what a model honours, for clients (the playground shapes its form with it) ---------------

SIZE_SUGGESTIONS = ((256, 256), (512, 512), (768, 768), (1024, 1024), (1536, 1024), (1024, 1536),
                    (2048, 2048))
ENDPOINTS: tuple[Endpoint, ...] = ("generations", "edits", "variations")


def model_abilities(requested: str, registry: "ModelRegistry", strict: bool) -> dict[str, Any]:
    """The `capabilities` extension of a /v1/models entry: which endpoints, parameters, sizes and
    qualities `validate` would honour for this model name, derived from the same profile table
    and backend `Capabilities` (so the page never offers what the server then refuses)."""
    target = resolve_model(requested, registry)
    prof, caps = target.profile, target.caps
    # sizes follow the validator: each model's own list only in strict mode (_resolve_size)
    size_prof = prof if strict and not target.is_local else LOCAL
    endpoints: list[str] = []
    parameters: dict[str, list[str]] = {}
    for endpoint in ENDPOINTS:
        able = caps.text_to_image if endpoint == "generations" else caps.image_to_image
        if not able or (strict and not target.is_local and endpoint not in prof.endpoints):
            continue
        endpoints.append(endpoint)
        source: Source = "json" if endpoint == "generations" else "form"
        keys = DOCUMENTED[(endpoint, source)]
        if strict and not target.is_local:
            keys = keys & (prof.strict_params[endpoint] | set(EXTENSIONS_EDIT))
        parameters[endpoint] = sorted(keys)
    return {
        "endpoints": endpoints,
        "parameters": parameters,
        "sizes": ["auto"] + [s for s in _suggested_sizes(target, strict)],
        "custom_sizes": size_prof.sizes is None,
        "size_multiple": size_prof.flex.multiple if size_prof.flex else (1 if caps.upscales else caps.size_multiple),
        "min_side": 1 if caps.upscales else caps.min_side,
        "max_side": size_prof.flex.max_edge if size_prof.flex else caps.max_side,
        "native_size": f"{caps.native_size[0]}x{caps.native_size[1]}",
        # a second stage: one more step for answers larger than native_size, drawn at this size
        "refined_size": f"{caps.refined_size[0]}x{caps.refined_size[1]}" if caps.refined_size else None,
        "quality": [q for q in prof.quality
                    if not (strict and not target.is_local and q in prof.strict_quality_refused)],
        "default_quality": caps.default_quality,
        "quality_steps": dict(caps.quality_steps),
        "n_max": prof.n_max,
        "alpha": caps.alpha,
        "inpaint": caps.inpaint,
        "negative_prompt": caps.negative_prompt,
        "guidance_scale": caps.guidance_scale,
        "loras": list(caps.loras),
        "max_input_images": min(16, max(1, caps.max_input_images)),
        "partial_images_max": PARTIAL_IMAGES[1],
        "steps_range": list(STEPS),
        "guidance_range": list(GUIDANCE),
        "default_guidance": caps.default_guidance,
        "output_formats": list(OUTPUT_FORMATS) + (["svg"] if caps.alpha else []),
    }


def _suggested_sizes(target: Target, strict: bool) -> list[str]:
    prof, caps = target.profile, target.caps
    if strict and prof.sizes is not None:
        return [s for s in prof.sizes if s != "auto"]
    out: list[str] = []
    native = f"{caps.native_size[0]}x{caps.native_size[1]}"
    if target.is_local:
        out.append(native)
    suggestions = SIZE_SUGGESTIONS if strict else tuple(
        parse_size(s) for s in PRESET_SIZES) + SIZE_SUGGESTIONS  # type: ignore[operator]
    for w, h in suggestions:
        try:
            _resolve_size(f"{w}x{h}", target, "generations", InputImages(), strict)
            if not caps.upscales:
                _check_generatable(w, h, target)
        except E.OpenAIError:
            continue
        if f"{w}x{h}" not in out:
            out.append(f"{w}x{h}")
    return out
