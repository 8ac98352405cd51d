"""What crosses a Ray deployment handle between the ingress and an engine replica.

A `Job` holds a `threading.Event` (cancellation) and PIL images (init images, masks); neither should
be pickled implicitly. `WireJob` is the job's plain fields plus its images as `WireImage` (mode,
size and raw pixels: lossless, and no encode/decode cost on either side). The replica answers with
plain dicts, one per message, in this order:

``{"type": "accepted", "replica": name}`` once the replica's engine has queued the job, or
``{"type": "queue_full", "retry_after": s}`` / ``{"type": "shutting_down"}`` instead;
then ``{"type": "partial", ...}``..., then exactly one ``{"type": "finished", ...}`` or
``{"type": "failed", "kind": ..., "message": ...}``.

Ray-free and torch-free: both sides import it, and so do its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from PIL import Image

from canvasd.contracts import Cancelled
from canvasd.engine.events import (
    Event,
    JobFailed,
    JobFinished,
    JobTimeout,
    OutOfDeviceMemory,
    PartialImage,
    ShuttingDown,
)
from canvasd.contracts import Job

Message = dict[str, Any]


@dataclass(frozen=True)
class WireImage:
    mode: str
    size: tuple[int, int]
    pixels: bytes

    @classmethod
    def of(cls, image: Image.Image) -> "WireImage":
        return cls(image.mode, image.size, image.tobytes())

    def image(self) -> Image.Image:
        return Image.frombytes(self.mode, self.size, self.pixels)


# Job fields that travel as they are (everything but images, the cancel flag and derived state).
_PLAIN = tuple(f.name for f in fields(Job) if f.name not in ("init_images", "mask", "cancel_event"))


@dataclass(frozen=True)
class WireJob:
    plain: dict[str, Any]
    init_images: tuple[WireImage, ...] = ()
    mask: WireImage | None = None

    @classmethod
    def of(cls, job: Job) -> "WireJob":
        return cls({name: getattr(job, name) for name in _PLAIN},
                   tuple(WireImage.of(im) for im in job.init_images),
                   WireImage.of(job.mask) if job.mask is not None else None)

    def job(self) -> Job:
        """A fresh Job (its own cancel flag) equal to the one sent, images included."""
        return Job(**self.plain, init_images=[w.image() for w in self.init_images],
                   mask=self.mask.image() if self.mask is not None else None)


# --- engine events <-> messages ---------------------------------------------------------------
_ERROR_KINDS: dict[str, type[BaseException]] = {
    "timeout": JobTimeout,
    "cancelled": Cancelled,
    "shutdown": ShuttingDown,
    "out_of_memory": OutOfDeviceMemory,
}


def error_message(error: BaseException) -> Message:
    for kind, cls in _ERROR_KINDS.items():
        if isinstance(error, cls):
            return {"type": "failed", "kind": kind, "message": str(error)}
    # the backend's own error: its text travels, its class does not (the ingress may not have it)
    return {"type": "failed", "kind": "error", "message": f"{type(error).__name__}: {error}"}


def error_of(message: Message) -> BaseException:
    cls = _ERROR_KINDS.get(message["kind"], RuntimeError)
    return cls(message["message"])


def event_message(event: Event) -> Message:
    if isinstance(event, PartialImage):
        return {"type": "partial", "image_index": event.image_index, "partial_index": event.partial_index,
                "image": WireImage.of(event.image)}
    if isinstance(event, JobFinished):
        return {"type": "finished", "images": [WireImage.of(im) for im in event.images],
                "timings": dict(event.timings), "prompt_tokens": event.prompt_tokens}
    return error_message(event.error)


def message_event(message: Message) -> Event:
    kind = message["type"]
    if kind == "partial":
        return PartialImage(image_index=message["image_index"], partial_index=message["partial_index"],
                            image=message["image"].image())
    if kind == "finished":
        return JobFinished(images=[w.image() for w in message["images"]],
                           prompt_tokens=message["prompt_tokens"], timings=message["timings"])
    if kind == "failed":
        return JobFailed(error_of(message))
    raise ValueError(f"not an engine event: {kind!r}")
