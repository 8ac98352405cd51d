"""The emoji model's second stage: network, trainer, export, and the two-stage backend."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from train_support import make_synthetic_dataset

from canvasd.backends.emoji.backend import EmojiBackend
from canvasd.backends.emoji.model import model_to_rgba_uint8
from canvasd.backends.emoji.upsampler import Upsampler, UpsamplerConfig, premultiplied_clamp
from canvasd.contracts import Job
from canvasd.training.train import TrainConfig, train
from canvasd.training.detail import edge_energy, evaluate_detail, highband_energy, highband_share, psnr
from canvasd.training.train_upsampler import UpsamplerTrainConfig, reduce_to, train_upsampler


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    """A tiny first stage, and a tiny second stage trained on 256 px renders degraded by it,
    exported into the first stage's weights folder (`weights/upsampler/`)."""
    root = tmp_path_factory.mktemp("two_stage")
    data = make_synthetic_dataset(root / "data")
    make_synthetic_dataset(root / "data", name="emoji256", size=256)
    train(TrainConfig.tiny(name="s1", data_dir=str(data), runs_dir=str(root / "runs")),
          export_to=root / "weights", progress_bar=False)
    cfg = dict(name="s2", data_dir=str(data), runs_dir=str(root / "runs"), first_stage=str(root / "weights"),
               p_degrade=1.0)
    first = train_upsampler(UpsamplerTrainConfig.tiny(**cfg, max_steps=2), progress_bar=False)
    second = train_upsampler(UpsamplerTrainConfig.tiny(**cfg, max_steps=4),
                             export_to=root / "weights" / "upsampler", progress_bar=False)
    return root, first, second


@pytest.fixture(scope="module")
def backend(two_stage):
    root, _, _ = two_stage
    b = EmojiBackend("canvasd-emoji", str(root / "weights"), precision="fp32")
    b.load()
    return b


def _job(**kw) -> Job:
    base = dict(kind="generate", model="canvasd-emoji", prompt="disc number 0", steps=3, seed=1,
                output_width=1024, output_height=1024)
    return Job(**(base | kw))


def _run(b: EmojiBackend, job: Job) -> list[Image.Image]:
    return b.run(job, lambda done, total, preview: True)


def test_untrained_network_is_the_bicubic_enlargement():
    net = Upsampler(UpsamplerConfig(channels=8, blocks=1, up_channels=(8, 4), cond_dim=16)).eval()
    low = torch.rand(2, 4, 64, 64) * 2 - 1
    with torch.no_grad():
        out = net(low, torch.randn(2, 384), torch.tensor([0.0, 0.3]))
    assert out.shape == (2, 4, 256, 256)
    assert torch.allclose(out, F.interpolate(low, scale_factor=4, mode="bicubic", align_corners=False))


def test_premultiplied_clamp_keeps_colour_under_alpha():
    x = torch.tensor([1.0, -1.0, 0.5, 0.0]).view(1, 4, 1, 1)  # red 1.0 over alpha 0.5 (in [0,1])
    out = (premultiplied_clamp(x) + 1) / 2
    assert out[0, :, 0, 0].tolist() == pytest.approx([0.5, 0.0, 0.5, 0.5])


def test_reduce_to_matches_pillow_premultiplied_lanczos():
    img = np.zeros((1, 256, 256, 4), np.uint8)
    img[0, 64:192, 64:192] = (255, 0, 0, 255)
    low = reduce_to(img, 64)
    assert low.shape == (1, 64, 64, 4)
    assert (low[0, 20:44, 20:44] == (255, 0, 0, 255)).all() and low[0, :10, :10, 3].max() == 0


def test_trainer_resumes_checkpoints_and_exports(two_stage):
    root, first, second = two_stage
    assert first["step"] == 2 and second["step"] == 4
    rows = list(csv.reader((root / "runs" / "s2" / "loss.csv").open()))[1:]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4]
    config = json.loads((root / "weights" / "upsampler" / "config.json").read_text())
    assert config["format"] == "canvasd-emoji-upsampler/1" and config["training"]["step"] == 4
    assert config["training"]["recipe"]["p_degrade"] == 1.0 and config["sampling"]["level"] >= 0


def test_capabilities_announce_the_second_stage(backend):
    assert backend.capabilities.native_size == (64, 64)
    assert backend.capabilities.refined_size == (256, 256)


def test_large_answers_get_the_second_stage_small_ones_do_not(backend):
    big = _run(backend, _job(n=2))
    assert [im.size for im in big] == [(256, 256)] * 2 and all(im.mode == "RGBA" for im in big)
    again = _run(backend, _job(n=2))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(big, again))  # seeded
    small = _run(backend, _job(output_width=64, output_height=64))
    assert small[0].size == (64, 64)
    one_stage = _run(backend, _job(output_width=None, output_height=None))  # width x height: 64
    assert one_stage[0].size == (64, 64)
    # the second stage is given exactly the image the first stage alone answers with
    seen: list[torch.Tensor] = []
    original = backend.pipe.upsampler.forward
    backend.pipe.upsampler.forward = lambda low, *a: (seen.append(low.clone()), original(low, *a))[1]
    try:
        _run(backend, _job())
    finally:
        backend.pipe.upsampler.forward = original
    assert np.array_equal(model_to_rgba_uint8(seen[0][:1])[0], np.asarray(small[0]))


def test_second_stage_is_one_more_step_batched_across_requests(backend):
    j1 = _job(seed=5, steps=3)
    j2 = _job(seed=7, steps=2, n=2, prompt="square number 1")
    s1, s2 = backend.start(j1), backend.start(j2)
    assert [s.total_steps for s in s1 + s2] == [4, 3, 3]
    calls: list[int] = []
    original = backend.pipe.upsampler.forward
    backend.pipe.upsampler.forward = lambda low, *a: (calls.append(len(low)), original(low, *a))[1]
    try:
        live = s1 + s2  # j2 has one step less: its second stage shares a step with j1's last denoising
        while not all(s.done for s in live):
            backend.step([s for s in live if not s.done])
    finally:
        backend.pipe.upsampler.forward = original
    assert calls == [2, 1]  # j2's two images in one call, then j1's
    together = backend.finish(s1) + backend.finish(s2)
    alone = _run(backend, j1) + _run(backend, j2)
    for t, a in zip(together, alone):
        assert t.size == a.size == (256, 256)
        assert np.abs(np.asarray(t, dtype=int) - np.asarray(a, dtype=int)).max() <= 3


def test_partial_images_come_from_both_stages(backend):
    samples = backend.start(_job(steps=3, partial_images=3))
    sizes = []
    while not samples[0].done:
        backend.step(samples)
        sizes.append(backend.preview(samples[0]).size)
    assert sizes == [(64, 64)] * 3 + [(256, 256)]


def test_masked_edit_keeps_the_input_pixels_at_the_second_stages_size(backend):
    init = np.zeros((256, 256, 4), np.uint8)
    init[..., :] = (200, 30, 30, 255)
    init[::7, :, :3] = 0  # one-pixel lines: detail only the 256 px input has
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (0, 0, 128, 256))  # repaint the left half, keep the right
    job = _job(kind="edit", init_images=[Image.fromarray(init, "RGBA")], mask=mask)
    out = np.asarray(_run(backend, job)[0])
    assert out.shape == (256, 256, 4)
    assert (out[:, 136:] == init[:, 136:]).all()
    var = _run(backend, _job(kind="variation", prompt="", init_images=[Image.fromarray(init, "RGBA")], n=2))
    assert [v.size for v in var] == [(256, 256)] * 2


def _disc(size: int = 256, pattern: bool = False) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 4), np.uint8)
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2
    img[inside] = (200, 40, 40, 255)
    if pattern:  # one-pixel stripes: detail only a full-size image holds
        img[inside & (yy % 2 == 0), :3] = 20
    return img


def test_highband_share_sees_fine_detail_inside_the_drawing_only():
    flat, striped = _disc()[None], _disc(pattern=True)[None]
    # the silhouette's edge is eroded away: a flat drawing has next to no detail energy
    assert highband_energy(flat)[0][0] < 1e-3 * highband_energy(striped)[0][0]
    assert highband_share(striped) > 0.5
    blurred = np.asarray(Image.fromarray(striped[0], "RGBA").resize((64, 64), Image.Resampling.LANCZOS)
                         .resize((256, 256), Image.Resampling.LANCZOS))[None]
    assert highband_share(blurred) < 0.2 * highband_share(striped)
    assert edge_energy(blurred)[0] < 0.5 * edge_energy(striped)[0]
    assert psnr(striped, striped)[0] > 90 and psnr(blurred, striped)[0] < 20


def test_detail_evaluation_reports_both_stages_and_writes_the_sheet(two_stage):
    root, _, _ = two_stage
    r = evaluate_detail(root / "weights", root / "data", root / "eval", max_images=4, seeds=1, speed=False)
    for block in ("from_real_64px", "generated"):
        assert set(r[block]) >= {"real art", "one stage (fitted)", "two stages"}
        assert r[block]["real art"]["highband_share"] > 0  # the synthetic art's 2 px line
    assert r["from_real_64px"]["two stages"]["psnr_db"] > 0
    assert 0 < r["from_real_64px"]["two stages"]["alpha_iou"] <= 1 and "alpha_iou" not in r["generated"]["two stages"]
    assert set(r["concepts"]) >= {"one stage", "two stages"}
    # the tiny dataset names no paraphrase concept: no figure rather than NaN
    assert r["concepts"]["paraphrases"] == 0 and r["concepts"]["two stages"]["paraphrase_top5"] is None
    assert Image.open(root / "eval" / "detail_sheet.png").width > 6 * 512
    assert "| two stages |" in (root / "eval" / "detail.md").read_text()
    assert json.loads((root / "eval" / "detail.json").read_text())["size"] == 256


def test_bench_step_scaling_times_the_second_stage_too(backend):
    from canvasd.bench.report import scaling_table
    from canvasd.bench.scenarios import step_scaling

    scaling = step_scaling(backend, _job(), batches=(1, 2), repeats=1)
    assert set(scaling["second_stage_s"]) == {"1", "2"} and scaling["second_stage_per_image_s"]["2"] > 0
    assert "| second stage, seconds per image |" in scaling_table(scaling)
    one_stage = step_scaling(backend, _job(output_width=64, output_height=64), batches=(1,), repeats=1)
    assert "second_stage_s" not in one_stage


def test_eval_detail_command(two_stage, tmp_path):
    from typer.testing import CliRunner

    from canvasd.cli import app

    root, _, _ = two_stage
    res = CliRunner().invoke(app, ["eval", "detail", "--weights", str(root / "weights"), "--data-dir",
                                   str(root / "data"), "--out", str(tmp_path), "--max-images", "2", "--seeds", "1",
                                   "--no-speed", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "| two stages |" in res.output and (tmp_path / "detail_sheet.png").exists()
    res = CliRunner().invoke(app, ["eval", "detail", "--data-dir", str(tmp_path / "none")])
    assert res.exit_code == 2 and "canvasd train data" in res.output and "--size 256" in res.output


def test_detail_energy_loss_sees_missing_detail_wherever_it_is():
    from canvasd.training.train_upsampler import detail_energy_l1

    stripes = torch.zeros(1, 4, 64, 64)
    stripes[:, :, ::2] = 1.0
    shifted = torch.roll(stripes, 1, dims=2)  # the same detail, one pixel off
    flat = torch.full_like(stripes, 0.5)  # its blurred mean
    assert detail_energy_l1(stripes, stripes) < 1e-6
    assert detail_energy_l1(shifted, stripes) < 0.01 < detail_energy_l1(flat, stripes)


def test_a_run_can_start_from_another_runs_weights(two_stage):
    root, _, _ = two_stage
    cfg = UpsamplerTrainConfig.tiny(name="s2b", data_dir=str(root / "data"), runs_dir=str(root / "runs"),
                                    first_stage=str(root / "weights"), init_from=str(root / "runs" / "s2" / "ckpt.pt"),
                                    detail_weight=1.0, max_steps=1)
    summary = train_upsampler(cfg, progress_bar=False)
    assert summary["step"] == 1  # a fresh run, not a resumed one
    start = torch.load(root / "runs" / "s2" / "ckpt.pt", weights_only=False)["ema"]
    after = torch.load(root / "runs" / "s2b" / "ckpt.pt", weights_only=False)["model"]
    key = "head.weight"
    assert not torch.equal(start[key], after[key]) and torch.allclose(start[key], after[key], atol=0.05)
