"""Model FLOPs utilisation in `canvasd bench`: FLOPs counted with torch's FlopCounterMode, the
device's matmul peak timed in the same run, MFU per scenario — on a tiny real SD pipeline (no
timed assertions: only that the figures exist, agree with each other and are plausible)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_pipelines import build_tiny_sd_pipeline

from canvasd.backends.diffusers import DiffusersBackend
from canvasd.bench import run_bench
from canvasd.bench.mfu import count_flops, flops_per_image_step, matmul_peak, mfu
from canvasd.contracts import Job


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd-mfu"))


def test_count_flops_of_a_matmul_is_exact():
    a, b = torch.randn(16, 32), torch.randn(32, 8)
    assert count_flops(lambda: a @ b) == 2 * 16 * 32 * 8


def test_per_image_step_flops_equal_one_counted_denoising_step(tiny_sd):
    backend = DiffusersBackend("tiny", str(tiny_sd), precision="fp32")
    backend.load()
    job = Job(kind="generate", model="tiny", prompt="a cat", width=32, height=32, steps=4,
              guidance_scale=7.5, seed=1)
    per_step = flops_per_image_step(backend, job)  # two whole jobs' difference
    samples = backend.start(job)
    assert per_step == count_flops(lambda: backend.step(samples)) > 0  # one stepwise step
    # Guidance doubles the denoiser's rows: without it, an image-step costs half.
    unguided = flops_per_image_step(backend, Job(**{**job.__dict__, "guidance_scale": 1.0}))
    assert unguided * 2 == per_step


def test_matmul_peak_is_timed_on_the_device():
    peak = matmul_peak("cpu", "fp32", min_time_s=0.001, max_side=1024)
    assert peak["device"] == "cpu" and peak["dtype"] == "fp32" and peak["side"] >= 512
    assert peak["flops_per_s"] > 1e6


def test_bench_reports_mfu_per_scenario(tiny_sd, tmp_path):
    report = run_bench(model=f"tiny={tiny_sd}", scenarios=("engine",), concurrency=(1,), requests=2,
                       stream="off", size="64x64", quality="low", client_model="tiny", out_dir=tmp_path,
                       progress=False,
                       threads=1)
    profile = report["mfu_profile"]
    assert profile["device"] == "cpu" and profile["dtype"] in ("fp32", "bf16")
    assert profile["flops_per_image_step"]["64x64"] > 0
    assert profile["peak"]["flops_per_s"] > 0
    for r in report["results"]:
        assert r["errors"] == 0 and r["images_per_s"] > 0
        assert 0 < r["mfu"] <= 1
        # MFU is the reached FLOP rate over the peak, the reached rate images/s x FLOPs per image
        tflops, share = mfu(r["images_per_s"], profile)
        assert r["model_tflops_per_s"] == pytest.approx(tflops, rel=1e-3, abs=1e-6)
        assert r["mfu"] == pytest.approx(share, rel=1e-3, abs=1e-8)
        assert tflops * 1e12 == pytest.approx(
            r["images_per_s"] * profile["mean_steps_per_image"] * profile["flops_per_image_step"]["64x64"],
            rel=1e-6)
    saved = json.loads(Path(report["files"]["json"]).read_text())
    assert saved["results"][0]["mfu"] == report["results"][0]["mfu"]
