"""Local models: build each configured backend, load them, answer capability questions.

The API asks `capabilities(model_id)` (torch-free); backend modules are imported lazily.
"""

from __future__ import annotations

import logging
import threading

from canvasd.backends.base import Backend
from canvasd.config import ModelSpec, Settings
from canvasd.contracts import Capabilities

log = logging.getLogger("canvasd.registry")


def build_backend(spec: ModelSpec, precision: str = "auto") -> Backend:
    if spec.backend == "emoji":
        from canvasd.backends.emoji.backend import EmojiBackend

        return EmojiBackend(spec.id, spec.path, precision=precision)
    if spec.backend == "diffusers":
        from canvasd.backends.diffusers import DiffusersBackend

        return DiffusersBackend(spec.id, spec.path, precision=precision)
    raise ValueError(f"unknown backend {spec.backend!r} for model {spec.id!r}")


class ModelRegistry:
    def __init__(self, settings: Settings, backends: dict[str, Backend] | None = None):
        self.settings = settings
        self.backends: dict[str, Backend] = (
            backends if backends is not None else {m.id: build_backend(m, settings.precision) for m in settings.models}
        )
        self._ready = threading.Event()
        self.load_error: BaseException | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def load_all(self) -> None:
        """Load every backend (slow). Sets `ready` on success, `load_error` on failure."""
        try:
            for model_id, backend in self.backends.items():
                log.info("loading model %s (precision %s)", model_id, self.settings.precision)
                backend.load()
            self._ready.set()
        except BaseException as exc:  # noqa: BLE001 - reported by /ready and the log
            self.load_error = exc
            log.exception("model loading failed")

    def resolve(self, name: str) -> str | None:
        return self.settings.resolve_alias(name)

    def capabilities(self, model_id: str) -> Capabilities:
        return self.backends[model_id].capabilities

    def get(self, model_id: str) -> Backend:
        return self.backends[model_id]
