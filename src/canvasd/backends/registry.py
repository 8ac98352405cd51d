"""Local models on demand: which are loaded, which load next, which make room.

Every configured model gets a backend object at start (cheap: configs only, so the API can
validate requests for any of them); its weights load

- at start when the model is preloaded (`preload`, by default only the first model), or
- on its first request otherwise. The request waits for the load (it is not refused), and so do
  the requests that arrive meanwhile; the log reports the load's start, progress and end.

A per-device budget bounds what stays loaded: `max_loaded_models` (a count) and/or
`device_memory_budget` (bytes, estimated from the weight files before the first load, measured on
the device after it). When a load would go over it, the least recently used model on that device
(an idle one before a busy one) is unloaded first, once the jobs it already accepted have finished;
requests for it that come meanwhile wait, and load it again afterwards.

A model that fails to load fails its waiting requests with the load's error and stays failed (its
later requests get the same error); the other models keep serving.

The engine speaks to this module through `acquire(model, wake) -> Lease` and `Lease.release()`:
a lease is granted once the model is loaded and keeps it loaded until released. Loads run one at a
time, each on a thread that ends with it (a long-lived thread that ran torch work keeps its OpenMP
team, which slowed the engine's steps on CPU).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

from canvasd.backends.base import Backend
from canvasd.contracts import Capabilities
from canvasd.backends.memory import device_allocated_bytes, estimate_weight_bytes, format_bytes

if TYPE_CHECKING:  # pragma: no cover
    from canvasd.settings import ModelSettings, Settings

log = logging.getLogger("canvasd.registry")

ModelState = Literal["unloaded", "loading", "loaded", "failed"]
PROGRESS_EVERY_S = 15.0  # a load still running is reported in the log this often


def build_backend(spec: "ModelSettings", precision: str = "auto") -> Backend:
    from canvasd.registry import build_backend as build

    return build(spec, precision)


class LoadFailed(Exception):
    """`acquire` of a model whose load has failed: carries the load's error."""

    def __init__(self, model: str, error: BaseException | None):
        super().__init__(str(error))
        self.model, self.error = model, error


class Lease:
    """One job's hold on a model: granted once the model is loaded; keeps it loaded until
    `release()` (idempotent; releasing a lease not yet granted withdraws the request)."""

    def __init__(self, registry: "ModelRegistry | None", model: str, wake: Callable[[], None] | None):
        self._registry = registry
        self.model = model
        self._wake = wake
        self.granted = registry is None  # a registry-less lease (engine without one) is free
        self.error: BaseException | None = None
        self.released = False

    @property
    def settled(self) -> bool:
        return self.granted or self.error is not None

    def release(self) -> None:
        if self._registry is not None and not self.released:
            self.released = True
            self._registry._release(self)

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake()


@dataclass
class _Slot:
    id: str
    backend: Backend
    preload: bool
    path: Any = None
    state: ModelState = "unloaded"
    error: BaseException | None = None
    in_flight: int = 0  # granted, unreleased leases
    waiting: list[Lease] = field(default_factory=list)  # not yet granted
    last_used: float = 0.0
    draining: bool = False  # chosen to make room: unloads when in_flight reaches 0
    load_queued: bool = False
    bytes: int | None = None  # measured after a load, else estimated
    measured: bool = False
    load_s: float | None = None
    loads: int = 0

    @property
    def device(self) -> str:
        return str(getattr(self.backend, "device", None) or "cpu")

    @property
    def dtype(self) -> str | None:
        dtype = getattr(self.backend, "dtype", None)
        return None if dtype is None else str(dtype).removeprefix("torch.")

    @property
    def can_unload(self) -> bool:
        return callable(getattr(self.backend, "unload", None))


class ModelRegistry:
    """The configured local models, their backends, and their load state."""

    def __init__(self, settings: "Settings", backends: dict[str, Backend] | None = None):
        """`backends`: built from `settings.models` when not given (tests and the benchmark pass
        their own); a backend's model settings, when present, give its `preload`."""
        self.settings = settings
        specs = {m.id: m for m in settings.models}
        if backends is None:
            backends = {m.id: build_backend(m, settings.precision) for m in settings.models}
        self.backends: dict[str, Backend] = backends
        self._lock = threading.Condition()
        self._load_lock = threading.Lock()  # one load (with its evictions) at a time
        self._slots: dict[str, _Slot] = {}
        for index, (model_id, backend) in enumerate(backends.items()):
            spec = specs.get(model_id)
            preload = spec.preload if spec is not None else None
            self._slots[model_id] = _Slot(
                model_id, backend, preload=(index == 0) if preload is None else preload,
                path=(spec.path if spec is not None else None) or getattr(backend, "path", None))
        self.max_loaded: int | None = settings.max_loaded_models
        self.memory_budget: int | None = settings.device_memory_budget
        self._preload_started = False

    # ------------------------------------------------------------------ what the API asks ----
    def resolve(self, name: str) -> str | None:
        return self.settings.resolve_alias(name)

    def capabilities(self, model_id: str) -> Capabilities:
        return self.backends[model_id].capabilities

    def get(self, model_id: str) -> Backend:
        return self.backends[model_id]

    def state(self, model_id: str) -> ModelState:
        return self._slots[model_id].state

    def describe(self, model_id: str) -> dict[str, Any]:
        """The extension fields `GET /v1/models` shows for a local model."""
        with self._lock:
            slot = self._slots[model_id]
            info: dict[str, Any] = {"state": slot.state, "device": slot.device, "dtype": slot.dtype,
                                    "preload": slot.preload}
            if slot.bytes is not None:
                info["memory_bytes"] = slot.bytes
            if slot.state == "failed":
                info["error"] = str(slot.error)
            return info

    @property
    def preload_ids(self) -> list[str]:
        return [s.id for s in self._slots.values() if s.preload]

    @property
    def ready(self) -> bool:
        """Every preloaded model has finished loading, and some model can serve requests."""
        with self._lock:
            slots = list(self._slots.values())
            settled = all(s.state in ("loaded", "failed") for s in slots if s.preload)
            return settled and any(s.state != "failed" for s in slots)

    @property
    def load_error(self) -> BaseException | None:
        """The load error when no model can serve (each one failed to load), else None."""
        with self._lock:
            slots = list(self._slots.values())
            if slots and all(s.state == "failed" for s in slots):
                return slots[0].error
            return None

    def failed(self) -> dict[str, str]:
        with self._lock:
            return {s.id: str(s.error) for s in self._slots.values() if s.state == "failed"}

    # ------------------------------------------------------------------ loading --------------
    def preload(self) -> None:
        """Load the preloaded models, one after the other, on the calling thread (blocking). A
        failure is logged and recorded; the other models still load."""
        with self._lock:
            self._preload_started = True
            todo = [s for s in self._slots.values() if s.preload and s.state == "unloaded"]
            for slot in todo:
                slot.load_queued = True
        for slot in todo:
            self._load(slot)

    load_all = preload  # the name the benchmark and older callers use

    def acquire(self, model_id: str, wake: Callable[[], None] | None = None) -> Lease:
        """A lease on `model_id`: granted now when the model is loaded, else when its load (started
        here if needed) ends; `wake()` is called (without any lock held) when it settles. Raises
        `LoadFailed` when the model has already failed to load."""
        lease = Lease(self, model_id, wake)
        lease.granted = False
        start_load = False
        with self._lock:
            slot = self._slots[model_id]
            slot.last_used = time.monotonic()
            if slot.state == "failed":
                raise LoadFailed(model_id, slot.error)
            if slot.state == "loaded" and not slot.draining:
                slot.in_flight += 1
                lease.granted = True
            else:
                slot.waiting.append(lease)
                if slot.state == "unloaded" and not slot.load_queued and not slot.draining:
                    slot.load_queued = start_load = True
        if start_load:
            self._load_in_thread(slot)
        return lease

    def _release(self, lease: Lease) -> None:
        with self._lock:
            slot = self._slots[lease.model]
            slot.last_used = time.monotonic()
            if lease.granted:
                slot.in_flight -= 1
                self._lock.notify_all()  # a drain may be waiting for this
            elif lease in slot.waiting:
                slot.waiting.remove(lease)

    def _load_in_thread(self, slot: _Slot) -> None:
        threading.Thread(target=self._load, args=(slot,), name=f"canvasd-load-{slot.id}",
                         daemon=True).start()

    def _load(self, slot: _Slot) -> None:
        with self._load_lock:
            with self._lock:
                if slot.state in ("loaded", "failed"):
                    slot.load_queued = False
                    return
                victims = self._victims_locked(slot)
                for victim in victims:
                    victim.draining = True
            for victim in victims:
                self._unload(victim, reason=f"to make room for {slot.id}")
            with self._lock:
                slot.state = "loading"
            self._load_now(slot)
        self._after_load(slot)

    def _load_now(self, slot: _Slot) -> None:
        device, dtype = slot.device, slot.dtype
        log.info("loading model %s on %s%s (%s)", slot.id, device, f" in {dtype}" if dtype else "",
                 "preloaded" if slot.preload and not slot.loads else "on demand")
        done = threading.Event()
        t0 = time.monotonic()

        def report_progress() -> None:
            while not done.wait(PROGRESS_EVERY_S):
                log.info("still loading model %s (%.0f s so far)", slot.id, time.monotonic() - t0)

        threading.Thread(target=report_progress, name=f"canvasd-load-progress-{slot.id}",
                         daemon=True).start()
        before = device_allocated_bytes(device)
        try:
            slot.backend.load()
        except Exception as exc:  # noqa: BLE001 - reported to its requests and the log
            done.set()
            log.exception("model %s failed to load", slot.id)
            with self._lock:
                slot.state, slot.error, slot.load_queued = "failed", exc, False
            return
        done.set()
        after = device_allocated_bytes(device)
        measured = getattr(slot.backend, "memory_bytes", None)
        with self._lock:
            if callable(measured):
                slot.bytes, slot.measured = int(measured()), True
            elif before is not None and after is not None and after > before:
                slot.bytes, slot.measured = after - before, True
            elif slot.bytes is None:
                slot.bytes = self._estimate(slot)
            slot.state, slot.load_queued = "loaded", False
            slot.load_s = time.monotonic() - t0
            slot.loads += 1
            slot.last_used = time.monotonic()
        log.info("loaded model %s on %s in %.1f s (%s %s)", slot.id, device, slot.load_s,
                 "measured" if slot.measured else "estimated", format_bytes(slot.bytes))

    def _after_load(self, slot: _Slot) -> None:
        """Grant (or fail) the leases that waited for `slot`, outside the lock, and reload the
        models whose requests came in while they were being unloaded."""
        with self._lock:
            waiting, slot.waiting = slot.waiting, []
            for lease in waiting:
                if slot.state == "loaded":
                    slot.in_flight += 1
                    lease.granted = True
                else:
                    lease.error = slot.error
            reload = [s for s in self._slots.values()
                      if s.waiting and s.state == "unloaded" and not s.load_queued]
            for other in reload:
                other.load_queued = True
        for lease in waiting:
            lease._notify()
        for other in reload:
            self._load_in_thread(other)

    def _estimate(self, slot: _Slot) -> int | None:
        try:
            return estimate_weight_bytes(slot.path, slot.dtype)
        except Exception:  # noqa: BLE001 - an unknown size only weakens the budget
            log.warning("could not estimate the size of model %s", slot.id, exc_info=True)
            return None

    # ------------------------------------------------------------------ making room ----------
    def _victims_locked(self, incoming: _Slot) -> list[_Slot]:
        """The models to unload before `incoming` loads on its device: least recently used first,
        idle ones before busy ones, until the count and the bytes fit."""
        if self.max_loaded is None and self.memory_budget is None:
            return []
        device = incoming.device
        resident = [s for s in self._slots.values()
                    if s is not incoming and s.device == device and s.state in ("loaded", "loading")]
        if incoming.bytes is None and self.memory_budget is not None:
            incoming.bytes = self._estimate(incoming)
        candidates = sorted((s for s in resident if s.state == "loaded" and s.can_unload),
                            key=lambda s: (s.in_flight > 0 or bool(s.waiting), s.last_used))
        victims: list[_Slot] = []

        def over() -> bool:
            kept = [s for s in resident if s not in victims]
            if self.max_loaded is not None and len(kept) + 1 > self.max_loaded:
                return True
            if self.memory_budget is not None:
                used = sum(s.bytes or 0 for s in kept) + (incoming.bytes or 0)
                return used > self.memory_budget
            return False

        while over() and candidates:
            victims.append(candidates.pop(0))
        if over():
            log.warning("model %s goes over %s's budget (%s loaded%s): nothing more can be unloaded",
                        incoming.id, device, len(resident),
                        f", {format_bytes(self.memory_budget)} budget" if self.memory_budget else "")
        return victims

    def _unload(self, slot: _Slot, reason: str) -> None:
        """Unload `slot` once its accepted jobs have finished (called with the load lock held)."""
        with self._lock:
            if slot.in_flight:
                log.info("model %s will unload %s after its %d running jobs", slot.id, reason,
                         slot.in_flight)
            while slot.in_flight:
                self._lock.wait()
        log.info("unloading model %s from %s (%s; least recently used)", slot.id, slot.device, reason)
        try:
            slot.backend.unload()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - count it unloaded; its next load starts afresh
            log.exception("unloading model %s failed", slot.id)
        from canvasd.engine.oom import release_cached_memory

        release_cached_memory()
        with self._lock:
            slot.state, slot.draining = "unloaded", False
