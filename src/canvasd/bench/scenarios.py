"""The scenarios a bench run compares, each started once and then sent level after level of
requests: (a) the engine in this process, (b)/(c) a canvasd server in a child process called with
the official SDK (see the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Awaitable, Callable

from canvasd.bench.config import (
    BENCH_KEY,
    LOOPBACK,
    BenchConfig,
    RequestSpec,
    build_backends,
    is_fake,
    request_body,
    request_plan,
    scenario_settings,
)
from canvasd.backends.base import StepwiseBackend, as_stepwise
from canvasd.bench.report import LevelResult, percentiles
from canvasd.settings import ModelSettings, Settings
from canvasd.contracts import Job

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


def step_scaling(backend: StepwiseBackend, job: Job, batches: tuple[int, ...] = STEP_BATCHES, repeats: int = 3) -> dict[str, Any]:
    """Seconds per denoising step for k images in one batch (median of `repeats` steps), and what
    that allows: `ceiling[k]` = images/s batched at k / images/s one at a time, counting denoising
    only; for a two-stage model also the seconds of its second stage on the k images (one run). It bounds (b)/(c): if the model's step cost grows almost linearly with the rows, no
    scheduler can make batching pay more on this machine."""
    step_s: dict[int, float] = {}
    stage2_s: dict[int, float] = {}
    for k in batches:
        samples = backend.start(replace(job, n=k, steps=repeats + 1, partial_images=0))
        backend.step(samples)  # warm-up at this batch size
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            backend.step(samples)
            times.append(time.perf_counter() - t0)
        step_s[k] = sorted(times)[len(times) // 2]
        if not all(s.done for s in samples):  # a second stage (the emoji model's upsampler) is left
            t0 = time.perf_counter()
            backend.step(samples)
            stage2_s[k] = time.perf_counter() - t0
    one = step_s[batches[0]] / batches[0]
    out = {"step_s": {str(k): round(v, 4) for k, v in step_s.items()},
           "per_image_step_s": {str(k): round(v / k, 4) for k, v in step_s.items()},
           "ceiling": {str(k): round(one / (v / k), 2) for k, v in step_s.items()}}
    if stage2_s:
        out["second_stage_s"] = {str(k): round(v, 4) for k, v in stage2_s.items()}
        out["second_stage_per_image_s"] = {str(k): round(v / k, 4) for k, v in stage2_s.items()}
    return out


def planned_jobs(cfg: BenchConfig, registry: Any) -> list[Any]:
    """The jobs the bench's request plan becomes (the API's own validation resolves sizes and
    steps), for the MFU profile."""
    from canvasd.api import rules

    count = max(cfg.requests_at(c) for c in cfg.concurrency)
    return [rules.validate("generations", "json", request_body(req, cfg, False), registry=registry,
                           strict=registry.settings.compat == "strict").job
            for req in request_plan(cfg, count)]


def wants_profile(cfg: BenchConfig, spec: ModelSettings) -> bool:
    return cfg.mfu and not is_fake(spec)  # the fake computes nothing: no FLOPs to count


async def standalone_profile(cfg: BenchConfig, spec: ModelSettings, image_dir: str) -> dict[str, Any]:
    """The MFU profile when no engine scenario runs in this process: the model is loaded here,
    profiled, and dropped again before the servers load their own copies."""
    from canvasd.backends.registry import ModelRegistry
    from canvasd.bench.mfu import model_profile
    from canvasd.engine.oom import release_cached_memory

    settings = scenario_settings(cfg, spec, True, image_dir)
    registry = ModelRegistry(settings, backends=await in_fresh_thread(build_backends, spec, settings.precision))
    await in_fresh_thread(registry.preload)
    if registry.load_error is not None:
        raise registry.load_error
    backend = registry.backends[spec.id]
    profile = await in_fresh_thread(model_profile, backend, planned_jobs(cfg, registry), settings.precision)
    if callable(getattr(backend, "unload", None)):
        backend.unload()
    del registry, backend
    release_cached_memory()
    return profile


@contextlib.asynccontextmanager
async def open_engine(cfg: BenchConfig, spec: ModelSettings, image_dir: str,
                      scaling: dict[str, Any], profile: dict[str, Any]) -> AsyncIterator[Runner]:
    """canvasd without HTTP: the request body goes through the API's own validation into a job,
    and the finished (and partial) images are fitted and encoded by the API's own renderer, so
    (a) makes the same bytes as (b) and (b)/(a) is the cost of HTTP, JSON, base64 and the SDK.
    Also fills `scaling` with the model's `step_scaling` on this machine, and `profile` with
    its MFU profile (bench/mfu.py)."""
    from canvasd.api import rules
    from canvasd.api.render import Renderer
    from canvasd.engine.events import JobFailed, PartialImage
    from canvasd.engine.scheduler import Engine
    from canvasd.backends.registry import ModelRegistry

    settings = scenario_settings(cfg, spec, True, image_dir)
    strict = settings.compat == "strict"
    registry = ModelRegistry(settings, backends=await in_fresh_thread(build_backends, spec, settings.precision))
    await in_fresh_thread(registry.load_all)
    if registry.load_error is not None:
        raise registry.load_error
    backends = registry.backends
    renderer = Renderer(settings.render_threads)
    backend = as_stepwise(backends[spec.id])
    if backend is not None:  # before the engine's thread exists: one torch thread at a time
        first = request_plan(cfg, 1)[0]
        job = rules.validate("generations", "json", request_body(first, cfg, False), registry=registry,
                             strict=strict).job
        scaling.update(await in_fresh_thread(step_scaling, backend, job))
    if wants_profile(cfg, spec):
        from canvasd.bench.mfu import model_profile

        profile.update(await in_fresh_thread(model_profile, backends[spec.id], planned_jobs(cfg, registry),
                                             settings.precision))
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


def _create_app(settings: Settings, spec: ModelSettings, factory: str):
    """The API's app factory; backends are injected when the bench model is the fake one."""
    import importlib
    import inspect

    module_name, _, attr = factory.partition(":")
    create_app = getattr(importlib.import_module(module_name), attr)
    if not is_fake(spec):
        return create_app(settings)
    params = inspect.signature(create_app).parameters
    backends = build_backends(spec, settings.precision)
    if "backends" in params:
        return create_app(settings, backends=backends)
    if "registry" in params:
        from canvasd.backends.registry import ModelRegistry

        return create_app(settings, registry=ModelRegistry(settings, backends=backends))
    raise RuntimeError("create_app accepts neither backends= nor registry=: cannot serve the fake")


def _serve_child(settings: Settings, spec: ModelSettings, factory: str, conn) -> None:  # pragma: no cover
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

    def __init__(self, settings: Settings, spec: ModelSettings, factory: str):
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


def sdk_request(client: Any, cfg: BenchConfig) -> RequestFn:
    """One bench request through the official SDK (`AsyncOpenAI`): (latency, time to the first
    partial image or None, images received)."""

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

    return do_request


@contextlib.asynccontextmanager
async def open_http(cfg: BenchConfig, spec: ModelSettings, scenario: str, image_dir: str) -> AsyncIterator[Runner]:
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

        do_request = sdk_request(client, cfg)

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


async def run_all(cfg: BenchConfig, spec: ModelSettings, scaling: dict[str, Any],
                  profile: dict[str, Any]) -> list[LevelResult]:
    """Start every scenario, then measure level by level, each level in every scenario back to
    back (the order rotating), so machine drift hits all scenarios of a ratio alike. Fills
    `scaling` and `profile` (for MFU) on the way."""
    results: list[LevelResult] = []
    with tempfile.TemporaryDirectory(prefix="canvasd-bench-") as image_dir:
        if wants_profile(cfg, spec) and "engine" not in cfg.scenarios:
            profile.update(await standalone_profile(cfg, spec, image_dir))
        async with contextlib.AsyncExitStack() as stack:
            runners = []
            for scenario in cfg.scenarios:
                opener = (open_engine(cfg, spec, image_dir, scaling, profile) if scenario == "engine"
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
