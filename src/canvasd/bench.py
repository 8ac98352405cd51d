"""`canvasd bench`: throughput and latency of canvasd, side by side, in one invocation.

Scenarios, all on the same model and the same request plan:
  engine       (a) canvasd without HTTP, in this process: each request body is validated by the
                   API's rules into a job for an `Engine`, and its images are fitted and encoded
                   by the API's renderer - the same bytes (b) sends, minus HTTP/JSON/base64.
  http         (b) canvasd over HTTP: a real uvicorn on 127.0.0.1 serving `create_app`, called
                   with the official `openai` SDK (AsyncOpenAI), step-level batching on.
  http-serial  (c) the same with batching off: one job at a time, the peers' design.

Each scenario runs every concurrency level (closed loop: C clients, each sending its next request
when the previous one answers), non-streamed and/or streamed (with partial images). All scenarios
are started first and stay up; each level then runs in every scenario back to back, the order
rotating from level to level and round to round (`rounds`), so a ratio compares measurements taken
within seconds of each other rather than minutes apart on a machine whose speed drifts. Reported per
level: images/s, latency p50/p95/p99, time to first partial image (streamed), peak RSS of the
serving process, mean samples per denoising step. Output: a JSON file, a PNG plot, the ratios
(b)/(a) and (b)/(c) per concurrency, and a markdown table for the README.

Bounded by construction: requests go only to 127.0.0.1; each level sends a fixed number of
requests and stops early at `level_timeout_s`; every server process is stopped and joined.

`model="fake"` benchmarks the harness itself with `FakeBackend` (sleep-simulated step cost:
no model, numbers are not canvasd's performance).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from canvasd.config import EMBEDDED_MODEL_ID, ModelSpec, Settings

SCENARIOS = ("engine", "http", "http-serial")
SCENARIO_LABELS = {
    "engine": "(a) engine, no HTTP",
    "http": "(b) HTTP, batching",
    "http-serial": "(c) HTTP, serial",
}
PROMPTS = (
    "a red apple", "a smiling cat face", "a blue car", "a slice of pizza", "a rocket",
    "a green frog", "a yellow star", "a birthday cake", "a sleeping dog", "a sunflower",
)
MIXED_SIZES = ("1024x1024", "1536x1024", "1024x1536")
MIXED_QUALITIES = ("low", "medium", "high")
FAKE_MODEL = "fake"
LOOPBACK = "127.0.0.1"
BENCH_KEY = "canvasd-bench-key"  # the servers the bench starts accept only this key


@dataclass
class BenchConfig:
    model: str | None = None  # None: the embedded model; "name=/path": a local folder; "fake"
    scenarios: tuple[str, ...] = SCENARIOS
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    requests: int | None = None  # per level and round; None: max(8, 3 x concurrency)
    rounds: int = 1  # times each level is measured per scenario (interleaved), pooled
    stream: str = "both"  # off | on | both
    partial_images: int = 2  # streamed runs
    size: str = "1024x1024"
    quality: str = "low"
    mixed: bool = False  # cycle sizes x qualities instead of one size/quality
    client_model: str = "gpt-image-1"  # the `model` the SDK sends (an alias of the bench model)
    max_batch: int | None = None  # None: Settings' default
    threads: int | None = None  # torch threads; None: all cores
    precision: str = "auto"  # the denoiser's: auto | fp32 | bf16 (Settings.precision)
    level_timeout_s: float = 300.0  # a level stops sending after this long
    ready_timeout_s: float = 600.0  # server start + model load
    app_factory: str = "canvasd.api.app:create_app"  # module:function(settings, ...) -> ASGI app
    out_dir: Path = Path("benchmarks/results")
    quick: bool = False  # concurrency 1,4 and max(4, 2 x concurrency) requests per level
    progress: bool = True

    def effective(self) -> "BenchConfig":
        cfg = self
        if cfg.quick:
            cfg = replace(cfg, concurrency=(1, 4))
        unknown = set(cfg.scenarios) - set(SCENARIOS)
        if unknown:
            raise ValueError(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
        if cfg.stream not in ("off", "on", "both"):
            raise ValueError("stream must be off, on or both")
        if cfg.rounds < 1:
            raise ValueError("rounds must be at least 1")
        return cfg

    def requests_at(self, c: int) -> int:
        if self.requests:
            base = self.requests
        else:
            base = max(4, 2 * c) if self.quick else max(8, 3 * c)
        return max(base, c)  # every client sends at least one request

    def stream_modes(self) -> list[bool]:
        return {"off": [False], "on": [True], "both": [False, True]}[self.stream]


@dataclass
class RequestSpec:
    index: int
    prompt: str
    size: str
    quality: str
    seed: int


@dataclass
class LevelResult:
    scenario: str
    stream: bool
    concurrency: int
    requests: int
    ok: int
    errors: int
    images: int
    wall_s: float
    images_per_s: float
    latency_s: dict[str, float | None]
    ttfp_s: dict[str, float | None] | None
    peak_rss_mb: float | None
    mean_batch: float | None
    first_error: str | None = None


# ---------------------------------------------------------------------------- request plan ---
def request_plan(cfg: BenchConfig, count: int) -> list[RequestSpec]:
    plan = []
    for i in range(count):
        if cfg.mixed:
            size, quality = MIXED_SIZES[i % 3], MIXED_QUALITIES[(i // 3) % 3]
        else:
            size, quality = cfg.size, cfg.quality
        plan.append(RequestSpec(i, PROMPTS[i % len(PROMPTS)], size, quality, seed=1000 + i))
    return plan


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    xs = sorted(values)

    def q(p: float) -> float:  # linear interpolation between closest ranks
        pos = (len(xs) - 1) * p
        lo, hi = math.floor(pos), math.ceil(pos)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return {"p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "mean": sum(xs) / len(xs)}


# ---------------------------------------------------------------------------- models ---------
def model_spec(model: str | None) -> ModelSpec:
    if model in (None, ""):
        return ModelSpec(id=EMBEDDED_MODEL_ID, backend="emoji")
    if model == FAKE_MODEL:
        return ModelSpec(id=FAKE_MODEL, backend="fake")  # type: ignore[arg-type] - bench only
    from canvasd.cli import parse_model_arg

    return parse_model_arg(model)


def fake_backend():
    """CPU-like cost shape (measured for small UNets: ~15 ms at batch 1, ~40 ms at batch 8)."""
    from canvasd.backends.fake import FakeBackend

    return FakeBackend(FAKE_MODEL, step_s=0.012, per_sample_s=0.0035)


def build_backends(spec: ModelSpec, precision: str = "auto") -> dict[str, Any]:
    if spec.backend == "fake":
        return {spec.id: fake_backend()}
    from canvasd.registry import build_backend

    return {spec.id: build_backend(spec, precision)}


def scenario_settings(cfg: BenchConfig, spec: ModelSpec, batching: bool, image_dir: str) -> Settings:
    max_c = max(cfg.concurrency)
    s = Settings(models=[spec], batching=batching, torch_threads=cfg.threads, precision=cfg.precision,
                 max_queue=max(64, 4 * max_c), image_dir=Path(image_dir), api_keys=[BENCH_KEY])
    if cfg.max_batch:
        s.max_batch = cfg.max_batch
    return s


# ---------------------------------------------------------------------------- measuring ------
class RssSampler:
    """Peak resident memory of one process, sampled every 50 ms on a background thread."""

    def __init__(self, pid: int):
        import psutil

        self._proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-rss")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._proc.memory_info().rss)
            except Exception:  # process gone
                return
            self._stop.wait(0.05)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


RequestFn = Callable[[RequestSpec, bool], Awaitable[tuple[float, float | None, int]]]
BatchProbe = Callable[[], "tuple[float, float] | None"]


@dataclass
class Runner:
    """One scenario, started and warmed up, ready to be sent levels of requests."""
    scenario: str
    do_request: RequestFn
    rss_pid: int  # the process whose peak RSS is reported
    batch_probe: BatchProbe  # (sum, count) of the engine's batch-size histogram


@dataclass
class LevelSamples:
    """What one scenario measured at one level, pooled over rounds."""
    latencies: list[float] = field(default_factory=list)
    ttfps: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    images: int = 0
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    batch_sum: float = 0.0
    batch_count: float = 0.0

    def result(self, scenario: str, stream: bool, concurrency: int) -> LevelResult:
        mean_batch = round(self.batch_sum / self.batch_count, 2) if self.batch_count > 0 else None
        return LevelResult(
            scenario=scenario, stream=stream, concurrency=concurrency, requests=self.requests,
            ok=len(self.latencies), errors=len(self.errors), images=self.images, wall_s=round(self.wall_s, 3),
            images_per_s=round(self.images / self.wall_s, 3) if self.wall_s > 0 else 0.0,
            latency_s=percentiles(self.latencies), ttfp_s=percentiles(self.ttfps) if stream else None,
            peak_rss_mb=self.peak_rss_mb or None, mean_batch=mean_batch,
            first_error=self.errors[0] if self.errors else None,
        )


async def run_level(
    runner: Runner, stream: bool, concurrency: int, plan: list[RequestSpec], cfg: BenchConfig,
    into: LevelSamples,
) -> None:
    """C clients share the plan; each sends its next request when the previous one answered."""
    from tqdm import tqdm

    next_index = 0
    deadline = time.monotonic() + cfg.level_timeout_s
    bar = tqdm(total=len(plan), desc=f"{runner.scenario:<11} {'stream' if stream else 'plain ':6} c={concurrency:<3}",
               unit="req", disable=not cfg.progress, leave=True)

    async def client() -> None:
        nonlocal next_index
        while next_index < len(plan) and time.monotonic() < deadline:
            spec = plan[next_index]
            next_index += 1
            try:
                latency, ttfp, count = await runner.do_request(spec, stream)
            except Exception as exc:  # counted, shown once; the level goes on
                into.errors.append(f"{type(exc).__name__}: {exc}")
            else:
                into.latencies.append(latency)
                into.images += count
                if ttfp is not None:
                    into.ttfps.append(ttfp)
            bar.update(1)

    before = runner.batch_probe()
    with RssSampler(runner.rss_pid) as rss:
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        into.wall_s += time.perf_counter() - t0
    after = runner.batch_probe()
    bar.close()
    into.requests += next_index
    into.peak_rss_mb = max(into.peak_rss_mb, rss.peak_mb)
    if before and after and after[1] > before[1]:
        into.batch_sum += after[0] - before[0]
        into.batch_count += after[1] - before[1]


# ---------------------------------------------------------------------------- (a) engine -----
def request_body(spec: RequestSpec, cfg: BenchConfig, stream: bool) -> dict[str, Any]:
    """The JSON body the SDK sends for this request (the same in every scenario)."""
    body: dict[str, Any] = dict(model=cfg.client_model, prompt=spec.prompt, size=spec.size,
                                quality=spec.quality, n=1)
    if stream:
        body.update(stream=True, partial_images=cfg.partial_images)
    return body


def engine_batch_probe() -> tuple[float, float] | None:
    from canvasd import metrics

    total = metrics.REGISTRY.get_sample_value("canvasd_batch_size_sum") or 0.0
    count = metrics.REGISTRY.get_sample_value("canvasd_batch_size_count") or 0.0
    return total, count


async def in_fresh_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on a new thread that ends with it. Torch work done on a thread that then stays
    alive (an executor's) leaves its OpenMP team behind, and on this machine that made the engine
    thread's later steps ~1.7x slower (measured: 26 ms -> 45-60 ms per step). The server loads its
    models on a thread that exits, so (a) must too."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's side
            out["error"] = exc

    thread = threading.Thread(target=target, name="canvasd-bench-torch", daemon=True)
    thread.start()
    await asyncio.to_thread(thread.join)
    if "error" in out:
        raise out["error"]
    return out.get("value")


STEP_BATCHES = (1, 2, 4, 8, 16)


def step_scaling(backend: Any, job: Any, batches: tuple[int, ...] = STEP_BATCHES, repeats: int = 3) -> dict[str, Any]:
    """Seconds per denoising step for k images in one batch (median of `repeats` steps), and what
    that allows: `ceiling[k]` = images/s batched at k / images/s one at a time, counting denoising
    only. It bounds (b)/(c): if the model's step cost grows almost linearly with the rows, no
    scheduler can make batching pay more on this machine."""
    step_s: dict[int, float] = {}
    for k in batches:
        samples = backend.start(replace(job, n=k, steps=repeats + 1, partial_images=0))
        backend.step(samples)  # warm-up at this batch size
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            backend.step(samples)
            times.append(time.perf_counter() - t0)
        step_s[k] = sorted(times)[len(times) // 2]
    one = step_s[batches[0]] / batches[0]
    return {"step_s": {str(k): round(v, 4) for k, v in step_s.items()},
            "per_image_step_s": {str(k): round(v / k, 4) for k, v in step_s.items()},
            "ceiling": {str(k): round(one / (v / k), 2) for k, v in step_s.items()}}


@contextlib.asynccontextmanager
async def open_engine(cfg: BenchConfig, spec: ModelSpec, image_dir: str,
                      scaling: dict[str, Any]) -> AsyncIterator[Runner]:
    """canvasd without HTTP: the request body goes through the API's own validation into a job,
    and the finished (and partial) images are fitted and encoded by the API's own renderer, so
    (a) makes the same bytes as (b) and (b)/(a) is the cost of HTTP, JSON, base64 and the SDK.
    Also fills `scaling` with the model's `step_scaling` on this machine."""
    from canvasd.api import rules
    from canvasd.api.render import Renderer
    from canvasd.engine.events import JobFailed, PartialImage
    from canvasd.engine.scheduler import Engine
    from canvasd.registry import ModelRegistry

    settings = scenario_settings(cfg, spec, True, image_dir)
    strict = settings.compat == "strict"
    registry = ModelRegistry(settings, backends=await in_fresh_thread(build_backends, spec, settings.precision))
    await in_fresh_thread(registry.load_all)
    if registry.load_error is not None:
        raise registry.load_error
    backends = registry.backends
    renderer = Renderer(settings.render_threads)
    backend = backends[spec.id]
    if backend.capabilities.stepwise:  # before the engine's thread exists: one torch thread at a time
        first = request_plan(cfg, 1)[0]
        job = rules.validate("generations", "json", request_body(first, cfg, False), registry=registry,
                             strict=strict).job
        scaling.update(await in_fresh_thread(step_scaling, backend, job))
    engine = Engine(backends, settings)
    engine.start()

    async def do_request(req: RequestSpec, stream: bool) -> tuple[float, float | None, int]:
        t0 = time.perf_counter()
        plan = rules.validate("generations", "json", request_body(req, cfg, stream), registry=registry,
                              strict=strict)
        handle = engine.submit(plan.job)
        ttfp = None
        async for event in handle.events():
            if isinstance(event, PartialImage):
                await renderer.one(event.image, plan.out)
                if ttfp is None:
                    ttfp = time.perf_counter() - t0
            elif isinstance(event, JobFailed):
                raise event.error
        encoded = await renderer.all(await handle.result(), plan.out)
        return time.perf_counter() - t0, ttfp, len(encoded)

    try:
        await do_request(request_plan(cfg, 1)[0], False)  # warm-up
        yield Runner("engine", do_request, os.getpid(), engine_batch_probe)
    finally:
        await engine.ashutdown(timeout_s=30)


# ---------------------------------------------------------------------------- (b)/(c) HTTP ---
def _create_app(settings: Settings, spec: ModelSpec, factory: str):
    """The API's app factory; backends are injected when the bench model is the fake one."""
    import importlib
    import inspect

    module_name, _, attr = factory.partition(":")
    create_app = getattr(importlib.import_module(module_name), attr)
    if spec.backend != "fake":
        return create_app(settings)
    params = inspect.signature(create_app).parameters
    backends = build_backends(spec, settings.precision)
    if "backends" in params:
        return create_app(settings, backends=backends)
    if "registry" in params:
        from canvasd.registry import ModelRegistry

        return create_app(settings, registry=ModelRegistry(settings, backends=backends))
    raise RuntimeError("create_app accepts neither backends= nor registry=: cannot serve the fake")


def _serve_child(settings: Settings, spec: ModelSpec, factory: str, conn) -> None:  # pragma: no cover
    """Child process: bind a free loopback port, report it, serve until the parent says stop.

    Stopping over the pipe rather than by SIGTERM lets the process exit normally: uvicorn re-raises
    a caught SIGTERM after shutdown, which kills the process before multiprocessing's finalizers
    unlink the named semaphores a spawned child creates (tqdm's lock, via transformers), and the
    resource tracker then warns about them leaking."""
    import logging
    import threading

    import uvicorn

    logging.basicConfig(level="WARNING")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    conn.send(sock.getsockname()[1])
    app = _create_app(settings, spec, factory)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=30))

    def wait_for_stop() -> None:
        try:
            conn.recv()
        except (EOFError, OSError):  # the parent went away: stop too
            pass
        server.should_exit = True

    threading.Thread(target=wait_for_stop, name="bench-stop", daemon=True).start()
    server.run(sockets=[sock])


class ServerProcess:
    """A canvasd server in a child process on 127.0.0.1 (stopped over a pipe, then joined)."""

    def __init__(self, settings: Settings, spec: ModelSpec, factory: str):
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()  # port up, "stop" down; a pipe holds no semaphore
        self.proc = ctx.Process(target=_serve_child, args=(settings, spec, factory, child_conn),
                                name="canvasd-bench-server", daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout_s: float) -> None:
        self.proc.start()
        if not self._conn.poll(timeout_s):
            raise TimeoutError("server process did not report its port")
        self.port = self._conn.recv()

    def stop(self) -> None:
        """Graceful stop over the pipe (see _serve_child); SIGTERM, then SIGKILL, if that stalls."""
        if self.proc.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send("stop")
            self.proc.join(timeout=45)
        if self.proc.is_alive():  # pragma: no cover - did not shut down in time
            self.proc.terminate()
            self.proc.join(timeout=10)
        if self.proc.is_alive():  # pragma: no cover - did not shut down in time
            self.proc.kill()
            self.proc.join(timeout=5)
        self._conn.close()


async def wait_ready(server: ServerProcess, timeout_s: float) -> None:
    """Until /ready answers 200 (falls back to /v1/models when there is no /ready)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as http:
        while time.monotonic() < deadline:
            if not server.proc.is_alive():
                raise RuntimeError(f"server exited with code {server.proc.exitcode}")
            try:
                r = await http.get("/ready")
                if r.status_code == 404:
                    r = await http.get("/v1/models")
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"server not ready after {timeout_s:.0f}s")


def http_batch_probe(base_url: str) -> Callable[[], tuple[float, float] | None]:
    """Reads canvasd_batch_size_{sum,count} from the server's /metrics (None if unavailable)."""

    def probe() -> tuple[float, float] | None:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = httpx.get(base_url + "/metrics", timeout=5).text
            values = {}
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    values[s.name] = s.value
            return values["canvasd_batch_size_sum"], values["canvasd_batch_size_count"]
        except Exception:
            return None

    return probe


@contextlib.asynccontextmanager
async def open_http(cfg: BenchConfig, spec: ModelSpec, scenario: str, image_dir: str) -> AsyncIterator[Runner]:
    """A canvasd server in a child process (batching on for "http", off for "http-serial"),
    called with the official SDK; warmed up before it is handed out, stopped on exit."""
    from openai import AsyncOpenAI

    settings = scenario_settings(cfg, spec, scenario == "http", image_dir)
    server = ServerProcess(settings, spec, cfg.app_factory)
    try:
        await asyncio.to_thread(server.start, cfg.ready_timeout_s)
        await wait_ready(server, cfg.ready_timeout_s)
        assert server.base_url.startswith(f"http://{LOOPBACK}:")
        client = AsyncOpenAI(base_url=server.base_url + "/v1", api_key=BENCH_KEY,
                             max_retries=0, timeout=cfg.level_timeout_s + 60)

        async def do_request(req: RequestSpec, stream: bool) -> tuple[float, float | None, int]:
            t0 = time.perf_counter()
            body = request_body(req, cfg, stream)
            if not stream:
                response = await client.images.generate(**body)
                count = sum(1 for d in response.data or [] if d.b64_json)
                if not count:
                    raise RuntimeError("response without image data")
                return time.perf_counter() - t0, None, count
            events = await client.images.generate(**body)
            ttfp, count = None, 0
            async for event in events:
                if event.type.endswith("partial_image") and ttfp is None:
                    ttfp = time.perf_counter() - t0
                elif event.type.endswith("completed") and event.b64_json:
                    count += 1
            if not count:
                raise RuntimeError("stream ended without a completed image")
            return time.perf_counter() - t0, ttfp, count

        # Warm-up: the first request also waits out a model still loading (503), bounded.
        deadline = time.monotonic() + cfg.ready_timeout_s
        while True:
            try:
                await do_request(request_plan(cfg, 1)[0], False)
                break
            except Exception:
                if time.monotonic() > deadline or not server.proc.is_alive():
                    raise
                await asyncio.sleep(1)
        try:
            yield Runner(scenario, do_request, server.proc.pid, http_batch_probe(server.base_url))
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(server.stop)


# ---------------------------------------------------------------------------- report ---------
def ratios(results: list[LevelResult]) -> list[dict[str, Any]]:
    by = {(r.scenario, r.stream, r.concurrency): r for r in results}
    rows = []
    for (scenario, stream, c), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if scenario != "http":
            continue
        row: dict[str, Any] = {"concurrency": c, "stream": stream}
        for other, name in (("engine", "http_over_engine"), ("http-serial", "batched_over_serial")):
            o = by.get((other, stream, c))
            row[name] = round(r.images_per_s / o.images_per_s, 3) if o and o.images_per_s else None
        rows.append(row)
    return rows


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown_table(results: list[LevelResult]) -> str:
    lines = [
        "| scenario | stream | clients | images/s | p50 s | p95 s | p99 s | first partial p50 s | mean batch | peak RSS MB | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ttfp = r.ttfp_s["p50"] if r.ttfp_s else None
        lines.append(
            f"| {SCENARIO_LABELS[r.scenario]} | {'yes' if r.stream else 'no'} | {r.concurrency} "
            f"| {_fmt(r.images_per_s)} | {_fmt(r.latency_s['p50'])} | {_fmt(r.latency_s['p95'])} "
            f"| {_fmt(r.latency_s['p99'])} | {_fmt(ttfp)} | {_fmt(r.mean_batch, 1)} "
            f"| {_fmt(r.peak_rss_mb, 0)} | {r.errors} |"
        )
    return "\n".join(lines)


def ratio_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| clients | stream | (b)/(a) HTTP vs engine | (b)/(c) batching vs serial |",
             "|---:|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['concurrency']} | {'yes' if row['stream'] else 'no'} "
                     f"| {_fmt(row['http_over_engine'])} | {_fmt(row['batched_over_serial'])} |")
    return "\n".join(lines)


def scaling_table(scaling: dict[str, Any]) -> str:
    ks = list(scaling["step_s"])
    lines = ["| images in the step | " + " | ".join(ks) + " |", "|---|" + "---:|" * len(ks),
             "| seconds per step | " + " | ".join(f"{scaling['step_s'][k]:.3f}" for k in ks) + " |",
             "| seconds per image-step | " + " | ".join(f"{scaling['per_image_step_s'][k]:.4f}" for k in ks) + " |",
             "| batching ceiling vs one at a time | " + " | ".join(f"{scaling['ceiling'][k]:.2f}x" for k in ks) + " |"]
    return "\n".join(lines)


def plot(results: list[LevelResult], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[tuple[str, bool], list[LevelResult]] = {}
    for r in results:
        series.setdefault((r.scenario, r.stream), []).append(r)
    for (scenario, stream), rs in series.items():
        rs.sort(key=lambda r: r.concurrency)
        label = SCENARIO_LABELS[scenario] + (" stream" if stream else "")
        style = "--" if stream else "-"
        xs = [r.concurrency for r in rs]
        line, = ax_tp.plot(xs, [r.images_per_s for r in rs], style, marker="o", label=label)
        ax_lat.plot(xs, [r.latency_s["p50"] or math.nan for r in rs], style, marker="o",
                    color=line.get_color(), label=label + " p50")
        ax_lat.plot(xs, [r.latency_s["p95"] or math.nan for r in rs], ":", marker="x",
                    color=line.get_color(), label=label + " p95")
    levels = sorted({r.concurrency for r in results})
    for ax, ylabel in ((ax_tp, "images / s"), (ax_lat, "latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_tp.set_title("Throughput")
    ax_lat.set_title("Latency")
    ax_tp.legend(fontsize=8)
    ax_lat.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info() -> dict[str, Any]:
    import psutil

    info = {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": platform.processor() or None,
    }
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
        ).stdout.strip() or None
    except Exception:
        info["git_commit"] = None
    return info


# ---------------------------------------------------------------------------- entry point ----
async def _run_all(cfg: BenchConfig, spec: ModelSpec, scaling: dict[str, Any]) -> list[LevelResult]:
    """Start every scenario, then measure level by level, each level in every scenario back to
    back (the order rotating), so machine drift hits all scenarios of a ratio alike."""
    results: list[LevelResult] = []
    with tempfile.TemporaryDirectory(prefix="canvasd-bench-") as image_dir:
        async with contextlib.AsyncExitStack() as stack:
            runners = []
            for scenario in cfg.scenarios:
                opener = (open_engine(cfg, spec, image_dir, scaling) if scenario == "engine"
                          else open_http(cfg, spec, scenario, image_dir))
                runners.append(await stack.enter_async_context(opener))
            turn = 0
            for stream in cfg.stream_modes():
                for c in cfg.concurrency:
                    plan = request_plan(cfg, cfg.requests_at(c))
                    pooled = {r.scenario: LevelSamples() for r in runners}
                    for _ in range(cfg.rounds):
                        k = turn % len(runners)
                        turn += 1
                        for runner in runners[k:] + runners[:k]:
                            await run_level(runner, stream, c, plan, cfg, pooled[runner.scenario])
                    results += [pooled[r.scenario].result(r.scenario, stream, c) for r in runners]
    order = {name: i for i, name in enumerate(cfg.scenarios)}
    return sorted(results, key=lambda r: (order[r.scenario], r.stream, r.concurrency))


def run_bench(config: BenchConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the scenarios, write JSON + PNG into `out_dir`, print the tables; return the report."""
    cfg = replace(config or BenchConfig(), **overrides).effective()
    spec = model_spec(cfg.model)
    started = time.strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    scaling: dict[str, Any] = {}
    results = asyncio.run(_run_all(cfg, spec, scaling))
    rows = ratios(results)
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "model": {"id": spec.id, "backend": spec.backend, "path": spec.path,
                  "simulated": spec.backend == "fake"},
        "machine": machine_info(),
        "started": started,
        "duration_s": round(time.perf_counter() - t0, 1),
        "results": [asdict(r) for r in results],
        "ratios": rows,
        "step_scaling": scaling or None,
    }
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench-{spec.id}-{started}"
    json_path, png_path = stem.with_suffix(".json"), stem.with_suffix(".png")
    json_path.write_text(json.dumps(report, indent=2))
    title = f"canvasd bench: {spec.id}" + (" (SIMULATED fake backend)" if spec.backend == "fake" else "")
    plot(results, png_path, title)
    report["files"] = {"json": str(json_path), "png": str(png_path)}
    print()
    print(markdown_table(results))
    print()
    print(ratio_table(rows))
    if scaling:
        print()
        print(scaling_table(scaling))
    print(f"\nwrote {json_path} and {png_path}")
    return report
