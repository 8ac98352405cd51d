"""LoRA adapters a model's config lists, and the set a request selects.

A model lists adapters (a name, a local ``.safetensors`` file, a default scale). A request's
extension field ``lora`` selects among them: absent = every listed adapter at its configured
scale (the model as configured); a name or a list of names = those adapters at their configured
scales; ``{"name": ..., "scale": ...}`` entries override the scale; ``[]`` = none (the base model).
The selection is part of the batch key: samples with different adapter sets never share a forward,
and the backend activates a batch's set (``set_adapters``) before its step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from canvasd.contracts import Job

AdapterSet = tuple[tuple[str, float], ...]  # (name, scale) sorted by name; () = base model


@dataclass(frozen=True)
class LoraSpec:
    name: str
    path: Path
    scale: float = 1.0


def check_loras(model_id: str, loras: Sequence[LoraSpec]) -> tuple[LoraSpec, ...]:
    """The configured adapters, or ValueError: duplicate names, missing or non-safetensors files."""
    seen: set[str] = set()
    for spec in loras:
        if spec.name in seen:
            raise ValueError(f"model {model_id!r}: LoRA name {spec.name!r} is listed twice")
        seen.add(spec.name)
        path = Path(spec.path).expanduser()
        if path.suffix != ".safetensors" or not path.is_file():
            raise ValueError(f"model {model_id!r}: LoRA {spec.name!r} needs a local .safetensors file, not {str(path)!r}")
    return tuple(LoraSpec(s.name, Path(s.path).expanduser(), float(s.scale)) for s in loras)


def adapters_for(loras: Sequence[LoraSpec], job: "Job") -> AdapterSet:
    """The adapter set a job runs with (validated by the API; unknown names are a ValueError here)."""
    request = getattr(job, "lora", None)
    by_name = {s.name: s for s in loras}
    if request is None:
        return tuple(sorted((s.name, s.scale) for s in loras))
    chosen: dict[str, float] = {}
    for name, scale in request:
        if name not in by_name:
            raise ValueError(f"unknown LoRA {name!r}; this model lists {sorted(by_name) or 'none'}")
        chosen[name] = by_name[name].scale if scale is None else float(scale)
    return tuple(sorted(chosen.items()))


def load_adapters(pipe: Any, loras: Sequence[LoraSpec]) -> None:
    """Load every listed adapter into the pipeline (peft layers), none active yet."""
    for spec in loras:
        pipe.load_lora_weights(str(spec.path.parent), weight_name=spec.path.name, adapter_name=spec.name)
    if loras:
        pipe.disable_lora()


def select_adapters(pipe: Any, loras: Sequence[LoraSpec], wanted: AdapterSet) -> None:
    """Make exactly `wanted` active with its scales (no-op for a model without adapters)."""
    if not loras:
        return
    if wanted:
        pipe.enable_lora()
        pipe.set_adapters([n for n, _ in wanted], adapter_weights=[s for _, s in wanted])
    else:
        pipe.disable_lora()
