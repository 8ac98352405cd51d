"""How much device memory a model takes: estimated from its weight files before it loads,
measured on the device when it does.

The estimate reads only the headers of the folder's ``.safetensors`` files (names, dtypes and
shapes; no tensor data) and counts every floating-point tensor at the dtype the model will run in,
so an fp32 checkpoint served in fp16 counts half its file size. Activations are not counted: the
engine's out-of-memory splitting handles a batch that does not fit.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}
_RUN_DTYPE_ITEMSIZE = {"fp32": 4, "float32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: int | str) -> int:
    """`24GiB`, `24 GB`, `1.5e9` or an int: a byte count (GB = 10^9 bytes, GiB = 2^30)."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a memory size cannot be negative: {value}")
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(value).lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"not a memory size: {value!r} (examples: 24GiB, 16GB, 8000000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def format_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def estimate_weight_bytes(folder: str | Path | None, dtype: str | None = None) -> int | None:
    """Bytes of the weights under `folder` once loaded in `dtype` (None: as stored); None when the
    folder has no safetensors files (the estimate is then unknown, not zero)."""
    if folder is None:
        return None
    root = Path(folder).expanduser()
    files = [root] if root.is_file() else sorted(root.rglob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    run_size = _RUN_DTYPE_ITEMSIZE.get(str(dtype).removeprefix("torch.")) if dtype else None
    total = 0
    for path in files:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                numel = 1
                for side in piece.get_shape():
                    numel *= side
                stored = piece.get_dtype()
                size = _ITEMSIZE.get(stored, 4)
                if run_size is not None and stored in ("F64", "F32", "F16", "BF16"):
                    size = run_size
                total += numel * size
    return total


def device_allocated_bytes(device: str | None) -> int | None:
    """What torch's allocator holds on `device` now (CUDA / XPU / MPS), or None where it cannot
    tell (the CPU, or torch not imported by any backend)."""
    torch = sys.modules.get("torch")
    if torch is None or not device:
        return None
    kind = device.split(":")[0]
    try:
        if kind == "cuda" and torch.cuda.is_available():
            return int(torch.cuda.memory_allocated(device))
        if kind == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
            return int(torch.xpu.memory_allocated(device))
        if kind == "mps" and torch.backends.mps.is_available():
            return int(torch.mps.current_allocated_memory())
    except (RuntimeError, AssertionError):  # pragma: no cover - device gone
        return None
    return None
