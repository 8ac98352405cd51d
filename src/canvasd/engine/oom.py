"""Out of device memory: recognise it, and free what the allocator caches before retrying.

The engine splits a batch that ran out of memory and retries the halves (scheduler.py); these
helpers keep that module free of a torch import: torch is looked up only if a backend loaded it.
"""

from __future__ import annotations

import sys

# What accelerators other than CUDA/XPU put in the RuntimeError they raise (MPS: "MPS backend out
# of memory"); CUDA and XPU raise torch.OutOfMemoryError (torch.cuda.OutOfMemoryError is an alias).
_OOM_MESSAGES = ("out of memory",)


def is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def release_cached_memory() -> None:
    """Hand the caching allocator's free blocks back, so a smaller retry starts from a clean pool
    rather than from the fragments of the batch that failed."""
    import gc

    gc.collect()  # the failed forward's activations may still be referenced by its traceback
    torch = sys.modules.get("torch")
    if torch is None:
        return
    for name in ("cuda", "xpu", "mps"):
        accel = getattr(torch, name, None)
        try:
            if accel is not None and accel.is_available():
                accel.empty_cache()
        except (RuntimeError, AttributeError):  # pragma: no cover - backend without a cache
            pass
