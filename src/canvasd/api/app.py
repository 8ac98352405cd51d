"""The FastAPI app: OpenAI Images routes (with and without /v1), models, files, health, metrics.

Request path: middleware (request id, access log, metrics, crash → 500 envelope) → auth →
body intake (JSON / bounded multipart) → rules.validate (→ Job + output options) → engine →
render (thread) → JSON or SSE. No torch is imported here: backends are reached only through the
registry and the engine.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from canvasd import __version__, metrics
from canvasd.api import errors as E
from canvasd.api import rules
from canvasd.api.bodytimeout import BodyReadTimeout
from canvasd.api.images import load_form_images, load_json_images
from canvasd.api.jsonbody import parse_json_object
from canvasd.api.jsonstream import parse_json_edit, spool_body
from canvasd.api.multipart import JSON_BODY_MAX, read_limited, read_multipart, total_body_limit
from canvasd.api.openapi import build_openapi
from canvasd.api.protocol import ImageData, Usage, build_response, compute_usage
from canvasd.api.render import Renderer, b64
from canvasd.api.streaming import sse_response
from canvasd.api.urls import TrustedProxies, public_base
from canvasd.contracts import Cancelled, word_count_tokens
from canvasd.engine.client import EngineClient, JobHandle
from canvasd.engine.events import (
    EngineError,
    JobTimeout,
    ModelUnavailable,
    OutOfDeviceMemory,
    QueueFull,
    ShuttingDown,
    WorkerLost,
)
from canvasd.media.store import Expired, ImageStorage, InvalidSignature, NotFound, open_store
from canvasd.settings import OPENAI_ALIASES, Settings
from canvasd.backends.registry import ModelRegistry
from canvasd.web import mount_playground

log = logging.getLogger("canvasd.api")
access_log = logging.getLogger("canvasd.access")

IMAGE_ENDPOINTS = ("images/generations", "images/edits", "images/variations")


class RequestContext:
    """Pure ASGI middleware: x-request-id and x-canvasd-server (which server process answered:
    with several ingress replicas behind one address, operators and tests need to know) on every
    response, one access-log line and the HTTP metrics per request, and the OpenAI 500 envelope
    for anything that escaped the routes."""

    def __init__(self, app: ASGIApp, server_name: str = ""):
        self.app = app
        self.server_name = server_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        access: dict[str, Any] = {}
        state["access"] = access
        started = time.perf_counter()
        status: list[int] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers.append("x-request-id", request_id)
                if self.server_name:
                    headers.append("x-canvasd-server", self.server_name)
                headers.append("openai-processing-ms", str(int((time.perf_counter() - started) * 1000)))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error (request %s)", request_id)
            if not status:
                response = E.server_error().response()
                await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            code = status[0] if status else 500
            endpoint = _endpoint_label(scope.get("path", ""))
            metrics.REQUESTS.labels(endpoint, str(code)).inc()
            metrics.REQUEST_SECONDS.labels(endpoint).observe(elapsed)
            if endpoint not in ("metrics", "health", "ready"):
                line = {"request_id": request_id, "method": scope.get("method"),
                        "path": scope.get("path"), "status": code, "total_s": round(elapsed, 3)}
                line.update(access)
                access_log.info(json.dumps(line, default=str))


def _endpoint_label(path: str) -> str:
    p = path[3:] if path.startswith("/v1/") else path
    p = p.strip("/")
    if p in IMAGE_ENDPOINTS or p in ("models", "health", "ready", "metrics"):
        return p
    if p.startswith("images/files/"):
        return "images/files"
    if p.startswith("models/"):
        return "models"
    return "other"


class Service:
    """Everything the routes share."""

    def __init__(self, settings: Settings, registry: ModelRegistry, engine: EngineClient, store: ImageStorage):
        self.settings = settings
        self.registry = registry
        self.engine = engine
        self.store = store
        self.renderer = Renderer(settings.render_threads)
        self.proxies = TrustedProxies(tuple(settings.forwarded_allow_ips))
        self.draining = False
        self._drain_thread: threading.Thread | None = None
        self.created = int(time.time())
        # uploads are decoded (and data URLs parsed) by at most `decode_threads` threads at once:
        # each may hold up to `max_request_pixels` decoded pixels
        self._decode_limiters: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def decode_limiter(self) -> anyio.CapacityLimiter:
        loop = asyncio.get_running_loop()  # anyio limiters belong to one event loop
        if (lim := self._decode_limiters.get(loop)) is None:
            lim = self._decode_limiters[loop] = anyio.CapacityLimiter(self.settings.decode_threads)
        return lim

    # --- shutdown -------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Shutdown starts now (the server calls this on SIGTERM, before it waits for
        connections): the engine stops admitting, fails what is queued, and cancels what still
        runs `shutdown_timeout_s` from now. Idempotent; returns at once."""
        if self.draining:
            return
        self.draining = True
        log.info("shutting down: running jobs have %.0fs to finish", self.settings.shutdown_timeout_s)
        self._drain_thread = threading.Thread(
            target=self.engine.shutdown, args=(self.settings.shutdown_timeout_s,),
            name="canvasd-drain", daemon=True)
        self._drain_thread.start()

    # --- guards ---------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        keys = self.settings.api_keys
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise E.missing_api_key()
        ok = False
        for key in keys:  # no short circuit: timing does not reveal which key is close
            ok |= hmac.compare_digest(token.encode(), key.encode())
        if not ok:
            raise E.invalid_api_key(token)

    def ensure_ready(self) -> None:
        """Refuse only when no model can serve; a request for a model still loading is queued by
        the engine and waits for the load."""
        if self.registry.load_error is not None:
            raise E.server_error(f"Model loading failed: {self.registry.load_error}", status=503)

    def join_drain(self) -> None:
        if self._drain_thread is not None:
            self._drain_thread.join()

    # --- urls -----------------------------------------------------------------------------
    def public_base(self, request: Request) -> str:
        return public_base(request, public_base_url=self.settings.public_base_url, proxies=self.proxies)

    # --- engine errors --------------------------------------------------------------------
    def map_engine_error(self, exc: BaseException) -> E.OpenAIError:
        if isinstance(exc, E.OpenAIError):
            return exc
        if isinstance(exc, JobTimeout):
            return E.server_error(
                f"Image generation did not finish within {self.settings.request_timeout_s:.0f} seconds.")
        if isinstance(exc, ShuttingDown):
            return E.server_error("The server is shutting down; retry shortly.", retry=True, status=503)
        if isinstance(exc, Cancelled):
            return E.server_error("The request was cancelled.")
        if isinstance(exc, WorkerLost):
            return E.server_error(f"{exc} Retry the request.", retry=True)
        if isinstance(exc, OutOfDeviceMemory):
            return E.server_error(str(exc))
        if isinstance(exc, ModelUnavailable):
            return E.server_error(str(exc), status=503)
        log.error("generation failed: %r", exc, exc_info=exc)
        return E.server_error()

    async def submit(self, plan: rules.Plan) -> JobHandle:
        """Queue the job; returns once an engine has accepted it (a remote engine may refuse it
        only then: its queue full -> the same 429)."""
        self.ensure_ready()
        try:
            handle = self.engine.submit(plan.job)
            await handle.accepted()
            return handle
        except QueueFull as exc:
            metrics.REJECTED.inc()
            raise E.rate_limited(exc.retry_after, "the server's image queue is full.") from None
        except EngineError as exc:  # ShuttingDown, ...
            raise self.map_engine_error(exc) from None

    def usage_for(self, plan: rules.Plan, n_images: int, handle: JobHandle) -> Usage:
        # the engine counts the prompt's tokens on its own thread (a backend's tokenizer is not
        # safe to use from here while the engine samples), so the API never calls a backend
        tokens = handle.prompt_tokens
        if tokens is None:  # pragma: no cover - usage is computed after the job finished
            tokens = word_count_tokens(plan.job.prompt)
        return compute_usage(tokens, plan.input_sizes, plan.out, n_images)

    # --- the generation round trip --------------------------------------------------------
    async def run(self, request: Request, plan: rules.Plan) -> Response:
        access = request.state.access
        access.update(model=plan.model, n=plan.job.n, size=plan.out.size, quality=plan.out.quality,
                      steps=plan.job.steps, stream=plan.out.stream, seed=plan.job.seed)
        handle = await self.submit(plan)
        if plan.out.stream:
            response = sse_response(handle, plan, lambda n: self.usage_for(plan, n, handle),
                                    self.map_engine_error, access, self.renderer,
                                    keepalive_s=self.settings.sse_keepalive_s)
            response.headers["x-canvasd-replica"] = handle.worker
            return response
        watcher = asyncio.create_task(_cancel_on_disconnect(request, handle))
        try:
            images = await handle.result()
        except Exception as exc:  # noqa: BLE001
            if handle.job.cancelled and await request.is_disconnected():
                access["disconnected"] = True
                return Response(status_code=499)
            raise self.map_engine_error(exc) from None
        finally:
            watcher.cancel()
        access.update({k: round(v, 3) for k, v in handle.timings.items()})
        t0 = time.perf_counter()
        encoded = await self.renderer.all(images, plan.out)
        usage = await anyio.to_thread.run_sync(self.usage_for, plan, len(encoded), handle)
        data = []
        for blob in encoded:
            if plan.out.response_format == "url":
                stored = await anyio.to_thread.run_sync(self.store.save, blob, plan.out.output_format)
                url = self.store.link(stored, self.public_base(request))
                data.append(ImageData(url=url))
            else:
                data.append(ImageData(b64_json=b64(blob)))
        access["encode_s"] = round(time.perf_counter() - t0, 3)
        body = build_response(int(time.time()), data, plan.out, usage, plan.safety_identifier,
                              plan.job.prompt)
        access["replica"] = handle.worker
        return JSONResponse(body, headers={"x-canvasd-replica": handle.worker})


async def _cancel_on_disconnect(request: Request, handle: JobHandle) -> None:
    """Cancel the job when the client goes away (the request body is already consumed, so the
    next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            return


def _note_model(request: Request, raw: dict[str, Any]) -> None:
    """The requested model goes into the access log even when validation refuses the request."""
    if isinstance(raw.get("model"), str):
        request.state.access["model"] = raw["model"][:100]


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def create_app(settings: Settings, registry: ModelRegistry | None = None,
               engine: EngineClient | None = None, server_name: str | None = None) -> FastAPI:
    """`engine`: canvasd's in-process `Engine` by default, or another `EngineClient`
    (`canvasd.serve.ray_client.RayEngineClient`); `server_name` goes out as x-canvasd-server
    (default host:pid)."""
    registry = registry if registry is not None else ModelRegistry(settings)
    if engine is None:
        from canvasd.engine.scheduler import Engine

        engine = Engine(registry.backends, settings, models=registry)
    secret = settings.url_secret.encode() if settings.url_secret else os.urandom(32)
    store = open_store(settings.image_store or str(settings.image_dir), secret, settings.url_ttl_s,
                       endpoint_url=settings.s3_endpoint_url, presigned_urls=settings.s3_presigned_urls)
    svc = Service(settings, registry, engine, store)
    strict = settings.compat == "strict"

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not settings.api_keys:
            log.warning("no API keys configured: the API is open to anyone who can reach it "
                        "(set CANVASD_API_KEYS or --api-key)")
        # The preloaded models load on a thread that ends after loading: a long-lived thread that
        # ran torch work keeps its OpenMP team, which made the engine thread's steps ~1.7x slower
        # (see bench/scenarios.py, in_fresh_thread). The others load on their first request
        # (backends/registry.py).
        threading.Thread(target=registry.preload, name="canvasd-load", daemon=True).start()
        engine.start()
        store.start_sweeper(60)
        try:
            yield
        finally:
            svc.begin_drain()  # no-op when the server already started it on its signal
            await anyio.to_thread.run_sync(svc.join_drain)
            store.stop_sweeper()

    app = FastAPI(title="canvasd", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.state.service = svc
    # the routes read their bodies themselves: the document is written from the validator's tables
    app.openapi = lambda: build_openapi(  # type: ignore[method-assign]
        title="canvasd", version=__version__, auth=bool(settings.api_keys), strict=strict)
    app.add_middleware(BodyReadTimeout, timeout_s=settings.body_timeout_s)
    app.add_middleware(RequestContext, server_name=server_name or f"{socket.gethostname()}:{os.getpid()}")
    E.install_error_handlers(app)

    # --- image endpoints -----------------------------------------------------------------
    limits = dict(max_upload_bytes=settings.max_upload_bytes, max_upload_pixels=settings.max_upload_pixels,
                  max_request_pixels=settings.max_request_pixels)

    async def validate_form(request: Request, endpoint: rules.Endpoint) -> rules.Plan:
        """Multipart intake (bounded while streaming) + validation, for edits and variations."""
        form = await read_multipart(request.headers["content-type"], request.stream(),
                                    settings.max_upload_bytes)
        _note_model(request, form.fields)
        try:
            return await anyio.to_thread.run_sync(lambda: rules.validate(
                endpoint, "form", form.fields, registry=registry, strict=strict,
                load_images=lambda r: load_form_images(form, r), **limits), limiter=svc.decode_limiter())
        finally:
            form.close()

    async def generations(request: Request) -> Response:
        svc.authorize(request)
        if _content_type(request) in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raise E.bad_request(
                "Invalid Content-Type header: /v1/images/generations expects 'application/json'.",
                None, "invalid_content_type")
        raw = parse_json_object(await read_limited(request.stream(), JSON_BODY_MAX))
        _note_model(request, raw)
        plan = rules.validate("generations", "json", raw, registry=registry, strict=strict)
        return await svc.run(request, plan)

    async def edits(request: Request) -> Response:
        svc.authorize(request)
        if _content_type(request) == "multipart/form-data":
            plan = await validate_form(request, "edits")
        else:
            spool = await spool_body(request.stream(), total_body_limit(settings.max_upload_bytes) * 4 // 3)
            files: list = []
            try:
                raw, files = await anyio.to_thread.run_sync(parse_json_edit, spool, limiter=svc.decode_limiter())
                spool.close()
                _note_model(request, raw)
                plan = await anyio.to_thread.run_sync(lambda: rules.validate(
                    "edits", "json", raw, registry=registry, strict=strict,
                    load_images=lambda r: load_json_images(raw, r), **limits), limiter=svc.decode_limiter())
            finally:
                spool.close()
                for f in files:
                    f.close()
        return await svc.run(request, plan)

    async def variations(request: Request) -> Response:
        svc.authorize(request)
        if _content_type(request) != "multipart/form-data":
            raise E.bad_request(
                "Invalid Content-Type header: /v1/images/variations expects 'multipart/form-data'.",
                None, "invalid_content_type")
        return await svc.run(request, await validate_form(request, "variations"))

    for prefix in ("/v1", ""):
        app.add_api_route(f"{prefix}/images/generations", generations, methods=["POST"])
        app.add_api_route(f"{prefix}/images/edits", edits, methods=["POST"])
        app.add_api_route(f"{prefix}/images/variations", variations, methods=["POST"])

    # --- stored images behind `url` responses --------------------------------------------
    async def image_file(request: Request, name: str) -> Response:
        q = request.query_params
        try:
            body = await anyio.to_thread.run_sync(store.fetch, name, q.get("expires", ""), q.get("sig", ""))
        except InvalidSignature:
            raise E.OpenAIError(403, "Invalid image URL: the signature does not match.",
                                code="invalid_signature") from None
        except Expired:
            raise E.OpenAIError(410, "This image URL has expired; generate the image again.",
                                code="url_expired") from None
        except NotFound:
            raise E.OpenAIError(404, "No such image.", code="not_found") from None
        headers = {"Cache-Control": f"private, max-age={settings.url_ttl_s}"}
        if body.path is not None:
            return FileResponse(body.path, media_type=body.media_type, headers=headers)
        return Response(body.data, media_type=body.media_type, headers=headers)

    app.add_api_route("/v1/images/files/{name}", image_file, methods=["GET"])
    app.add_api_route("/images/files/{name}", image_file, methods=["GET"])

    # --- models ------------------------------------------------------------------------------
    def model_entries() -> list[dict[str, Any]]:
        # Extension fields (SDKs keep unknown fields): `capabilities`, what the model honours, and
        # its load state, device and dtype (registry.describe).
        entries = [{"id": mid, "object": "model", "created": svc.created, "owned_by": "canvasd",
                    "capabilities": rules.model_abilities(mid, registry, strict), **registry.describe(mid)}
                   for mid in registry.backends]
        names = list(OPENAI_ALIASES) + [a for a in settings.aliases if a not in OPENAI_ALIASES]
        for name in names:
            target = registry.resolve(name)
            if target in registry.backends and name not in registry.backends:
                entries.append({"id": name, "object": "model", "created": svc.created,
                                "owned_by": "canvasd", "root": target,
                                "capabilities": rules.model_abilities(name, registry, strict)})
        return entries

    async def list_models(request: Request) -> Response:
        svc.authorize(request)
        return JSONResponse({"object": "list", "data": model_entries()})

    async def get_model(request: Request, model: str) -> Response:
        svc.authorize(request)
        for entry in model_entries():
            if entry["id"] == model:
                return JSONResponse(entry)
        raise E.model_not_found(model)

    for prefix in ("/v1", ""):
        app.add_api_route(f"{prefix}/models", list_models, methods=["GET"])
        app.add_api_route(f"{prefix}/models/{{model:path}}", get_model, methods=["GET"])

    # --- operations ----------------------------------------------------------------------------
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        if svc.draining:
            raise E.server_error("The server is shutting down.", retry=True, status=503)
        if registry.load_error is not None:
            raise E.server_error(f"Model loading failed: {registry.load_error}", status=503)
        if not registry.ready:
            raise E.not_ready("Models are loading.")
        body = {"status": "ready", "models": list(registry.backends),
                "states": {mid: registry.state(mid) for mid in registry.backends}, "engine": engine.stats()}
        if failed := registry.failed():
            body["failed"] = failed  # ready: the other models serve; these answer with the error
        return JSONResponse(body)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/ready", ready, methods=["GET"])
    app.add_api_route("/metrics", prometheus, methods=["GET"])
    mount_playground(app)
    return app
