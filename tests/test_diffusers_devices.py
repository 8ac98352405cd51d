"""Device and precision of diffusers models: the rules (everywhere) and, with `-m gpu` on a CUDA
machine, real placement, half precision, offload and two models sharing one GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from canvasd.backends.base import run_stepwise
from canvasd.backends.diffusers import DiffusersBackend
from canvasd.backends.diffusers.device import check_device, resolve_device, resolve_placement
from canvasd.contracts import Job
from tiny_pipelines import build_tiny_flux_pipeline, build_tiny_sd_pipeline, build_tiny_sdxl_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_device_names_are_checked_without_torch_devices():
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps", "xpu", "xpu:0"):
        assert check_device(ok) == ok
    for bad in ("gpu", "cuda:", "cuda:x", "tpu", ""):
        with pytest.raises(ValueError, match="device must be"):
            check_device(bad)


def test_cpu_rules():
    cpu = resolve_placement("cpu", "fp32")
    assert (str(cpu.device), cpu.weights_dtype, cpu.cpu_bf16_autocast, cpu.dtype_name) == ("cpu", torch.float32, False, "fp32")
    bf16 = resolve_placement("cpu", "bf16")
    assert bf16.weights_dtype == torch.float32 and bf16.cpu_bf16_autocast and bf16.dtype_name == "bf16"
    # auto on the CPU follows the server's precision rule (canvasd.backends.precision)
    assert not resolve_placement("cpu", "auto", precision="fp32").cpu_bf16_autocast
    assert resolve_placement("cpu", "auto", precision="bf16").cpu_bf16_autocast
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        resolve_placement("cpu", "fp16")
    with pytest.raises(ValueError, match="needs an accelerator"):
        resolve_placement("cpu", "auto", offload="model")
    with pytest.raises(ValueError, match="dtype must be"):
        resolve_placement("cpu", "fp8")
    with pytest.raises(ValueError, match="offload must be"):
        resolve_placement("cpu", "auto", offload="disk")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_auto_is_the_cpu_without_accelerators_and_cuda_is_refused(tmp_path):
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="not available"):
        resolve_device("cuda")
    b = DiffusersBackend("m", str(build_tiny_sd_pipeline(tmp_path / "sd")))
    assert b.device == "cpu"


# -- on a CUDA device ------------------------------------------------------------------------


def _job(model: str, **kw) -> Job:
    base = dict(kind="generate", model=model, prompt="a red cat", n=2, width=32, height=32, steps=3,
                guidance_scale=4.0, seed=5)
    base.update(kw)
    return Job(**base)


def _px(images) -> list[np.ndarray]:
    return [np.asarray(im, dtype=np.int16) for im in images]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,expected", [("auto", None), ("fp16", torch.float16), ("bf16", torch.bfloat16),
                                            ("fp32", torch.float32)])
def test_gpu_placement_and_precision(tmp_path_factory, dtype, expected):
    path = build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl"))
    b = DiffusersBackend("sdxl", str(path), device="cuda", dtype=dtype)
    b.load()
    want = expected or (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    pipe = b.pipe("text2img")
    assert b.device == "cuda:0" and pipe.unet.dtype == want and pipe.unet.device.type == "cuda"
    assert pipe.text_encoder_2.device.type == "cuda"
    j = _job("sdxl")
    samples = b.start(j)
    assert all(s.latents.device.type == "cuda" and s.latents.dtype == want for s in samples)
    assert samples[0].generator.device.type == "cuda" and samples[0].cond["time_ids"].device.type == "cuda"
    stepped = _px(run_stepwise(b, j, lambda *a: True))
    again = _px(run_stepwise(b, j, lambda *a: True))
    assert all(np.array_equal(x, y) for x, y in zip(stepped, again))  # a seed is an image on this device
    whole = _px(b.run(j, lambda *a: True))
    tol = 1 if want == torch.float32 else 6  # half-precision batched kernels round differently
    assert all(np.abs(x - y).max() <= tol for x, y in zip(whole, stepped))


@pytest.mark.gpu
def test_gpu_two_models_share_one_device_and_unload(tmp_path_factory):
    sd = DiffusersBackend("sd", str(build_tiny_sd_pipeline(tmp_path_factory.mktemp("sd"))), device="cuda")
    flux = DiffusersBackend("flux", str(build_tiny_flux_pipeline(tmp_path_factory.mktemp("flux"))), device="cuda")
    sd.load()
    flux.load()
    a = run_stepwise(sd, _job("sd"), lambda *a: True)
    b = run_stepwise(flux, _job("flux", steps=2), lambda *a: True)
    assert len(a) == len(b) == 2
    before = torch.cuda.memory_allocated()
    flux.unload()
    assert torch.cuda.memory_allocated() < before and not flux.loaded
    flux.load()  # back on demand, same images
    assert all(np.array_equal(x, y) for x, y in zip(_px(b), _px(run_stepwise(flux, _job("flux", steps=2), lambda *a: True))))


@pytest.mark.gpu
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_gpu_offload_gives_the_same_images(tmp_path_factory, offload):
    path = build_tiny_sd_pipeline(tmp_path_factory.mktemp("sd"))
    resident = DiffusersBackend("a", str(path), device="cuda", dtype="fp32")
    offloaded = DiffusersBackend("b", str(path), device="cuda", dtype="fp32", offload=offload)
    resident.load()
    offloaded.load()
    assert offloaded.pipe("text2img").unet.device.type in ("cpu", "meta")  # parked off the GPU
    j = _job("a")
    x, y = _px(run_stepwise(resident, j, lambda *a: True)), _px(run_stepwise(offloaded, j, lambda *a: True))
    assert all(np.abs(p - q).max() <= 1 for p, q in zip(x, y))
    assert _px(offloaded.run(j, lambda *a: True))[0].shape == x[0].shape
