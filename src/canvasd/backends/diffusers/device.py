"""Where a diffusers model runs and in which number format.

`device`: ``auto | cpu | cuda | cuda:N | mps | xpu | xpu:N``. ``auto`` is the first accelerator torch
sees (CUDA, then XPU, then MPS), else the CPU.

`dtype`: ``auto | bf16 | fp16 | fp32``.
- On an accelerator the weights are stored in that dtype; ``auto`` is bf16 where the device does bf16
  arithmetic natively, else fp16 (both halve memory and run on the tensor cores).
- On the CPU the weights stay fp32 and the denoiser alone may run under bf16 autocast
  (`canvasd.backends.precision`): ``auto`` follows the server's ``precision`` setting, ``bf16``
  forces the autocast, ``fp32`` turns it off. fp16 on the CPU is refused: torch's CPU fp16 kernels
  are slow and some are missing.

`offload`: ``none | model | sequential`` (diffusers' CPU offload via accelerate): ``model`` moves
each whole component to the accelerator while it runs, ``sequential`` streams submodules (least
memory, slowest). Both need an accelerator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from canvasd.backends.precision import use_bf16

if TYPE_CHECKING:  # pragma: no cover
    import torch

DType = Literal["auto", "bf16", "fp16", "fp32"]
DTYPES: tuple[str, ...] = get_args(DType)
Offload = Literal["none", "model", "sequential"]
OFFLOADS: tuple[str, ...] = get_args(Offload)
_DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$")


def check_device(name: str) -> str:
    """`name`, or the error a setting with another value gets (torch-free: settings validate it)."""
    if not _DEVICE.match(name):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N, mps, xpu or xpu:N, not {name!r}")
    return name


def check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {name!r}")
    return name


def check_offload(name: str) -> str:
    if name not in OFFLOADS:
        raise ValueError(f"offload must be one of {', '.join(OFFLOADS)}, not {name!r}")
    return name


def resolve_device(name: str) -> "torch.device":
    """The torch device a setting names; ``auto`` picks the first accelerator present."""
    import torch

    check_device(name)
    if name != "auto":
        device = torch.device(name)
        if device.type != "cpu" and not _available(device.type):
            raise ValueError(f"device {name!r} is not available here (torch sees no {device.type})")
        if device.type in ("cuda", "xpu") and device.index is None:
            device = torch.device(device.type, 0)  # one name per GPU: "cuda" is "cuda:0"
        return device
    for kind in ("cuda", "xpu", "mps"):
        if _available(kind):
            return torch.device(kind, 0) if kind != "mps" else torch.device("mps")
    return torch.device("cpu")


def _available(kind: str) -> bool:
    import torch

    backend = getattr(torch, kind, None)
    if kind == "mps":
        backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _supports_bf16(device: "torch.device") -> bool:
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "xpu":
        return True  # every XPU torch supports has bf16 units
    if device.type == "mps":
        return bool(torch.backends.mps.is_macos_or_newer(14, 0))
    return False


@dataclass(frozen=True)
class Placement:
    """A model's resolved device and precision."""

    device: "torch.device"
    weights_dtype: "torch.dtype"  # what the components are stored (and computed) in
    cpu_bf16_autocast: bool  # CPU only: the denoiser runs under bf16 autocast over fp32 weights
    offload: Offload = "none"

    @property
    def dtype_name(self) -> str:
        """What the model computes in, as /v1/models and the log say it."""
        if self.cpu_bf16_autocast:
            return "bf16"
        return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[str(self.weights_dtype).removeprefix("torch.")]


def resolve_placement(device: str = "auto", dtype: str = "auto", precision: str = "auto",
                      offload: str = "none") -> Placement:
    """Device and dtype settings -> a `Placement`, or ValueError naming the bad combination."""
    import torch

    check_dtype(dtype)
    check_offload(offload)
    dev = resolve_device(device)
    if dev.type == "cpu":
        if dtype == "fp16":
            raise ValueError("dtype fp16 is not supported on the CPU (use auto, bf16 or fp32)")
        if offload != "none":
            raise ValueError(f"offload {offload!r} needs an accelerator; the model's device is the CPU")
        autocast = use_bf16(precision) if dtype == "auto" else dtype == "bf16"
        return Placement(dev, torch.float32, autocast, "none")
    if dtype == "auto":
        weights = torch.bfloat16 if _supports_bf16(dev) else torch.float16
    else:
        weights = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    return Placement(dev, weights, False, offload)  # type: ignore[arg-type]
