"""The serving engine: one worker thread that batches compatible jobs step by step.

Why: on CPU a denoising step over 8 samples costs far less than 8 steps over 1 sample, so
throughput comes from running many requests' samples through ONE `backend.step` call. Peers run
one job at a time behind a mutex; `Settings.batching=False` reproduces that for the benchmark.

Shape (read top to bottom):

- `Engine.submit` (any thread, inside a running asyncio loop) appends a job to a waiting queue
  keyed by ``(model id, backend.batch_key(job))`` and returns a `LocalJobHandle`. Events go back to the
  submitting loop with ``loop.call_soon_threadsafe``.
- The worker thread serves one *group* at a time: a running set of samples sharing one key.
  Before every denoising step it drops cancelled / timed-out jobs, admits waiting jobs of the
  group's key into the free slots (all n samples of a job join together), then calls ONE
  ``backend.step(samples)`` for the whole set (in chunks of the batch cap when a single job has
  more samples than the cap). Finished jobs leave between steps; their slots are reused at the
  next step.
- Fairness between keys (different sizes or models): a group keeps admitting same-key newcomers
  only while no other key waits, or when the newcomer is older than every waiting job of another
  key. So once another key waits, the group drains; when it is empty the least recently served key
  with waiting jobs runs next (ties: the one with the oldest job). A job is overtaken by at most
  one turn of each other key — nobody starves.
- Non-stepwise backends run one job per turn through ``backend.run(job, on_step)``.
- Serial mode (``batching=False``): one job at a time, first come first served; its own n
  samples are still batched together.

Threads: exactly one worker thread (two cores are better spent inside one batched step than on
two competing ones); torch's intra-op thread count is set once, to ``Settings.torch_threads`` or
all usable cores, and only when a backend has imported torch — this module never imports it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, AsyncIterator, Hashable

from canvasd import metrics
from canvasd.backends.base import Backend, StepCallback, StepwiseBackend, as_stepwise, count_prompt_tokens
from canvasd.backends.registry import LoadFailed
from canvasd.settings import Settings
from canvasd.contracts import Cancelled, Job, Sample
from canvasd.engine.events import (
    Event,
    JobFailed,
    JobFinished,
    JobTimeout,
    ModelUnavailable,
    OutOfDeviceMemory,
    PartialImage,
    QueueFull,
    ShuttingDown,
)
from canvasd.engine.oom import is_out_of_memory, release_cached_memory
from canvasd.host import usable_cores

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

    from canvasd.backends.registry import Lease, ModelRegistry

log = logging.getLogger("canvasd.engine")

_WHOLE_JOB = "__whole_job__"  # batch key of non-stepwise backends: one job per turn
_EWMA = 0.2  # weight of the newest step in the step-time / batch-size averages
_IDLE_WAIT_S = 1.0  # the worker re-checks deadlines at least this often when idle


class LocalJobHandle:
    """The in-process engine's `JobHandle` (canvasd.engine.client): one job's events, its result,
    and a way to cancel it.

    Lives on the asyncio loop that called `Engine.submit`; the worker thread only ever touches it
    through ``loop.call_soon_threadsafe``. `events()` is meant for a single consumer.
    """

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop, engine: "Engine"):
        self.job = job
        self._loop = loop
        self._engine = engine
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._done = asyncio.Event()
        self._outcome: JobFinished | JobFailed | None = None

    # --- worker side -------------------------------------------------------------------------
    def _post(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._receive, event)
        except RuntimeError:  # the submitter's loop is closed: nobody is listening any more
            pass

    def _receive(self, event: Event) -> None:
        if self._outcome is not None:  # exactly one terminal event, nothing after it
            return
        self._events.put_nowait(event)
        if isinstance(event, (JobFinished, JobFailed)):
            self._outcome = event
            self._done.set()

    # --- submitter side ----------------------------------------------------------------------
    async def events(self) -> AsyncIterator[Event]:
        """PartialImage..., then exactly one JobFinished or JobFailed."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, (JobFinished, JobFailed)):
                return

    async def result(self) -> list["Image"]:
        """The finished images; raises JobTimeout, Cancelled, ShuttingDown or the backend's error."""
        await self._done.wait()
        assert self._outcome is not None
        if isinstance(self._outcome, JobFailed):
            raise self._outcome.error
        return self._outcome.images

    @property
    def done(self) -> bool:
        return self._outcome is not None

    @property
    def worker(self) -> str:
        """The engine instance that runs the job (the `x-canvasd-replica` header)."""
        return self._engine.name

    async def accepted(self) -> str:
        """The worker's name; `submit` has already queued the job (or raised QueueFull)."""
        return self.worker

    @property
    def timings(self) -> dict[str, float]:
        return self._outcome.timings if isinstance(self._outcome, JobFinished) else {}

    @property
    def prompt_tokens(self) -> int | None:
        return self._outcome.prompt_tokens if isinstance(self._outcome, JobFinished) else None

    def cancel(self) -> None:
        """The client went away: stop the job at the next step boundary (or drop it if queued)."""
        self.job.cancel_event.set()
        self._engine._cancel_waiting(self.job.id)


@dataclass
class _Entry:
    """A job inside the engine: waiting, then running in a group."""

    job: Job
    handle: LocalJobHandle
    backend: Backend
    key: Hashable
    submitted: float  # monotonic
    admitted: float | None = None
    samples: list[Sample] = field(default_factory=list)
    previews: dict[int, list[int]] = field(default_factory=dict)  # sample index -> preview steps
    partials_sent: dict[int, int] = field(default_factory=dict)  # sample index -> partials so far
    failed: bool = False
    lease: "Lease | None" = None  # the job's hold on its model (None: no registry, always loaded)

    @property
    def runnable(self) -> bool:
        """Its model is loaded for it (a job whose model is still loading waits in the queue)."""
        return self.lease is None or self.lease.granted

    @property
    def n(self) -> int:
        return self.job.n


@dataclass
class _Group:
    """The running set: jobs sharing one key, stepped together."""

    key: Hashable
    backend: Backend
    stepper: StepwiseBackend | None  # None: a whole-job backend, one job per turn, run() loops
    cap: int  # samples per backend.step call
    entries: list[_Entry] = field(default_factory=list)

    @property
    def samples_in_use(self) -> int:
        return sum(e.n for e in self.entries)


class Engine:
    """The in-process `EngineClient` (canvasd.engine.client): one worker thread over `backends`."""

    def __init__(self, backends: dict[str, Backend], settings: Settings,
                 models: "ModelRegistry | None" = None):
        """`models`: the registry that loads models on demand; every job holds a lease on its
        model from submit to its end, and runs once the lease is granted. Without one, every
        backend is taken as loaded."""
        self.backends = backends
        self.settings = settings
        self._models = models
        self._cond = threading.Condition()
        self._waiting: dict[Hashable, deque[_Entry]] = {}  # key -> FIFO; only non-empty deques
        self._waiting_images = 0
        self._last_served: dict[Hashable, int] = {}
        self._turns = 0
        self._group: _Group | None = None
        self._started = False
        self._closing = False
        self._deadline = math.inf  # shutdown: running work past this is cancelled
        self._thread: threading.Thread | None = None
        self._torch_configured = False
        self._step_s: float | None = None  # EWMA of one backend.step call's wall time
        self._batch_avg: float | None = None  # EWMA of samples per step
        # Batch keys that ran out of device memory -> the most samples per step that fitted: later
        # groups of the key start there instead of running out again.
        self._fit_cap: dict[Hashable, int] = {}
        self.steps_done = 0
        self.name = f"{socket.gethostname()}:{os.getpid()}"  # this engine, as responses name it

    # ------------------------------------------------------------------ public interface ----
    def start(self) -> None:
        with self._cond:
            if self._started:
                return
            if self._closing:
                raise ShuttingDown("engine was shut down")
            self._started = True
        self._configure_torch()
        self._thread = threading.Thread(target=self._worker, name="canvasd-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> LocalJobHandle:
        """Queue a job. Call from inside a running asyncio loop; events are delivered to it."""
        loop = asyncio.get_running_loop()
        try:
            backend = self.backends[job.model]
        except KeyError:
            raise ValueError(f"unknown model {job.model!r}") from None
        if backend.capabilities.stepwise:
            key: Hashable = (job.model, backend.batch_key(job))
        else:
            key = (job.model, _WHOLE_JOB)
        handle = LocalJobHandle(job, loop, self)
        # Outside the engine's lock: a lease may start the model's load.
        try:
            lease = self._models.acquire(job.model, self._wake) if self._models is not None else None
        except LoadFailed as exc:  # the model failed to load before: refused at once
            raise _unavailable(job.model, exc.error or exc) from None
        try:
            with self._cond:
                if self._closing:
                    raise ShuttingDown("server is shutting down")
                if self._waiting_images + job.n > self.settings.max_queue:
                    raise QueueFull(self._retry_after_locked(job))
                entry = _Entry(job, handle, backend, key, time.monotonic(), lease=lease)
                self._waiting.setdefault(key, deque()).append(entry)
                self._waiting_images += job.n
                metrics.QUEUE_DEPTH.set(self._waiting_images)
                self._cond.notify_all()
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        return handle

    def _wake(self) -> None:
        """A model finished loading (or failed to): waiting jobs may run, or must fail, now."""
        with self._cond:
            self._cond.notify_all()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop admitting; fail queued jobs now; let running ones finish until the deadline, then
        cancel them (JobFailed(ShuttingDown)); join the worker thread."""
        with self._cond:
            self._closing = True
            # a second call (the lifespan after the signal's drain) never extends the deadline
            self._deadline = min(self._deadline, time.monotonic() + timeout_s)
            for queue in self._waiting.values():
                for entry in queue:
                    self._fail(entry, ShuttingDown("server is shutting down"), "shutdown")
            self._waiting.clear()
            self._waiting_images = 0
            metrics.QUEUE_DEPTH.set(0)
            self._cond.notify_all()
        if self._thread is not None:
            # A step already running cannot be interrupted; give it a little grace.
            self._thread.join(timeout=timeout_s + 5.0)
            if self._thread.is_alive():  # pragma: no cover - a backend step hung
                log.error("engine worker did not stop within %.0fs of the deadline", 5.0)

    async def ashutdown(self, timeout_s: float = 30.0) -> None:
        """`shutdown` without blocking the event loop (for an async lifespan)."""
        await asyncio.to_thread(self.shutdown, timeout_s)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            group = self._group
            return {
                "queue_depth": self._waiting_images,
                "waiting_jobs": sum(len(q) for q in self._waiting.values()),
                "running": group.samples_in_use if group else 0,
                "active_jobs": len(group.entries) if group else 0,
                "batching": self.settings.batching,
                "max_batch": self.settings.max_batch,
                "step_seconds": self._step_s,
                "steps_done": self.steps_done,
                "shutting_down": self._closing,
            }

    # ------------------------------------------------------------------ worker ----------------
    def _worker(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                self._sweep_waiting_locked(now)
                if self._group is not None:
                    self._sweep_running_locked(self._group, now)
                    if not self._group.entries:
                        self._group = None
                        metrics.RUNNING_BATCH.set(0)  # its last jobs may have left by cancellation
                if self._group is None:
                    if self._closing:
                        break
                    keys = self._runnable_keys_locked()
                    if not keys:  # nothing queued, or only jobs whose model is still loading
                        self._cond.wait(timeout=_IDLE_WAIT_S)
                        continue
                    self._group = self._open_group_locked(keys)
                group = self._group
                admitted = self._admit_locked(group, now)
            self._configure_torch()
            try:
                if group.stepper is None:
                    self._run_whole_job(group)
                else:
                    self._start_jobs(group, group.stepper, admitted)
                    self._step_group(group, group.stepper)
            except Exception:  # pragma: no cover - engine bug: fail the group, keep serving
                log.exception("engine error")
                for entry in list(group.entries):
                    self._finish_failed(group, entry, RuntimeError("internal engine error"))
        metrics.RUNNING_BATCH.set(0)

    def _runnable_keys_locked(self) -> list[Hashable]:
        """Keys whose oldest waiting job can run (its model is loaded)."""
        return [k for k, q in self._waiting.items() if q[0].runnable]

    def _open_group_locked(self, keys: list[Hashable]) -> _Group:
        """Next key to serve, of `keys`: least recently served key with waiters (ties: oldest job
        first); in serial mode strictly the oldest job."""
        if self.settings.batching:
            key = min(
                keys,
                key=lambda k: (self._last_served.get(k, -1), self._waiting[k][0].submitted),
            )
        else:
            key = min(keys, key=lambda k: self._waiting[k][0].submitted)
        self._turns += 1
        self._last_served[key] = self._turns
        backend = self._waiting[key][0].backend
        cap = max(1, min(self.settings.max_batch, backend.capabilities.max_batch,
                         self._fit_cap.get(key, self.settings.max_batch)))
        return _Group(key=key, backend=backend, stepper=as_stepwise(backend), cap=cap)

    def _admit_locked(self, group: _Group, now: float) -> list[_Entry]:
        """Move waiting jobs of the group's key into it (FIFO, stop at the first that won't fit)."""
        queue = self._waiting.get(group.key)
        if not queue or self._closing:
            return []
        single = group.stepper is None or not self.settings.batching
        if single and group.entries:
            return []
        fresh_turn = not group.entries
        others = [q[0].submitted for k, q in self._waiting.items() if k != group.key and q[0].runnable]
        oldest_other = min(others, default=math.inf)
        admitted: list[_Entry] = []
        while queue:
            entry = queue[0]
            if not entry.runnable:
                break  # its model is loading for it (a reload after an unload): FIFO waits
            if not fresh_turn and entry.submitted > oldest_other:
                break  # another key waits longer: drain this group instead of growing it
            used = group.samples_in_use
            if used and used + entry.n > group.cap:
                break  # a job bigger than the cap still runs, alone, in chunks
            queue.popleft()
            entry.admitted = now
            group.entries.append(entry)
            admitted.append(entry)
            self._waiting_images -= entry.n
            metrics.QUEUE_WAIT_SECONDS.observe(now - entry.submitted)
            if single:
                break
        if not queue:
            del self._waiting[group.key]
        metrics.QUEUE_DEPTH.set(self._waiting_images)
        return admitted

    def _start_jobs(self, group: _Group, stepper: StepwiseBackend, admitted: list[_Entry]) -> None:
        for entry in admitted:
            try:
                entry.samples = stepper.start(entry.job)
            except Exception as exc:
                log.warning("job %s failed to start: %r", entry.job.id, exc)
                self._finish_failed(group, entry, exc)
                continue
            for s in entry.samples:
                entry.previews[s.index] = entry.job.preview_steps(s.total_steps)
                entry.partials_sent[s.index] = 0

    def _step_group(self, group: _Group, stepper: StepwiseBackend) -> None:
        live = [s for e in group.entries for s in e.samples if not s.done]
        metrics.RUNNING_BATCH.set(len(live))
        entry_of = {id(e.job): e for e in group.entries}
        i = 0
        while i < len(live):
            # Only a job with more samples than the cap needs a second chunk; the cap may shrink
            # inside this loop when a chunk runs out of device memory.
            chunk = live[i : i + group.cap]
            i += len(chunk)
            self._step_fitting(group, stepper, chunk, entry_of)
        for entry in list(group.entries):
            if entry.failed:
                continue
            try:
                self._emit_previews(entry, stepper)
                if all(s.done for s in entry.samples):
                    images = self._finish_fitting(stepper, entry.samples)
                    self._finish_ok(group, entry, images)
            except Exception as exc:
                log.warning("job %s failed after its step: %r", entry.job.id, exc)
                self._finish_failed(group, entry, exc)
        if not group.entries:
            metrics.RUNNING_BATCH.set(0)

    def _step_fitting(self, group: _Group, stepper: StepwiseBackend, chunk: list[Sample],
                      entry_of: dict[int, _Entry]) -> None:
        """ONE ``backend.step`` over `chunk`; when it runs out of device memory, the chunk is split
        in halves that are retried one after the other (a backend's step leaves its samples as they
        were when it raises), and the group's cap drops to the half so its later steps, and later
        groups of the same key, do not run out again. A single sample that still does not fit
        fails its own job with `OutOfDeviceMemory`; every other job goes on."""
        pending = [chunk]
        while pending:
            part = [s for s in pending.pop(0) if not entry_of[id(s.job)].failed]
            if not part:
                continue
            t0 = time.perf_counter()
            try:
                stepper.step(part)
            except Exception as exc:  # fail only the jobs in this batch; keep serving
                if is_out_of_memory(exc):
                    release_cached_memory()
                    if len(part) > 1:
                        half = (len(part) + 1) // 2
                        log.warning("out of device memory stepping %d samples of %s; retrying "
                                    "as %d + %d", len(part), group.key, half, len(part) - half)
                        metrics.OOM_SPLITS.inc()
                        group.cap = min(group.cap, half)
                        self._fit_cap[group.key] = group.cap
                        pending[:0] = [part[:half], part[half:]]
                        continue
                log.warning("step of %d samples failed: %r", len(part), exc)
                for job_key in {id(s.job) for s in part}:
                    self._finish_failed(group, entry_of[job_key], exc)
                continue
            self._record_step(time.perf_counter() - t0, len(part))

    @staticmethod
    def _finish_fitting(backend: StepwiseBackend, samples: list[Sample]) -> list["Image"]:
        """``backend.finish`` (decode) of a job's samples together, or one by one when decoding
        them together runs out of device memory (a single one that does not fit raises)."""
        try:
            return backend.finish(samples)
        except Exception as exc:
            if len(samples) < 2 or not is_out_of_memory(exc):
                raise
        release_cached_memory()
        metrics.OOM_SPLITS.inc()
        log.warning("out of device memory decoding %d images; decoding one at a time", len(samples))
        return [image for s in samples for image in backend.finish([s])]

    def _emit_previews(self, entry: _Entry, backend: StepwiseBackend) -> None:
        for s in entry.samples:
            plan = entry.previews.get(s.index, ())
            sent = entry.partials_sent.get(s.index, 0)
            if sent < len(plan) and s.step >= plan[sent]:
                image = backend.preview(s)
                entry.handle._post(PartialImage(s.index, sent, image))
                entry.partials_sent[s.index] = sent + 1

    def _run_whole_job(self, group: _Group) -> None:
        entry = group.entries[0]
        job = entry.job
        stop: list[tuple[BaseException, str]] = []
        step_began = [time.perf_counter()]

        def on_step(step_done: int, total: int, preview, offset: int = 0) -> bool:
            self._record_step(time.perf_counter() - step_began[0], job.n)
            plan = job.preview_steps(total)
            if step_done in plan:
                for index, image in enumerate(preview()):
                    entry.handle._post(PartialImage(offset + index, plan.index(step_done), image))
            with self._cond:
                now = time.monotonic()
                self._sweep_waiting_locked(now)
                reason = self._stop_reason(entry, now)
            if reason:
                stop.append(reason)
            step_began[0] = time.perf_counter()
            return not reason

        metrics.RUNNING_BATCH.set(job.n)
        try:
            images = self._run_fitting(group.backend, job, on_step, entry)
        except Exception as exc:
            if stop:
                self._drop(group, entry, *stop[0])
            else:
                log.warning("job %s failed: %r", job.id, exc)
                self._finish_failed(group, entry, exc)
        else:
            if stop:  # the backend returned early instead of raising Cancelled
                self._drop(group, entry, *stop[0])
            else:
                self._finish_ok(group, entry, images)
        metrics.RUNNING_BATCH.set(0)

    def _run_fitting(self, backend: Backend, job: Job, on_step: StepCallback, entry: _Entry) -> list["Image"]:
        """``backend.run(job)``; when it runs out of device memory with several images, the job is
        run again as two halves. Image i is seeded ``job.seed + i``, so the half starting at image
        k is the same job with ``n`` halved and ``seed + k``: the same images as one run. Partial
        images of the second half keep their own indices."""
        try:
            return backend.run(job, on_step)
        except Exception as exc:
            if job.n < 2 or not is_out_of_memory(exc) or job.cancelled:
                raise
        release_cached_memory()
        metrics.OOM_SPLITS.inc()
        half = (job.n + 1) // 2
        log.warning("out of device memory running job %s (%d images); retrying as %d + %d",
                    job.id, job.n, half, job.n - half)
        images: list["Image"] = []
        for offset, n in ((0, half), (half, job.n - half)):
            part = replace(job, n=n, seed=job.seed + offset)
            images += self._run_fitting(backend, part, _offset_previews(on_step, offset), entry)
        return images

    # ------------------------------------------------------------------ cancellation ---------
    def _stop_reason(self, entry: _Entry, now: float) -> tuple[BaseException, str] | None:
        if entry.lease is not None and entry.lease.error is not None:
            return _unavailable(entry.job.model, entry.lease.error), "model_unavailable"
        if entry.job.cancel_event.is_set():
            return Cancelled(entry.job.id), "client"
        if now - entry.submitted > self.settings.request_timeout_s:
            return JobTimeout(
                f"job {entry.job.id} exceeded the {self.settings.request_timeout_s:g}s timeout"
            ), "timeout"
        if self._closing and now >= self._deadline:
            return ShuttingDown("server is shutting down"), "shutdown"
        return None

    def _sweep_waiting_locked(self, now: float) -> None:
        for key in list(self._waiting):
            queue = self._waiting[key]
            keep = deque()
            for entry in queue:
                reason = self._stop_reason(entry, now)
                if reason:
                    self._waiting_images -= entry.n
                    self._fail(entry, *reason)
                else:
                    keep.append(entry)
            if keep:
                self._waiting[key] = keep
            else:
                del self._waiting[key]
        metrics.QUEUE_DEPTH.set(self._waiting_images)

    def _sweep_running_locked(self, group: _Group, now: float) -> None:
        for entry in list(group.entries):
            reason = self._stop_reason(entry, now)
            if reason:
                self._drop(group, entry, *reason)

    def _cancel_waiting(self, job_id: str) -> None:
        """Client gone while queued: free its queue slots now rather than at the next step."""
        with self._cond:
            for key, queue in list(self._waiting.items()):
                for entry in queue:
                    if entry.job.id == job_id:
                        queue.remove(entry)
                        if not queue:
                            del self._waiting[key]
                        self._waiting_images -= entry.n
                        metrics.QUEUE_DEPTH.set(self._waiting_images)
                        self._fail(entry, Cancelled(job_id), "client")
                        return

    # ------------------------------------------------------------------ outcomes -------------
    def _fail(self, entry: _Entry, error: BaseException, reason: str | None = None) -> None:
        if entry.failed:
            return
        entry.failed = True
        if entry.lease is not None:
            entry.lease.release()
        if is_out_of_memory(error):
            error = _out_of_memory(entry)
        if reason:
            metrics.CANCELLATIONS.labels(reason=reason).inc()
        entry.handle._post(JobFailed(error))

    def _drop(self, group: _Group, entry: _Entry, error: BaseException, reason: str) -> None:
        if entry in group.entries:
            group.entries.remove(entry)
        self._fail(entry, error, reason)

    def _finish_failed(self, group: _Group, entry: _Entry, error: BaseException) -> None:
        if entry in group.entries:
            group.entries.remove(entry)
        self._fail(entry, error)

    def _finish_ok(self, group: _Group, entry: _Entry, images: list["Image"]) -> None:
        group.entries.remove(entry)
        now = time.monotonic()
        admitted = entry.admitted if entry.admitted is not None else entry.submitted
        metrics.ENGINE_SECONDS.observe(now - admitted)
        metrics.IMAGES_GENERATED.labels(model=entry.job.model).inc(len(images))
        timings = {"queue_s": admitted - entry.submitted, "engine_s": now - admitted}
        tokens = count_prompt_tokens(entry.backend, entry.job.prompt)  # on the worker thread
        if entry.lease is not None:  # the backend is done with: its model may unload now
            entry.lease.release()
        entry.handle._post(JobFinished(images, prompt_tokens=tokens, timings=timings))

    # ------------------------------------------------------------------ estimates ------------
    def _record_step(self, seconds: float, batch: int) -> None:
        self.steps_done += 1
        metrics.BATCH_SIZE.observe(batch)
        if self._step_s is None:
            self._step_s, self._batch_avg = seconds, float(batch)
        else:
            self._step_s += _EWMA * (seconds - self._step_s)
            self._batch_avg += _EWMA * (batch - self._batch_avg)  # type: ignore[operator]

    def _retry_after_locked(self, job: Job) -> float:
        """Seconds until enough queued images have been admitted for `job` to fit.

        Rule: the engine advances ``batch`` samples per step of ``step_s`` seconds (recent
        averages), and an image needs ``steps`` steps (mean over the queue), so images leave the
        queue at ``batch / (steps * step_s)`` per second. The wait is the excess images
        (queued + job.n - max_queue) over that rate, rounded up, at least 1 s and at most the
        request timeout. Before any step has been timed the answer is 1 s.
        """
        excess = self._waiting_images + job.n - self.settings.max_queue
        if self._step_s is None or excess <= 0:
            return 1.0
        queued = [e.job.steps for q in self._waiting.values() for e in q] or [job.steps]
        steps = sum(queued) / len(queued)
        rate = (self._batch_avg or 1.0) / (max(steps, 1) * self._step_s)
        return float(min(max(1, math.ceil(excess / rate)), math.ceil(self.settings.request_timeout_s)))

    def _configure_torch(self) -> None:
        """Set torch's intra-op threads once, if (and only when) a backend has imported torch."""
        if self._torch_configured:
            return
        torch = sys.modules.get("torch")
        if torch is None:
            return
        threads = self.settings.torch_threads or usable_cores()
        torch.set_num_threads(threads)
        self._torch_configured = True
        log.info("torch intra-op threads: %d", threads)


def _offset_previews(on_step: Any, offset: int) -> Any:
    """`on_step` for the second half of a split whole job: its previews come after the first's."""
    if not offset:
        return on_step

    def shifted(step_done: int, total: int, preview: Any) -> bool:
        return on_step(step_done, total, preview, offset)

    return shifted


def _out_of_memory(entry: _Entry) -> OutOfDeviceMemory:
    job = entry.job
    device = getattr(entry.backend, "device", None)
    where = f" of {device}" if device is not None else ""
    return OutOfDeviceMemory(
        f"Out of device memory: one {job.width}x{job.height} image of model '{job.model}' does not "
        f"fit in the memory{where}, even alone in its batch. Request a smaller size, or ask the "
        "operator to give the model more memory (CPU offload, fewer models per device, a larger "
        "device).")


def _unavailable(model: str, error: BaseException) -> ModelUnavailable:
    return ModelUnavailable(f"Model '{model}' could not be loaded, so it cannot serve requests: "
                            f"{error}")
