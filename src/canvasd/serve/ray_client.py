"""The ingress side of Ray Serve: an engine client whose jobs run on engine replicas.

`RayEngineClient` offers what the API calls on canvasd's in-process `Engine` (``submit`` → a handle
with ``accepted``/``events``/``result``/``cancel``, ``start``, ``shutdown``, ``stats``), so the
FastAPI app runs unchanged as the Serve ingress. Each job goes to its model's engine deployment as
one streaming call (``handle.options(stream=True)``); the replica's messages (`canvasd.serve.wire`)
become the same engine events the SSE and JSON paths already consume.

Failure rules:
- a replica refuses (its engine's queue is full) or Serve's own queue at this caller is full
  (``max_queued_requests``): `QueueFull` → the API's 429 with Retry-After;
- the replica dies (killed, out of memory, node lost) before any partial image reached the client:
  the job is sent again, to whichever replica Serve picks (the dead one is routed around once
  Serve notices), up to `_MAX_ATTEMPTS` times within the request timeout;
- it dies after a partial image went out: the job fails with `ReplicaLost` (an OpenAI error event);
- nothing waits forever: the whole exchange is bounded by the request timeout plus a grace.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, AsyncIterator, Mapping

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError

from canvasd.engine.events import (
    Event,
    JobFailed,
    JobFinished,
    JobTimeout,
    PartialImage,
    QueueFull,
    ShuttingDown,
    WorkerLost,
)
from canvasd.contracts import Job
from canvasd.serve.wire import WireJob, message_event

log = logging.getLogger("canvasd.serve")

_MAX_ATTEMPTS = 6
_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
_GRACE_S = 30.0  # beyond the engine's own timeout: queueing in Serve, a retry, transfers
_REPLICA_GONE = (RayActorError, ActorDiedError, ActorUnavailableError)


class ReplicaLost(WorkerLost):
    """The engine replica running the job stopped after part of the answer was sent."""


class RayJobHandle:
    """One job on the engine deployment; lives on the ingress's event loop."""

    def __init__(self, job: Job, client: "RayEngineClient"):
        self.job = job
        self._client = client
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._done = asyncio.Event()
        self._outcome: JobFinished | JobFailed | None = None
        loop = asyncio.get_running_loop()
        self._accepted: asyncio.Future[str] = loop.create_future()
        self.worker: str | None = None  # the replica that has the job (the last one, after retries)
        self.attempts = 0
        self._partial_sent = False  # once a partial image is out, a lost replica cannot be retried
        self._call: Any = None
        self._task = loop.create_task(self._drive(), name=f"canvasd-ray-{job.id}")

    # --- the API's side ------------------------------------------------------------------------
    async def accepted(self) -> str:
        """The replica's name once one has queued the job; raises QueueFull or ShuttingDown."""
        return await asyncio.shield(self._accepted)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, (JobFinished, JobFailed)):
                return

    async def result(self) -> list[Any]:
        await self._done.wait()
        assert self._outcome is not None
        if isinstance(self._outcome, JobFailed):
            raise self._outcome.error
        return self._outcome.images

    @property
    def done(self) -> bool:
        return self._outcome is not None

    @property
    def timings(self) -> dict[str, float]:
        return self._outcome.timings if isinstance(self._outcome, JobFinished) else {}

    @property
    def prompt_tokens(self) -> int | None:
        return self._outcome.prompt_tokens if isinstance(self._outcome, JobFinished) else None

    def cancel(self) -> None:
        """The client went away: stop the remote call (the replica cancels the engine job)."""
        self.job.cancel_event.set()
        if self._call is not None:
            self._call.cancel()
        if not self._task.done():
            self._task.cancel()
        self._finish(JobFailed(_cancelled(self.job)))

    # --- driving the remote call ---------------------------------------------------------------
    def _finish(self, outcome: JobFinished | JobFailed) -> None:
        if self._outcome is not None:
            return
        if not self._accepted.done():
            if isinstance(outcome, JobFailed):
                self._accepted.set_exception(outcome.error)
                self._accepted.exception()  # retrieved: an unawaited refusal is not an error to log
            else:
                self._accepted.set_result(self.worker or "")
        self._outcome = outcome
        self._events.put_nowait(outcome)
        self._done.set()

    async def _drive(self) -> None:
        timeout = self._client.request_timeout_s + _GRACE_S
        try:
            await asyncio.wait_for(self._attempts(), timeout)
        except asyncio.TimeoutError:
            self._finish(JobFailed(JobTimeout(
                f"job {self.job.id} got no answer from the engine replicas within {timeout:.0f}s")))
        except asyncio.CancelledError:
            self._finish(JobFailed(_cancelled(self.job)))
        except Exception as exc:  # noqa: BLE001 - reported to the client as a server_error
            log.exception("job %s failed on the ingress", self.job.id)
            self._finish(JobFailed(exc))

    async def _attempts(self) -> None:
        wire = WireJob.of(self.job)
        while True:
            self.attempts += 1
            try:
                await self._one_call(wire)
                return
            except BackPressureError:
                self._client.counts["refused_at_caller"] += 1
                self._finish(JobFailed(QueueFull(self._client.retry_after())))
                return
            except _REPLICA_GONE as exc:
                lost = f"the engine replica {self.worker or '?'} stopped ({type(exc).__name__})"
            except _StreamEnded:
                lost = f"the engine replica {self.worker or '?'} ended the job without an answer"
            if self._partial_sent or self.attempts >= _MAX_ATTEMPTS:
                self._client.note_lost(retried=False)
                self._finish(JobFailed(ReplicaLost(lost + "; the request could not be completed.")))
                return
            self._client.note_lost(retried=True)
            log.warning("job %s: %s; sending it again (attempt %d)", self.job.id, lost, self.attempts + 1)
            await asyncio.sleep(_BACKOFF_S[min(self.attempts - 1, len(_BACKOFF_S) - 1)])

    async def _one_call(self, wire: WireJob) -> None:
        handle = self._client.deployment(self.job.model)
        self._call = handle.options(stream=True, method_name="run").remote(wire)
        async for message in self._call:
            kind = message["type"]
            if kind == "accepted":
                self.worker = message["replica"]
                if not self._accepted.done():
                    self._accepted.set_result(self.worker)
            elif kind == "queue_full":
                self._client.counts["refused_by_replica"] += 1
                self._finish(JobFailed(QueueFull(float(message["retry_after"]))))
                return
            elif kind == "shutting_down":
                self._finish(JobFailed(ShuttingDown("the engine replica is shutting down")))
                return
            else:
                event = message_event(message)
                if isinstance(event, PartialImage):
                    self._partial_sent = True
                    self._events.put_nowait(event)
                    continue
                if isinstance(event, JobFinished):
                    self._client.note_finished(event.timings)
                self._finish(event)  # type: ignore[arg-type]
                return
        raise _StreamEnded()


class _StreamEnded(Exception):
    """The replica's stream stopped before its terminal message."""


def _cancelled(job: Job) -> BaseException:
    from canvasd.contracts import Cancelled

    return Cancelled(job.id)


class RayEngineClient:
    """Submits jobs to per-model engine deployments through Serve deployment handles."""

    def __init__(self, deployments: Mapping[str, Any], request_timeout_s: float):
        self._deployments = dict(deployments)  # model id -> DeploymentHandle
        self.request_timeout_s = request_timeout_s
        self._closing = False
        self._engine_s: float | None = None  # EWMA of a job's engine time, for Retry-After
        # jobs sent, finished, sent again after a lost replica, lost (could not be sent again), and
        # refused: by Serve's queue at this caller (max_queued_requests) or by a replica's engine
        self.counts = {"jobs": 0, "finished": 0, "retried": 0, "lost": 0, "refused_at_caller": 0,
                       "refused_by_replica": 0}

    def deployment(self, model: str) -> Any:
        try:
            return self._deployments[model]
        except KeyError:
            raise ValueError(f"unknown model {model!r}") from None

    # --- the engine interface the API calls ------------------------------------------------------
    def start(self) -> None:
        self._closing = False

    def submit(self, job: Job) -> RayJobHandle:
        if self._closing:
            raise ShuttingDown("server is shutting down")
        self.deployment(job.model)
        self.counts["jobs"] += 1
        return RayJobHandle(job, self)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        self._closing = True

    def stats(self) -> dict[str, Any]:
        return {"engine": "ray", "models": list(self._deployments), "job_seconds": self._engine_s,
                **self.counts, "shutting_down": self._closing}

    # --- bookkeeping for handles -----------------------------------------------------------------
    def note_finished(self, timings: Mapping[str, float]) -> None:
        self.counts["finished"] += 1
        seconds = float(timings.get("engine_s", 0.0))
        self._engine_s = seconds if self._engine_s is None else self._engine_s + 0.2 * (seconds - self._engine_s)

    def note_lost(self, retried: bool) -> None:
        self.counts["retried" if retried else "lost"] += 1

    def retry_after(self) -> float:
        """Serve's queue at this caller is full: a slot frees when a running job ends, so about one
        job's engine time (recent average); 1 s before any job has finished."""
        return float(max(1, math.ceil(self._engine_s or 1.0)))

