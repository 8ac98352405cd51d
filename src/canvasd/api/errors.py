"""The OpenAI error envelope and the catalogue of its messages.

Every error leaves the server as ``{"error": {"message", "type", "param", "code"}}`` — validation
errors, auth, unknown routes, wrong methods, malformed bodies and crashes alike. Messages follow
the wording measured on the real API (spec §7.3) so clients that match on text keep working.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("canvasd.api")

INVALID_REQUEST = "invalid_request_error"
USER_ERROR = "image_generation_user_error"  # what gpt-image-2 uses for size / fidelity refusals
SERVER_ERROR = "server_error"


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        }

    def response(self, request_id: str | None = None) -> JSONResponse:
        headers = dict(self.headers)
        if request_id:
            headers["x-request-id"] = request_id
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None,
                type: str = INVALID_REQUEST) -> OpenAIError:
    return OpenAIError(400, message, type=type, param=param, code=code)


# --- the catalogue (spec §7.3) -------------------------------------------------------------------

def quote_list(values: Iterable[str], conj: str = "and") -> str:
    """'a', 'b', and 'c' — OpenAI's enumeration style (Oxford comma from three items on)."""
    items = [f"'{v}'" for v in values]
    if len(items) <= 1:
        return "".join(items)
    if len(items) == 2:
        return f"{items[0]} {conj} {items[1]}"
    return ", ".join(items[:-1]) + f", {conj} {items[-1]}"


def json_type_name(value: Any) -> str:
    """How the real API names a JSON value's type in 'but got … instead'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a file"  # an uploaded file where a scalar was expected


def unknown_parameter(name: str) -> OpenAIError:
    return bad_request(f"Unknown parameter: '{name}'.", name, "unknown_parameter")


def invalid_value(param: str, value: Any, allowed: Iterable[str]) -> OpenAIError:
    return bad_request(
        f"Invalid value: '{value}'. Supported values are: {quote_list(allowed)}.", param, "invalid_value"
    )


def invalid_type(param: str, expected: str, value: Any, *, unconvertible: str | None = None) -> OpenAIError:
    """`expected` reads like 'an integer' or "one of 'low', 'medium', 'high', or 'auto'".

    `unconvertible` is for multipart strings: "an integer" -> "…but got a string value that could
    not be converted into an integer."
    """
    if unconvertible is not None:
        got = f"a string value that could not be converted into {unconvertible}"
        return bad_request(f"Invalid type for '{param}': expected {expected}, but got {got}.",
                           param, "invalid_type")
    got = json_type_name(value)
    return bad_request(f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
                       param, "invalid_type")


def enum_expected(values: Iterable[str]) -> str:
    return "one of " + quote_list(values, "or")


def above_max(param: str, maximum: Any, got: Any, kind: str = "integer") -> OpenAIError:
    code = "integer_above_max_value" if kind == "integer" else "decimal_above_max_value"
    return bad_request(
        f"Invalid '{param}': {kind} above maximum value. Expected a value <= {maximum}, but got {got} instead.",
        param, code,
    )


def below_min(param: str, minimum: Any, got: Any, kind: str = "integer") -> OpenAIError:
    code = "integer_below_min_value" if kind == "integer" else "decimal_below_min_value"
    return bad_request(
        f"Invalid '{param}': {kind} below minimum value. Expected a value >= {minimum}, but got {got} instead.",
        param, code,
    )


def empty_string(param: str) -> OpenAIError:
    return bad_request(
        f"Invalid '{param}': empty string. Expected a string with minimum length 1, but got an empty string instead.",
        param, "empty_string",
    )


def string_too_long(param: str, maximum: int, got: int) -> OpenAIError:
    return bad_request(
        f"Invalid '{param}': string too long. Expected a string with maximum length {maximum}, "
        f"but got a string with length {got} instead.",
        param, "string_above_max_length",
    )


def empty_array(param: str) -> OpenAIError:
    return bad_request(
        f"Invalid '{param}': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        param, "empty_array",
    )


def array_too_long(param: str, maximum: int, got: int) -> OpenAIError:
    return bad_request(
        f"Invalid '{param}': array too long. Expected an array with maximum length {maximum}, "
        f"but got an array with length {got} instead.",
        param, "array_above_max_length",
    )


def missing_required(param: str) -> OpenAIError:
    return bad_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def unsupported_mimetype(param: str, mimetype: str, allowed: Iterable[str]) -> OpenAIError:
    return bad_request(
        f"Invalid file '{param}': unsupported mimetype ('{mimetype}'). "
        f"Supported file formats are {quote_list(allowed)}.",
        param, "unsupported_file_mimetype",
    )


def missing_mimetype(param: str) -> OpenAIError:
    return bad_request(
        f"Invalid file '{param}': failed to determine mimetype. "
        "Ensure you are providing the file's mimetype as part of the 'Content-Type' header.",
        param, "missing_file_mimetype",
    )


def invalid_image_file(param: str, detail: str) -> OpenAIError:
    return bad_request(f"Invalid image file '{param}': {detail}", param, "invalid_image_file")


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404, f"The model `{model}` does not exist or you do not have access to it.",
        param=None, code="model_not_found",
    )


def rate_limited(retry_after_s: float, detail: str) -> OpenAIError:
    seconds = max(1, int(retry_after_s + 0.999))
    return OpenAIError(
        429, f"Rate limit reached for image generation: {detail} Please try again in {seconds}s.",
        type="requests", code="rate_limit_exceeded",
        headers={"Retry-After": str(seconds), "retry-after-ms": str(seconds * 1000)},
    )


def missing_api_key() -> OpenAIError:
    return OpenAIError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). API keys are configured by this "
        "server's administrator.",
        code=None,
    )


def mask_key(key: str) -> str:
    """sk-ab***xy: enough to recognise a key, never enough to reuse it."""
    if len(key) < 8:
        return "*" * len(key)
    return f"{key[:5]}***{key[-2:]}"


def invalid_api_key(key: str) -> OpenAIError:
    return OpenAIError(
        401,
        f"Incorrect API key provided: {mask_key(key)}. Ask this server's administrator for a valid key.",
        code="invalid_api_key",
    )


def server_error(message: str | None = None, *, retry: bool = False, status: int = 500) -> OpenAIError:
    """5xx. `x-should-retry: false` unless the failure is transient: a retried image costs a whole
    generation again."""
    return OpenAIError(
        status,
        message or "The server had an error while processing your request. Sorry about that!",
        type=SERVER_ERROR, code=None if status == 500 else "server_unavailable",
        headers={"x-should-retry": "true" if retry else "false"},
    )


def not_ready(detail: str) -> OpenAIError:
    e = server_error(detail, retry=True, status=503)
    e.headers["Retry-After"] = "5"
    return e


def request_too_large(limit_bytes: int) -> OpenAIError:
    return OpenAIError(413, f"Request body too large: the limit is {limit_bytes // 2**20} MB.",
                       code="request_too_large")


def invalid_multipart() -> OpenAIError:
    return bad_request("Invalid multipart body: it could not be parsed.")


def invalid_json() -> OpenAIError:
    return bad_request(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
        "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
        "valid JSON.)"
    )


# --- wiring -------------------------------------------------------------------------------------

def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def install_error_handlers(app: FastAPI) -> None:
    """Every error path answers with the envelope (uncaught exceptions are handled by the
    request-context middleware, which also sees errors raised outside routes)."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response(_request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = OpenAIError(404, f"Invalid URL ({request.method} {request.url.path})")
        elif exc.status_code == 405:
            err = OpenAIError(405, f"Invalid method for URL ({request.method} {request.url.path})")
        else:
            err = OpenAIError(exc.status_code, str(exc.detail))
        err.headers.update(exc.headers or {})
        return err.response(_request_id(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        return bad_request(first.get("msg", "Invalid request."), ".".join(loc) or None).response(
            _request_id(request))
