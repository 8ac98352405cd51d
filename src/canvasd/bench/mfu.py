"""Model FLOPs utilisation: the share of the device's matmul peak the denoiser's work reaches.

    MFU = denoiser FLOPs per image-step x image-steps per second / device matmul peak

- FLOPs: counted with `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions and
  attention; elementwise work is not counted, as in every MFU figure). One image-step's FLOPs are
  the difference between a whole one-image job of `LONG` steps and one of `SHORT` steps, divided by
  their difference: the text encoding and the final decode cancel out, so what is left is the
  denoiser alone (both guidance passes where the family runs classifier-free guidance), for any
  backend, stepwise or not, without knowing where its denoiser lives.
- Peak: a large square matmul in the model's dtype on the model's device, timed in the same run
  (so the figure is this machine's, throttling and all), its size grown until one product takes
  long enough to time.
- Per scenario and level, image-steps per second = images/s x the plan's mean steps per image.

Torch is imported only inside the functions (the bench's config and report stay torch-free).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

SHORT, LONG = 2, 4  # steps of the two jobs whose FLOPs difference is (LONG - SHORT) image-steps
_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
           "bf16": "bfloat16", "bfloat16": "bfloat16"}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matmuls, convolutions and attention that `fn()` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def flops_per_image_step(backend: Any, job: Any) -> int:
    """The denoiser's FLOPs for one image at one step of `job` (its size, guidance, family)."""
    def run(steps: int) -> Callable[[], Any]:
        one = replace(job, n=1, steps=steps, partial_images=0)
        return lambda: backend.run(one, lambda *_: True)

    return max(0, (count_flops(run(LONG)) - count_flops(run(SHORT))) // (LONG - SHORT))


def model_device_dtype(backend: Any, precision: str) -> tuple[str, str]:
    """Where the model computes and in what: the backend's `device`/`dtype` when it names them;
    else the CPU, in bf16 when the server-wide precision resolves to bf16 autocast."""
    device = str(getattr(backend, "device", None) or "cpu")
    dtype = getattr(backend, "dtype", None)
    if dtype is None:
        from canvasd.backends.precision import use_bf16

        dtype = "bf16" if use_bf16(precision) else "fp32"
    return device, str(dtype).removeprefix("torch.")


def _synchronize(torch: Any, device: Any) -> None:
    accel = getattr(torch, device.type, None) if device.type != "cpu" else None
    if accel is not None and hasattr(accel, "synchronize"):
        accel.synchronize()


def matmul_peak(device: str, dtype: str, min_time_s: float = 0.05, max_side: int = 16384,
                repeats: int = 3) -> dict[str, Any]:
    """FLOP/s of the fastest of `repeats` square matmuls at the first side (doubling from 512)
    where one product takes at least `min_time_s`, in `dtype` on `device`."""
    import torch

    dev = torch.device(device)
    torch_dtype = getattr(torch, _DTYPES.get(dtype, "float32"))
    side, best = 512, 0.0
    while True:
        a = torch.randn(side, side, device=dev, dtype=torch_dtype)
        b = torch.randn(side, side, device=dev, dtype=torch_dtype)
        torch.matmul(a, b)  # warm-up: kernels chosen, memory allocated
        _synchronize(torch, dev)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            _synchronize(torch, dev)
            times.append(time.perf_counter() - t0)
        fastest = min(times)
        best = max(best, 2 * side**3 / fastest)
        del a, b
        if fastest >= min_time_s or side * 2 > max_side:
            break
        side *= 2
    return {"device": str(dev), "dtype": dtype, "side": side, "flops_per_s": best,
            "tflops_per_s": round(best / 1e12, 4)}


def model_profile(backend: Any, jobs: list[Any], precision: str) -> dict[str, Any]:
    """What MFU needs, measured once per bench run: per-size FLOPs of an image-step, the steps of
    each planned request, and the device's matmul peak."""
    device, dtype = model_device_dtype(backend, precision)
    per_size: dict[str, int] = {}
    for job in jobs:
        key = f"{job.width}x{job.height}"
        if key not in per_size:
            per_size[key] = flops_per_image_step(backend, job)
    image_flops = [per_size[f"{j.width}x{j.height}"] * j.steps for j in jobs]
    return {
        "device": device, "dtype": dtype,
        "flops_per_image_step": per_size,
        "mean_steps_per_image": sum(j.steps for j in jobs) / len(jobs),
        "mean_flops_per_image": sum(image_flops) / len(image_flops),
        "peak": matmul_peak(device, dtype),
    }


def mfu(images_per_s: float, profile: dict[str, Any]) -> tuple[float, float]:
    """(model TFLOP/s reached, MFU) at `images_per_s` for the profiled plan."""
    achieved = images_per_s * profile["mean_flops_per_image"]
    return achieved / 1e12, achieved / profile["peak"]["flops_per_s"]
