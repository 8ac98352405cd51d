"""Build a configured model's backend (backend modules are imported lazily).

Loading, unloading and load state live in `canvasd.backends.registry.ModelRegistry`.
"""

from __future__ import annotations

import logging

from canvasd.backends.base import Backend
from canvasd.settings import ModelSettings, Settings, SettingsError

log = logging.getLogger("canvasd.registry")


# Per-model settings declared ahead of the work that gives them meaning (devices, memory options,
# LoRA, Ray replicas). Until a backend honours one, any value but these is
# refused at start instead of being ignored; implementing a setting means deleting its row.
NOT_YET_HONOURED: dict[str, tuple[object, ...]] = {
    "device": ("auto", "cpu"),  # the embedded model runs on the CPU
    "dtype": ("auto",),  # the embedded model: the server-wide `precision` decides
    "offload": ("none",),
    "vae_tiling": ("auto",),
    "loras": ([],),
}

# Per-model settings that only a Ray Serve deployment honours (canvasd.serve.ray).
RAY_ONLY = ("replicas", "min_replicas", "max_replicas", "num_cpus", "num_gpus")


def check_single_process(settings: Settings) -> None:
    """A single-process server refuses the Ray-only model settings rather than ignore them."""
    for spec in settings.models:
        for field in RAY_ONLY:
            if getattr(spec, field) is not None:
                raise SettingsError(f"model {spec.id!r}: {field} applies only to Ray Serve "
                                    "(set replicas or ray_address, or RAY_ADDRESS)")


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
