"""Local models: build each configured backend, load them, answer capability questions.

The API asks `capabilities(model_id)` (torch-free); backend modules are imported lazily.
"""

from __future__ import annotations

import logging
import threading

from canvasd.backends.base import Backend
from canvasd.settings import ModelSettings, Settings, SettingsError
from canvasd.contracts import Capabilities

log = logging.getLogger("canvasd.registry")


# Per-model settings declared ahead of the work that gives them meaning (devices, memory options,
# on-demand loading, LoRA, Ray replicas). Until a backend honours one, any value but these is
# refused at start instead of being ignored; implementing a setting means deleting its row.
NOT_YET_HONOURED: dict[str, tuple[object, ...]] = {
    "device": ("auto", "cpu"),  # the embedded model runs on the CPU
    "dtype": ("auto",),  # the embedded model: the server-wide `precision` decides
    "offload": ("none",),
    "vae_tiling": ("auto",),
    "preload": (None, True),  # every model loads at start
    "loras": ([],),
    "replicas": (None,),
    "min_replicas": (None,),
    "max_replicas": (None,),
    "num_cpus": (None,),
    "num_gpus": (None,),
}


# Rows of NOT_YET_HONOURED a backend does honour.
HONOURED_BY: dict[str, frozenset[str]] = {
    "diffusers": frozenset({"device", "dtype", "offload", "vae_tiling", "loras"}),  # backends/diffusers
}


def check_honoured(spec: ModelSettings) -> None:
    for field, allowed in NOT_YET_HONOURED.items():
        if field in HONOURED_BY.get(str(spec.backend), frozenset()):
            continue
        value = getattr(spec, field)
        if value not in allowed:
            raise SettingsError(f"model {spec.id!r}: {field} = {value!r} is not supported yet "
                                f"(accepted: {', '.join(repr(a) for a in allowed)})")


def build_backend(spec: ModelSettings, precision: str = "auto") -> Backend:
    check_honoured(spec)
    if spec.backend == "emoji":
        from canvasd.backends.emoji.backend import EmojiBackend

        return EmojiBackend(spec.id, spec.path, precision=precision)
    if spec.backend == "diffusers":
        from canvasd.backends.diffusers import DiffusersBackend
        from canvasd.backends.diffusers.lora import LoraSpec

        return DiffusersBackend(
            spec.id, spec.path, precision=precision, device=spec.device, dtype=spec.dtype, offload=spec.offload,
            vae_tiling=spec.vae_tiling, loras=[LoraSpec(lo.name, lo.path, lo.scale) for lo in spec.loras],
        )
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
