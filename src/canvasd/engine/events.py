"""What the engine reports about a job, in order, to whoever awaits it (the API layer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image


@dataclass
class PartialImage:
    image_index: int  # which of the job's n images
    partial_index: int  # 0-based, per image
    image: "Image"


@dataclass
class JobFinished:
    images: list["Image"]
    # the prompt's text tokens (for `usage`), counted on the engine thread: a backend's tokenizer
    # is shared with its sampling code and is not safe to call from another thread meanwhile
    prompt_tokens: int
    timings: dict[str, float] = field(default_factory=dict)  # queue_s, engine_s


@dataclass
class JobFailed:
    error: BaseException


Event = PartialImage | JobFinished | JobFailed


class EngineError(Exception):
    """Base of the engine's refusals; the API maps each to an OpenAI error."""


class QueueFull(EngineError):
    def __init__(self, retry_after: float):
        super().__init__(f"queue full, retry after {retry_after:.0f}s")
        self.retry_after = retry_after


class ShuttingDown(EngineError):
    pass


class JobTimeout(EngineError):
    pass


class WorkerLost(EngineError):
    """The engine process running the job stopped (killed, out of memory, node lost) after part of
    the answer had gone out, so the job could not be sent to another one."""


class OutOfDeviceMemory(EngineError):
    """One image of the job did not fit in its device's memory even alone (the engine had already
    split the batch down to it); the API answers with a `server_error` carrying this message."""


class ModelUnavailable(EngineError):
    """The job's model failed to load (the message carries the load's error); other models serve
    on. The API answers 503 `server_error`."""
