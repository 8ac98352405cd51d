"""What the API (and a scale-out ingress) calls on an engine: the `EngineClient` and `JobHandle`
protocols. The in-process `canvasd.engine.scheduler.Engine` implements them; so can an engine
reached over a process or network boundary, and so do the tests' stand-ins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator, Protocol

from canvasd.contracts import Job
from canvasd.engine.events import Event

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image


class JobHandle(Protocol):
    """The submitter's view of one submitted job."""

    job: Job

    def events(self) -> AsyncIterator[Event]:
        """PartialImage..., then exactly one JobFinished or JobFailed (a single consumer)."""
        ...

    async def result(self) -> list["Image"]:
        """The finished images; raises JobTimeout, Cancelled, ShuttingDown or the backend's error."""
        ...

    @property
    def done(self) -> bool:
        """True once the job finished or failed."""
        ...

    @property
    def timings(self) -> dict[str, float]:
        """queue_s, engine_s of a finished job ({} before that, or after a failure)."""
        ...

    @property
    def prompt_tokens(self) -> int | None:
        """The prompt's text tokens as the backend's tokenizer counts them (None until finished)."""
        ...

    def cancel(self) -> None:
        """The client went away: stop the job at the next step boundary (or drop it if queued)."""
        ...

    @property
    def worker(self) -> str:
        """The engine instance that has the job (a Ray replica's name, host:pid in-process): the
        `x-canvasd-replica` response header."""
        ...

    async def accepted(self) -> str:
        """Returns `worker` once an engine has queued the job. An engine across a process boundary
        may refuse only here (QueueFull, ShuttingDown); an in-process one refuses in `submit`."""
        ...


class EngineClient(Protocol):
    """An engine: accepts jobs, reports on them, shuts down."""

    def start(self) -> None:
        """Begin serving (idempotent)."""
        ...

    def submit(self, job: Job) -> JobHandle:
        """Queue a job, from inside a running asyncio loop (its events are delivered there).
        Raises QueueFull or ShuttingDown (canvasd.engine.events) when it cannot take the job."""
        ...

    def stats(self) -> dict[str, Any]:
        """Queue depth, running samples, step time... (published by /ready)."""
        ...

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop admitting, fail queued jobs, let running ones finish until the deadline. May be
        called again (the server starts the drain on SIGTERM, the app's lifespan ends it): a later
        call never extends the first call's deadline."""
        ...
