"""Scale-out on Ray Serve: canvasd's API app as the ingress, canvasd's engine in every replica.

One Serve application, ``canvasd``:

- ``ingress`` (`ApiIngress`): the unchanged FastAPI app (validation, auth, errors, SSE, url
  signing), built on each ingress replica with a `RayEngineClient` in place of the in-process
  engine. It imports no torch and loads no weights: capabilities come from the backends'
  constructors, which are torch-free.
- ``engine-<model id>`` (`EngineReplica`), one deployment per model: each replica loads the model
  and runs canvasd's own step-level batching `Engine`. Jobs arrive one per streaming call; the
  replica's engine batches whatever calls are in flight on it. No ``@serve.batch``: the engine
  batches per denoising step, which request-level batching cannot do.

Sizing (per model, `model_deployment_options`): a fixed ``replicas`` count, or autoscaling between
``min_replicas`` and ``max_replicas`` with a target of ``max_batch`` ongoing jobs per replica (the
engine's batch slots: beyond that, a job waits for a slot however it was routed). A replica takes at
most ``max_queue`` jobs at once (`max_ongoing_requests`: its engine counts every job not yet in a
step as waiting, and refuses past ``max_queue`` images); each caller (ingress replica) holds at
most ``max_queue`` per engine replica (the most there can be) that are not yet on a replica
(`max_queued_requests`: Serve counts a request as queued until a replica has taken it, so a burst
that the replicas could hold still passes through this queue). So the deployment holds at most
``replicas x (1 + ingress replicas) x max_queue`` jobs; past that the answer is the API's 429.
Resources: ``num_cpus`` (torch threads follow it: floor, at least 1) or ``num_gpus``.

Ray is imported only by this package, and only when `canvasd serve --replicas/--ray-address` asks.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from pathlib import Path
from typing import Any, AsyncIterator

import ray
from ray import serve

from canvasd.settings import ModelSettings, Settings
from canvasd.engine.events import QueueFull, ShuttingDown
from canvasd.serve.wire import Message, WireJob, event_message

log = logging.getLogger("canvasd.serve")

APP_NAME = "canvasd"
INGRESS_NAME = "ingress"
_ACTOR_PREFIX = "SERVE_REPLICA::"


def engine_deployment_name(model_id: str) -> str:
    return f"engine-{model_id}"


def replica_actor(name: str) -> Any:
    """The Ray actor of an engine replica named in an `x-canvasd-replica` header (operators and
    tests use it, e.g. to ``ray.kill`` one)."""
    return ray.get_actor(_ACTOR_PREFIX + name, namespace="serve")


def _current_replica_name() -> str:
    actor = ray.get_runtime_context().get_actor_name() or ""
    return actor[len(_ACTOR_PREFIX):] if actor.startswith(_ACTOR_PREFIX) else actor


# --- metrics --------------------------------------------------------------------------------------
class MetricsBridge:
    """Publishes this process's canvasd metrics (`canvasd.metrics.REGISTRY`) through Ray's metrics
    export every `interval_s` seconds, each sample tagged with the replica's name.

    Ray serves them, prefixed ``ray_``, on every node's metrics export port next to Ray's and
    Serve's own; Prometheus finds those ports through Ray's service discovery file. Every sample
    (counter totals, histogram buckets/sums/counts) is published as a gauge of its current value,
    so ``rate()`` and ``histogram_quantile()`` work on them as on the originals.
    """

    def __init__(self, replica: str, interval_s: float = 5.0):
        import threading

        self.replica = replica
        self._gauges: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="canvasd-metrics-bridge",
                                        daemon=True)
        self._thread.start()

    def publish(self) -> int:
        from ray.util.metrics import Gauge

        from canvasd import metrics

        published = 0
        for family in metrics.REGISTRY.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # creation timestamps: not a measurement
                keys = tuple(sorted(sample.labels))
                gauge = self._gauges.get((sample.name, keys))
                if gauge is None:
                    gauge = Gauge(sample.name, family.documentation or sample.name,
                                  tag_keys=keys + ("replica",))
                    self._gauges[(sample.name, keys)] = gauge
                gauge.set(sample.value, tags={**sample.labels, "replica": self.replica})
                published += 1
        return published

    def stop(self) -> None:
        self._stop.set()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - metrics must never take a replica down
                log.exception("publishing metrics to Ray failed")


# --- engine replicas ---------------------------------------------------------------------------
class EngineReplica:
    """One model, loaded once, served by canvasd's batching engine."""

    def __init__(self, settings: Settings, model_id: str):
        from canvasd.backends.registry import ModelRegistry
        from canvasd.engine.scheduler import Engine

        spec = next(m for m in settings.models if m.id == model_id)
        # this replica's one model, loaded before the replica reports ready
        self.settings = settings.model_copy(update={"models": [spec.model_copy(update={"preload": True})]})
        self.name = _current_replica_name()
        self.registry = ModelRegistry(self.settings)
        self.registry.preload()
        if self.registry.load_error is not None:
            raise RuntimeError(f"model {model_id} failed to load: {self.registry.load_error}")
        self.engine = Engine(self.registry.backends, self.settings, models=self.registry)
        self.engine.start()
        self.metrics = MetricsBridge(self.name)
        log.info("engine replica %s serving %s (torch threads %s)", self.name, model_id,
                 self.settings.torch_threads)

    async def run(self, wire: WireJob) -> AsyncIterator[Message]:
        """Queue the job on this replica's engine, then relay its events (see `wire`)."""
        try:
            handle = self.engine.submit(wire.job())
        except QueueFull as exc:
            yield {"type": "queue_full", "retry_after": exc.retry_after}
            return
        except ShuttingDown:
            yield {"type": "shutting_down"}
            return
        yield {"type": "accepted", "replica": self.name}
        try:
            async for event in handle.events():
                yield event_message(event)
        finally:  # the ingress cancelled the call (client gone): free the engine's slots now
            if not handle.done:
                handle.cancel()

    def stats(self) -> dict[str, Any]:
        return {"replica": self.name, "pid": os.getpid(), "torch_threads": self.settings.torch_threads,
                **self.engine.stats()}

    def publish_metrics(self) -> int:
        """Publish the metrics now (the bridge does it every few seconds anyway)."""
        return self.metrics.publish()

    def check_health(self) -> None:
        """Serve calls this periodically; a replica whose engine thread died is restarted."""
        thread = getattr(self.engine, "_thread", None)
        if thread is not None and not thread.is_alive():
            raise RuntimeError("the engine worker thread has stopped")

    def __del__(self) -> None:
        bridge = getattr(self, "metrics", None)
        if bridge is not None:
            bridge.stop()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown(5.0)


# --- ingress -------------------------------------------------------------------------------------
class ApiIngress:
    """The FastAPI app of a single-process server, with its engine calls going to the replicas."""

    def __init__(self, settings: Settings, engines: dict[str, Any]):
        self.settings = settings
        self.engines = engines
        self.name = _current_replica_name()

    def __serve_build_asgi_app__(self) -> Any:
        from canvasd.api.app import create_app
        from canvasd.backends.registry import ModelRegistry
        from canvasd.serve.ray_client import RayEngineClient

        # The engine replicas hold the weights: this registry only answers capability questions
        # (which need none), so it preloads nothing and is ready at once.
        settings = self.settings.model_copy(update={
            "models": [m.model_copy(update={"preload": False}) for m in self.settings.models]})
        registry = ModelRegistry(settings)
        client = RayEngineClient(self.engines, settings.request_timeout_s)
        return create_app(settings, registry, client, server_name=self.name)


# --- sizing ---------------------------------------------------------------------------------------
def replica_threads(spec: ModelSettings, settings: Settings) -> int:
    """Torch intra-op threads of one engine replica: its CPU share, at least one."""
    if settings.torch_threads:
        return settings.torch_threads
    return max(1, math.floor(spec.num_cpus if spec.num_cpus is not None else 1))


def _most_replicas(spec: ModelSettings, settings: Settings) -> int:
    if spec.max_replicas is not None:
        return spec.max_replicas
    return spec.replicas or settings.replicas or max(1, spec.min_replicas or 1)


def model_deployment_options(spec: ModelSettings, settings: Settings) -> dict[str, Any]:
    """Serve options of one model's engine deployment, from its `[[models]]` settings."""
    actor: dict[str, Any] = {"num_cpus": spec.num_cpus if spec.num_cpus is not None else 1}
    if spec.num_gpus:
        actor["num_gpus"] = spec.num_gpus
    options: dict[str, Any] = {
        "name": engine_deployment_name(spec.id),
        "ray_actor_options": actor,
        # the engine's own bound (it counts a job as waiting until its first step): more would be
        # refused by the replica instead of waiting at the caller for another replica
        "max_ongoing_requests": max(1, settings.max_queue),
        "max_queued_requests": max(1, settings.max_queue) * _most_replicas(spec, settings),
        "health_check_period_s": 5,
        "graceful_shutdown_timeout_s": 10,
    }
    if spec.min_replicas is not None or spec.max_replicas is not None:
        low = spec.min_replicas if spec.min_replicas is not None else 1
        high = spec.max_replicas if spec.max_replicas is not None else max(low, 1)
        if high < max(low, 1):
            raise ValueError(f"model {spec.id}: max_replicas {high} < min_replicas {low}")
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                         "target_ongoing_requests": settings.max_batch}
    else:
        options["num_replicas"] = spec.replicas or settings.replicas or 1
    return options


def _shared_settings(settings: Settings) -> Settings:
    """What every replica must agree on: one url secret, absolute storage paths."""
    return settings.model_copy(update={
        "url_secret": settings.url_secret or secrets.token_hex(32),
        "image_dir": Path(settings.image_dir).resolve(),
    })


def build_application(settings: Settings) -> Any:
    """The Serve application (ingress bound to one engine deployment per model)."""
    settings = _shared_settings(settings)
    engine_cls = serve.deployment(EngineReplica)
    engines = {}
    for spec in settings.models:
        per_model = settings.model_copy(update={"torch_threads": replica_threads(spec, settings)})
        engines[spec.id] = engine_cls.options(**model_deployment_options(spec, settings)).bind(per_model, spec.id)
    ingress_cls = serve.deployment(serve.ingress()(ApiIngress))
    ingress = ingress_cls.options(
        name=INGRESS_NAME, num_replicas=settings.ingress_replicas,
        ray_actor_options={"num_cpus": 0},  # I/O and encoding; the cores go to the engines
        max_ongoing_requests=4 * max(1, settings.max_queue),
    )
    return ingress.bind(settings, engines)


def app_builder(args: dict[str, str]) -> Any:
    """For Serve config files and KubeRay (``import_path: canvasd.serve.ray:app_builder``, ``args:
    {config: /etc/canvasd/canvasd.toml}``): the application from a TOML settings file (or
    CANVASD_CONFIG) plus CANVASD_* variables, the embedded model when it names none."""
    from canvasd.cli import build_settings

    return build_application(build_settings(Path(args["config"]) if args.get("config") else None, {}))


# --- running ----------------------------------------------------------------------------------------
def connect(settings: Settings) -> None:
    """Join the cluster at `ray_address` (or RAY_ADDRESS), else start a small local Ray."""
    if ray.is_initialized():
        return
    address = settings.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    from canvasd.engine.scheduler import usable_cores

    ray.init(num_cpus=usable_cores(), include_dashboard=False, log_to_driver=False,
             object_store_memory=settings.ray_object_store_mb * 1024 * 1024)


def deploy(settings: Settings) -> str:
    """Start Serve's HTTP proxy on host:port, deploy the application; returns its base url."""
    connect(settings)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build_application(settings), name=APP_NAME, route_prefix="/")
    return f"http://{settings.host}:{settings.port}"


def serve_forever(settings: Settings) -> None:
    """`canvasd serve --replicas N` / `--ray-address ADDR`: deploy, then hold until interrupted."""
    import signal

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM (Kubernetes, systemd) and SIGINT take the same clean way out

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    url = deploy(settings)
    log.info("canvasd on Ray Serve at %s (%s)", url, ", ".join(
        f"{m.id}: {model_deployment_options(m, settings).get('num_replicas', 'autoscaling')}"
        for m in settings.models))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
        if not (settings.ray_address or os.environ.get("RAY_ADDRESS")):
            serve.shutdown()
            ray.shutdown()
