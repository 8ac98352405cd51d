"""The published `/openapi.json`: the request bodies the server really accepts, and its responses.

The routes read their bodies themselves (rules.py gives OpenAI's exact errors), so FastAPI cannot
infer their schemas; this module writes them from the same tables the validator uses
(`rules.DOCUMENTED` for the keys of each endpoint and body kind, rules' ranges and enums for the
values), so the document and the validator cannot drift apart. Values are the union over models
(permissive mode): a request that fits the schema may still be refused for its model, with a 400
in the error envelope that the schema documents too. Unknown keys are refused
(`additionalProperties: false`), as the validator does.
"""

from __future__ import annotations

from typing import Any

from canvasd.api import rules
from canvasd.api.protocol import ErrorEvent, ImagesResponse

JSON = "application/json"
FORM = "multipart/form-data"
SSE = "text/event-stream"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _int(lo: int | None, hi: int | None) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "integer"}
    if lo is not None:
        s["minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    return s


def _num(lo: float, hi: float) -> dict[str, Any]:
    return {"type": "number", "minimum": lo, "maximum": hi}


def _enum(values: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "string", "enum": list(dict.fromkeys(values))}


def _all_qualities() -> tuple[str, ...]:
    seen: list[str] = []
    for prof in (*rules.PROFILES.values(), rules.LOCAL):
        seen.extend(q for q in prof.quality if q not in seen)
    return tuple(seen)


BINARY = {"type": "string", "format": "binary"}
IMAGE_REF = {
    "type": "object",
    "description": "An input image: a base64 data URL (the server never fetches http(s) URLs; "
                   "file ids need a Files API, which this server has not).",
    "properties": {"image_url": {"type": "string", "maxLength": 20_971_520},
                   "file_id": {"type": "string"}},
    "additionalProperties": False,
}
LORA_ITEM = {"anyOf": [{"type": "string", "minLength": 1}, {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "scale": {"type": ["number", "null"]}}}]}
LORA_JSON = {"description": "The model's configured LoRA adapters to apply: a name, or a list of "
                            "names and {name, scale} objects ([] = none).",
             "anyOf": [{"type": "string"}, {"type": "array", "items": LORA_ITEM}]}
LORA_FORM = {"type": "string", "description": "Adapter names, comma-separated, each optionally "
                                              "name:scale (e.g. 'ink:0.5, neon')."}
SVG_OPTIONS = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "reasoning": {"type": "object", "properties": {"effort": _enum(rules.SVG_EFFORT)},
                      "additionalProperties": False},
    },
    "additionalProperties": False,
}


def _scalar_schemas() -> dict[str, dict[str, Any]]:
    """Every scalar parameter any endpoint documents, by name (values: the union over models)."""
    return {
        "prompt": {"type": "string", "minLength": 1, "maxLength": 32000},
        "model": {"type": "string", "description": "An OpenAI model name (alias) or a local model id."},
        "n": _int(rules.N_MIN, 10),
        "quality": _enum(_all_qualities()),
        "response_format": _enum(rules.RESPONSE_FORMATS),
        "size": {"type": "string", "pattern": r"^(auto|[0-9]{1,6}x[0-9]{1,6})$",
                 "description": "'auto' or WIDTHxHEIGHT."},
        "style": _enum(rules.STYLES),
        "user": {"type": "string"},
        "output_format": _enum(rules.OUTPUT_FORMATS + ("svg",)),
        "output_compression": _int(*rules.COMPRESSION),
        "background": _enum(rules.BACKGROUNDS),
        "moderation": _enum(rules.MODERATION),
        "stream": {"type": "boolean"},
        "partial_images": _int(*rules.PARTIAL_IMAGES),
        "safety_identifier": {"type": "string"},
        "complexity": _enum(rules.COMPLEXITY),
        "frame_count": _int(*rules.FRAME_COUNT),
        "frame_duration_ms": _int(0, 655_350),
        "input_fidelity": _enum(rules.FIDELITY),
        "seed": _int(*rules.SEED),
        "num_inference_steps": _int(*rules.STEPS),
        "guidance_scale": _num(*rules.GUIDANCE),
        "negative_prompt": {"type": "string"},
        "strength": _num(*rules.STRENGTH),
    }


def _body_schema(endpoint: rules.Endpoint, source: rules.Source, strict: bool) -> dict[str, Any]:
    scalars = _scalar_schemas()
    keys = set(rules.DOCUMENTED[(endpoint, source)])
    if not strict:  # permissive mode's Automatic1111-style aliases of the extensions
        for alias, target in rules.PARAM_ALIASES.items():
            scalars[alias] = scalars[target]
            keys.add(alias)
    props: dict[str, Any] = {}
    for key in sorted(keys):
        if key == "image":
            props[key] = BINARY if endpoint == "variations" else {
                "anyOf": [BINARY, {"type": "array", "items": BINARY, "minItems": 1, "maxItems": 16}]}
        elif key in ("mask", "markup"):
            props[key] = BINARY if source == "form" else _nullable(IMAGE_REF)
        elif key == "images":
            props[key] = {"type": "array", "items": IMAGE_REF, "minItems": 1, "maxItems": 16}
        elif key == "lora":
            props[key] = LORA_FORM if source == "form" else _nullable(LORA_JSON)
        elif key == "svg":
            props[key] = SVG_OPTIONS if source == "form" else _nullable(SVG_OPTIONS)
        else:
            schema = scalars[key]
            # JSON: `null` means "not given" (spec §1.5); multipart has no null
            props[key] = _nullable(schema) if source == "json" and key not in ("prompt",) else schema
    required = [k for k in ("prompt", "image", "images") if k in props]
    if endpoint == "variations":
        required = ["image"]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _error_responses(*statuses: int) -> dict[str, Any]:
    text = {400: "Invalid request (the OpenAI error envelope)", 401: "Missing or invalid API key",
            403: "Invalid signature", 404: "Not found / unknown model", 405: "Method not allowed",
            410: "Expired", 413: "Body too large", 429: "Queue full (Retry-After)",
            500: "Server error", 503: "Not ready or shutting down"}
    return {str(s): {"description": text[s], "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for s in statuses}


def _image_operation(endpoint: rules.Endpoint, summary: str, bodies: dict[str, rules.Source],
                     streams: bool) -> dict[str, Any]:
    content = {mime: {"schema": {"$ref": f"#/components/schemas/{_schema_name(endpoint, src)}"}}
               for mime, src in bodies.items()}
    ok: dict[str, Any] = {JSON: {"schema": {"$ref": "#/components/schemas/ImagesResponse"}}}
    if streams:
        ok[SSE] = {"schema": {"type": "string"},
                   "description": "`stream: true`: partial_image and completed events, or an error event"}
    return {
        "summary": summary,
        "operationId": f"images_{endpoint}",
        "requestBody": {"required": True, "content": content},
        "responses": {"200": {"description": "The images", "content": ok},
                      **_error_responses(400, 401, 404, 413, 429, 500, 503)},
    }


def _schema_name(endpoint: str, source: str) -> str:
    return {("generations", "json"): "CreateImageRequest",
            ("edits", "form"): "CreateImageEditRequest",
            ("edits", "json"): "EditImageBodyJson",
            ("variations", "form"): "CreateImageVariationRequest"}[(endpoint, source)]


def _pydantic_schemas() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in (ImagesResponse, ErrorEvent):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def build_openapi(*, title: str, version: str, auth: bool, strict: bool) -> dict[str, Any]:
    error = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
    model = {"type": "object", "required": ["id", "object", "created", "owned_by"],
             "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                            "created": {"type": "integer"}, "owned_by": {"type": "string"},
                            "root": {"type": "string"}}}
    schemas: dict[str, Any] = {
        _schema_name(e, s): _body_schema(e, s, strict) for e, s in rules.DOCUMENTED}
    schemas.update(_pydantic_schemas())
    schemas.update(Error=error, Model=model, ModelList={
        "type": "object", "required": ["object", "data"],
        "properties": {"object": {"const": "list"},
                       "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}})
    json_ok = lambda ref, d: {"description": d, "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}  # noqa: E731
    paths: dict[str, Any] = {
        "/v1/images/generations": {"post": _image_operation(
            "generations", "Create images from a prompt", {JSON: "json"}, True)},
        "/v1/images/edits": {"post": _image_operation(
            "edits", "Edit or extend images", {FORM: "form", JSON: "json"}, True)},
        "/v1/images/variations": {"post": _image_operation(
            "variations", "Variations of an image (dall-e-2 semantics)", {FORM: "form"}, False)},
        "/v1/images/files/{name}": {"get": {
            "summary": "A stored image behind a signed `url`", "operationId": "image_file",
            "security": [],
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "expires", "in": "query", "required": True, "schema": {"type": "string"}},
                {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The image", "content": {
                m: {"schema": BINARY} for m in ("image/png", "image/jpeg", "image/webp", "image/svg+xml")}},
                **_error_responses(403, 404, 410)}}},
        "/v1/models": {"get": {"summary": "Models and OpenAI aliases", "operationId": "list_models",
                               "responses": {"200": json_ok("ModelList", "The models"),
                                             **_error_responses(401)}}},
        "/v1/models/{model}": {"get": {
            "summary": "One model", "operationId": "get_model",
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": json_ok("Model", "The model"), **_error_responses(401, 404)}}},
        "/health": {"get": {"summary": "Liveness", "operationId": "health", "security": [],
                            "responses": {"200": {"description": "Alive", "content": {JSON: {"schema": {
                                "type": "object", "properties": {"status": {"type": "string"}}}}}}}}},
        "/ready": {"get": {"summary": "Readiness", "operationId": "ready", "security": [],
                           "responses": {"200": {"description": "Ready", "content": {JSON: {"schema": {
                               "type": "object"}}}}, **_error_responses(503)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics", "security": [],
                             "responses": {"200": {"description": "Metrics", "content": {
                                 "text/plain": {"schema": {"type": "string"}}}}}}},
    }
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "OpenAI Images API (generations, edits, variations) served by canvasd. "
                                "Every path is also served without the /v1 prefix."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"ApiKeyAuth": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"ApiKeyAuth": []}]
    return doc
