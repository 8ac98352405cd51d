"""The embedded emoji model: training loop (tiny config), export, and the stepwise backend."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from train_support import make_synthetic_dataset
from typer.testing import CliRunner

from canvasd.backends.emoji.backend import EmojiBackend, EmojiWeightsMissing
from canvasd.cli import app
from canvasd.contracts import Job
from canvasd.training.train import TrainConfig, export, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji")
    data = make_synthetic_dataset(root / "data")
    cfg = TrainConfig.tiny(name="t", data_dir=str(data), runs_dir=str(root / "runs"), max_steps=3)
    first = train(cfg, progress_bar=False)
    assert first["step"] == 3
    # resume: same run name, higher budget -> continues from the checkpoint's step
    cfg2 = TrainConfig.tiny(name="t", data_dir=str(data), runs_dir=str(root / "runs"), max_steps=5)
    second = train(cfg2, export_to=root / "weights", progress_bar=False)
    return root, first, second


@pytest.fixture(scope="module")
def backend(trained):
    root, _, _ = trained
    # fp32: the pixel tolerances below are fp32's; bf16 has its own tests on the packaged weights
    b = EmojiBackend("canvasd-emoji", str(root / "weights"), precision="fp32")
    b.load()
    return b


def _job(**kw) -> Job:
    kw.setdefault("kind", "generate")
    kw.setdefault("model", "canvasd-emoji")
    kw.setdefault("prompt", "red apple")
    kw.setdefault("steps", 4)
    kw.setdefault("seed", 1)
    return Job(**kw)


def _run(b: EmojiBackend, job: Job) -> list[Image.Image]:
    return b.run(job, lambda done, total, preview: True)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_training_checkpoints_resumes_and_exports(trained):
    root, first, second = trained
    run = root / "runs" / "t"
    ck = torch.load(run / "ckpt.pt", weights_only=False)
    assert ck["step"] == 5 and second["step"] == 5
    assert {"model", "ema", "opt", "np_rng", "torch_rng"} <= set(ck)
    steps = [int(r["step"]) for r in csv.DictReader((run / "loss.csv").open())]
    assert steps == [1, 2, 3, 4, 5]  # the resumed run continued at step 4
    cfg = json.loads((root / "weights" / "config.json").read_text())
    assert cfg["training"]["step"] == 5 and cfg["model"]["block_out_channels"] == [32, 32, 32]
    assert (run / "loss.png").stat().st_size > 0
    # export from any checkpoint
    out = export(run / "ckpt.pt", root / "w2")
    from safetensors.torch import load_file

    sd = load_file(str(out / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in sd.values())


def test_finetune_starts_a_fresh_schedule_from_a_checkpoint(trained):
    root, _, _ = trained
    cfg = TrainConfig.tiny(name="ft", data_dir=str(root / "data"), runs_dir=str(root / "runs"), max_steps=2,
                           lr=1e-4, warmup_steps=1, finetune_from=str(root / "runs" / "t" / "ckpt.pt"))
    out = train(cfg, progress_bar=False)
    rows = list(csv.DictReader((root / "runs" / "ft" / "loss.csv").open()))
    assert out["step"] == 7 and [int(r["step"]) for r in rows] == [6, 7]
    assert float(rows[0]["lr"]) == pytest.approx(1e-4)  # warmed up, cosine restarted


def test_finetune_across_prediction_types_resets_the_output_layer(trained, capsys):
    root, _, _ = trained  # its weights predict the clean image ("sample")
    cfg = TrainConfig.tiny(name="to-v", data_dir=str(root / "data"), runs_dir=str(root / "runs"), max_steps=1,
                           warmup_steps=1, finetune_from=str(root / "weights"))
    cfg.model.prediction_type = "v_prediction"
    train(cfg, export_to=root / "v-weights", progress_bar=False)
    assert "output layer reset: sample -> v_prediction" in capsys.readouterr().out
    config = json.loads((root / "v-weights" / "config.json").read_text())
    assert config["model"]["prediction_type"] == "v_prediction"
    b = EmojiBackend("canvasd-emoji", str(root / "v-weights"))
    b.load()
    (image,) = _run(b, _job(steps=3))
    assert image.size == (64, 64) and image.mode == "RGBA"


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(EmojiWeightsMissing, match="weights not found"):
        EmojiBackend("canvasd-emoji", str(tmp_path))


def test_capabilities_without_loading(trained):
    root, _, _ = trained
    b = EmojiBackend("canvasd-emoji", str(root / "weights"))
    caps = b.capabilities
    assert caps.alpha and caps.stepwise and caps.inpaint and caps.upscales
    assert caps.native_size == (64, 64) and caps.max_prompt_tokens == 16
    assert set(caps.quality_steps) == {"low", "medium", "high"}
    assert b._pipe is None
    assert b.batch_key(_job()) == b.batch_key(_job(prompt="cat", kind="edit"))


def test_generation_is_64px_rgba_and_seeded(backend):
    a = _run(backend, _job(n=2, seed=10))
    assert [im.size for im in a] == [(64, 64)] * 2 and all(im.mode == "RGBA" for im in a)
    decoded = Image.open(io.BytesIO(_png(a[0])))
    assert decoded.mode == "RGBA" and decoded.size == (64, 64)
    again = _run(backend, _job(n=2, seed=10))
    assert _png(a[0]) == _png(again[0]) and _png(a[1]) == _png(again[1])
    assert _png(a[0]) != _png(a[1])  # image i uses seed + i
    # image 1 of seed 10 is image 0 of seed 11: reproducible on its own (alone it ran 2 UNet rows,
    # in the n=2 batch 4, and CPU GEMMs may round differently: a few levels at most)
    alone = np.asarray(_run(backend, _job(seed=11))[0], dtype=int)
    assert np.abs(alone - np.asarray(a[1], dtype=int)).max() <= 3
    assert np.abs(alone - np.asarray(a[0], dtype=int)).max() > 3


def test_batched_steps_match_stepping_alone(backend):
    j1 = _job(prompt="red apple", seed=5, steps=5)
    j2 = _job(prompt="blue car", seed=7, steps=4, n=2, guidance_scale=3.0)
    j3 = _job(kind="variation", prompt="", seed=3, steps=5, init_images=[Image.new("RGBA", (80, 80), (0, 0, 255, 255))])
    s1, s2, s3 = backend.start(j1), backend.start(j2), backend.start(j3)
    backend.step(s2)  # the others join one step later: different step indices in one batch
    live = s1 + s2 + s3
    while not all(s.done for s in live):
        backend.step([s for s in live if not s.done])
    together = backend.finish(s1) + backend.finish(s3)
    alone = _run(backend, j1) + _run(backend, j3)
    # Alone, the same seed gives the same bytes; batched, CPU GEMMs of another batch size may round
    # differently, which moves a few pixels by a few levels (another seed moves them by ~100).
    assert [_png(a) for a in alone] == [_png(a) for a in _run(backend, j1) + _run(backend, j3)]
    for t, a in zip(together, alone):
        diff = np.abs(np.asarray(t, dtype=int) - np.asarray(a, dtype=int))
        assert diff.max() <= 3 and (diff > 0).mean() < 0.05


def test_img2img_and_inpaint_keep_region(backend):
    init = Image.new("RGBA", (128, 128), (200, 30, 30, 255))
    out = _run(backend, _job(kind="edit", init_images=[init], strength=0.5))[0]
    assert out.size == (64, 64) and out.mode == "RGBA"
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (0, 0, 64, 128))  # repaint the left half, keep the right
    out = np.asarray(_run(backend, _job(kind="edit", init_images=[init], mask=mask))[0])
    assert (out[:, 34:] == [200, 30, 30, 255]).all()
    var = _run(backend, _job(kind="variation", prompt="", init_images=[init], n=2))
    assert len(var) == 2 and var[0].size == (64, 64)


def test_preview_mid_run_and_tokens(backend):
    samples = backend.start(_job(steps=4, partial_images=2))
    backend.step(samples)
    prev = backend.preview(samples[0])
    assert prev.size == (64, 64) and prev.mode == "RGBA"
    previews = []

    def on_step(done, total, preview):
        if done == 2:
            previews.extend(preview())
        return True

    backend.run(_job(steps=4), on_step)
    assert len(previews) == 1 and previews[0].size == (64, 64)
    assert backend.count_tokens("a red apple") > 0


def test_cancel_stops_run(backend):
    from canvasd.contracts import Cancelled

    with pytest.raises(Cancelled):
        backend.run(_job(steps=4), lambda done, total, preview: False)


def test_evaluate_writes_report_and_sheet(trained, tmp_path):
    from canvasd.training.eval import evaluate

    root, _, _ = trained
    r = evaluate(root / "weights", root / "data", tmp_path, max_heldout=2, seeds=2, quality="low", speed=False,
                 paraphrases=[("a round disc", ["shape_0"]), ("a square", ["shape_1", "shape_3"])])
    assert 0 <= r["heldout"]["top1"] <= r["heldout"]["top5"] <= 1
    assert r["paraphrases"]["prompts"] == 2 and r["paraphrases"]["diversity_mean"] >= 0
    # the held-out set names real emoji ids, none in this synthetic set: all rejected, with reasons
    assert r["paraphrases_heldout"]["prompts"] == 0 and r["paraphrases_heldout"]["rejected"]
    assert json.loads((tmp_path / "eval.json").read_text())["steps"] == r["steps"]
    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.width > 128 and "top-1" in (tmp_path / "eval.md").read_text()
    prior = r["prior"]
    assert prior["concepts"] > 0 and prior["t"] == 999
    # the concept's mean image is the best constant per concept: an untrained net does worse
    assert 0 < prior["concept_mean"] < prior["model_named"]
    assert "from pure noise" in (tmp_path / "eval.md").read_text()


def test_seed_probe_counts_nearest_concepts_per_seed(trained, tmp_path):
    from canvasd.training.eval import parse_probe, seed_probe

    root, _, _ = trained
    assert parse_probe("green apple=green apple|pear") == ("green apple", ["green apple", "pear"])
    assert parse_probe("shape_2") == ("shape_2", ["shape_2"])
    r = seed_probe(root / "weights", root / "data", tmp_path / "probe.png", seeds=3, quality="low",
                   prompts=[("a round disc", ["shape_0", "no such concept"]), ("shape_1", ["SHAPE_1"])])
    assert [p["prompt"] for p in r["prompts"]] == ["a round disc", "shape_1"] and r["seeds"] == 3
    names = {f"shape_{i}" for i in range(4)}
    for p in r["prompts"]:
        assert len(p["nearest"]) == 3 and set(p["nearest"]) <= names
        assert 0 <= p["top1"] <= p["top5"] <= 3
    # the top-1 count is exactly the seeds whose nearest concept is accepted (names match case-blind)
    assert r["prompts"][0]["top1"] == r["prompts"][0]["nearest"].count("shape_0")
    assert r["prompts"][1]["top1"] == r["prompts"][1]["nearest"].count("shape_1")
    assert r["prompts"][0]["missing_names"] == ["no such concept"] and r["prompts"][1]["missing_names"] == []
    with Image.open(tmp_path / "probe.png") as sheet:  # 2 rows of 3 cells
        assert sheet.format == "PNG" and sheet.width > 3 * 128 and sheet.height > 2 * 128
    # the same seeds again through the CLI: same nearest concepts (seeded)
    result = CliRunner().invoke(app, ["eval", "probe", str(tmp_path / "cli.png"), "--weights", str(root / "weights"),
                                      "--data-dir", str(root / "data"), "--quality", "low", "--seeds", "3",
                                      "--probe", "a round disc=shape_0"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["prompts"][0]["nearest"] == r["prompts"][0]["nearest"] and (tmp_path / "cli.png").exists()


def test_reconstruction_sheet_reports_error_per_noise_level(trained, tmp_path):
    from canvasd.training.eval import reconstruction_sheet

    root, _, _ = trained
    mse = reconstruction_sheet(root / "weights", root / "data", tmp_path / "recon.png", count=2, timesteps=(50, 999))
    assert set(mse) == {50, 999} and all(v >= 0 for v in mse.values())
    with Image.open(tmp_path / "recon.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 3 * 96


def _weights_with_sampling(root, dest, **sampling):
    """A copy of the tiny weights folder whose config.json sets `sampling` options."""
    import shutil

    shutil.copytree(root / "weights", dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["sampling"].update(sampling)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_sde_solver_is_seeded_per_sample_and_batch_independent(trained, backend, tmp_path):
    root, _, _ = trained
    sde = EmojiBackend("canvasd-emoji", str(_weights_with_sampling(root, tmp_path / "sde", solver="sde-dpmsolver++")),
                       precision="fp32")
    sde.load()
    j = _job(seed=4, steps=5)
    a, again = _run(sde, j)[0], _run(sde, j)[0]
    assert _png(a) == _png(again)  # fresh noise every step, from the sample's own seeded stream
    assert _png(a) != _png(_run(backend, j)[0])  # not the deterministic solver
    mates = sde.start(_job(prompt="blue car", seed=9, steps=5, n=2))
    mine = sde.start(j)
    while not mine[0].done:
        sde.step(mine + mates)
    diff = np.abs(np.asarray(sde.finish(mine)[0], dtype=int) - np.asarray(a, dtype=int))
    assert diff.max() <= 3  # batch-mates draw from their own generators, not from this sample's


def test_unknown_solver_is_refused_at_load(trained, tmp_path):
    root, _, _ = trained
    b = EmojiBackend("canvasd-emoji", str(_weights_with_sampling(root, tmp_path / "bad", solver="euler")))
    with pytest.raises(ValueError, match="sampling.solver must be one of"):
        b.load()


def test_a_paused_step_does_not_spend_the_time_budget():
    from canvasd.training.runbook import budget_seconds

    counted, typical = budget_seconds(0.5, None)
    assert (counted, typical) == (0.5, 0.5)
    counted, typical = budget_seconds(0.6, typical)
    assert counted == 0.6 and 0.5 < typical < 0.6
    counted, after_pause = budget_seconds(600.0, typical)  # kill -STOP for 10 minutes mid-step
    assert counted == typical and after_pause == typical


def test_bf16_training_flag_is_honoured(trained):
    root, _, _ = trained
    losses = {}
    for bf16 in (False, True):
        cfg = TrainConfig.tiny(name=f"bf16-{bf16}", data_dir=str(root / "data"), runs_dir=str(root / "runs"),
                               max_steps=1, bf16=bf16)
        losses[bf16] = train(cfg, export_to=root / f"w-{bf16}", progress_bar=False)["loss_ema"]
    # same seed, same batch: only the forward pass's arithmetic differs
    assert losses[False] != losses[True] and abs(losses[False] - losses[True]) < 0.05 * losses[False]


def test_high_noise_p_moves_timesteps_to_the_noisier_half(trained):
    from canvasd.training.train import sample_timesteps

    uniform = sample_timesteps(20000, 1000, 0.0, torch.Generator().manual_seed(0))
    biased = sample_timesteps(20000, 1000, 0.5, torch.Generator().manual_seed(0))
    assert 0 <= int(biased.min()) and int(biased.max()) < 1000
    assert abs((uniform >= 500).float().mean().item() - 0.5) < 0.02
    assert abs((biased >= 500).float().mean().item() - 0.75) < 0.02  # 0.5 + 0.5 * 0.5
    assert (biased < 500).any()  # the clean half is still trained
    # and the option reaches the training loop (recorded with the run's recipe)
    root, _, _ = trained
    cfg = TrainConfig.tiny(name="noisy-half", data_dir=str(root / "data"), runs_dir=str(root / "runs"),
                           max_steps=1, high_noise_p=0.5)
    train(cfg, export_to=root / "w-noisy", progress_bar=False)
    recipe = json.loads((root / "w-noisy" / "config.json").read_text())["training"]["recipe"]
    assert recipe["high_noise_p"] == 0.5


def test_clamping_scheduler_steps_exactly_like_diffusers_thresholding():
    """The x0 clamp skips diffusers' per-sample quantile (it is clamped to 1 anyway): same numbers."""
    from diffusers import DPMSolverMultistepScheduler

    from canvasd.backends.emoji.model import ModelConfig
    from canvasd.backends.emoji.sampler import make_scheduler

    mcfg = ModelConfig()
    ours = make_scheduler(mcfg)
    reference = DPMSolverMultistepScheduler(**ours.config)  # same config, diffusers' own thresholding
    assert type(ours) is not DPMSolverMultistepScheduler and ours.config.thresholding
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 16, 16, generator=g)
    outs = {}
    for name, sched in (("ours", ours), ("reference", reference)):
        sched.set_timesteps(6)
        z = x.clone()
        for t in sched.timesteps:
            pred = 3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(int(t)))  # far outside [-1, 1]
            z = sched.step(pred, t, z).prev_sample
        outs[name] = z
    assert torch.equal(outs["ours"], outs["reference"])


def test_timestep_shift_lowers_log_snr_by_twice_log_shift():
    from canvasd.backends.emoji.model import ModelConfig, shift_timesteps
    from canvasd.training.train import make_noise_scheduler

    a = make_noise_scheduler(ModelConfig()).alphas_cumprod.double().numpy()
    t = np.array([100.0, 300.0, 500.0, 700.0])
    assert np.array_equal(shift_timesteps(t, a, 1.0), t)
    moved = shift_timesteps(t, a, 3.0)
    assert np.all(moved > t) and np.all(np.diff(moved) > 0)  # noisier, order kept

    def log_snr(x):
        ab = np.interp(x, np.arange(len(a)), a)
        return np.log(ab / (1 - ab))

    np.testing.assert_allclose(log_snr(t) - log_snr(moved), 2 * np.log(3.0), atol=0.05)


def test_shifted_training_timesteps_reach_the_recipe_and_the_sampler(trained, backend):
    from canvasd.backends.emoji.model import ModelConfig
    from canvasd.training.train import make_noise_scheduler, sample_timesteps

    a = make_noise_scheduler(ModelConfig()).alphas_cumprod
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    uniform = sample_timesteps(20000, 1000, 0.0, g(), 1.0, a)
    shifted = sample_timesteps(20000, 1000, 0.0, g(), 3.0, a)
    assert 0 <= int(shifted.min()) and int(shifted.max()) <= 999
    assert abs((uniform >= 900).float().mean().item() - 0.10) < 0.01
    assert (shifted >= 900).float().mean().item() > 0.25  # ~2.8x the uniform density up there
    assert (shifted < 300).float().mean().item() > 0.05  # low noise is still trained

    root, _, _ = trained
    cfg = TrainConfig.tiny(name="shifted", data_dir=str(root / "data"), runs_dir=str(root / "runs"),
                           max_steps=1, timestep_shift=3.0)
    train(cfg, export_to=root / "w-shifted", progress_bar=False, guidance_min_timestep=700)
    config = json.loads((root / "w-shifted" / "config.json").read_text())
    assert config["training"]["recipe"]["timestep_shift"] == 3.0
    assert config["sampling"]["timestep_shift"] == 3.0  # the sampler follows the recipe
    assert config["sampling"]["guidance_min_timestep"] == 700  # the export setting, not the code default
    result = CliRunner().invoke(app, ["train", "export", str(cfg.run_dir / "ckpt.pt"), "--to", str(root / "w-cli"),
                                      "--guidance-min-timestep", "650"])
    assert result.exit_code == 0, result.output
    assert json.loads((root / "w-cli" / "config.json").read_text())["sampling"]["guidance_min_timestep"] == 650
    b = EmojiBackend("canvasd-emoji", str(root / "w-shifted"), precision="fp32")
    b.load()
    ours, plain = b.start(_job(steps=14))[0], backend.start(_job(steps=14))[0]
    assert plain.timesteps.tolist()[:3] == [999, 928, 856]  # diffusers' default grid, unshifted weights
    ts = ours.timesteps.tolist()
    assert ts[0] == 999 and all(x > y for x, y in zip(ts, ts[1:])) and len(ts) == 14
    assert sum(t >= 850 for t in ts) >= 2 * sum(t >= 850 for t in plain.timesteps.tolist())
    img = _run(b, _job(steps=6))[0]
    assert img.mode == "RGBA" and img.size == (64, 64)
    # img2img keeps the uniform grid, so strength starts at the noise level it names
    edit = dict(kind="edit", steps=14, strength=0.6, init_images=[img])
    assert b.start(_job(**edit))[0].timesteps.tolist() == backend.start(_job(**edit))[0].timesteps.tolist()
    assert int(b.start(_job(**edit))[0].timesteps[0]) < 650


def test_guidance_interval_skips_the_unconditional_rows_below_its_timestep(trained, backend, tmp_path):
    root, _, _ = trained
    rows: list[int] = []

    def counting(b: EmojiBackend) -> EmojiBackend:
        unet = b.pipe.unet
        forward = unet.forward
        unet.forward = lambda z, *a, **k: (rows.append(len(z)), forward(z, *a, **k))[1]
        return b

    def with_min_t(t: int) -> EmojiBackend:
        b = EmojiBackend("canvasd-emoji", str(_weights_with_sampling(root, tmp_path / f"g{t}", guidance_min_timestep=t)),
                         precision="fp32")
        b.load()
        return counting(b)

    j = _job(seed=3, steps=6, guidance_scale=5.0)
    never = with_min_t(1000)
    assert _png(_run(never, j)[0]) == _png(_run(backend, _job(seed=3, steps=6, guidance_scale=1.0))[0])
    assert rows == [1] * 6  # conditional row only: exactly the unguided image
    rows.clear()
    mid = with_min_t(500)
    start = mid.start(j)[0]
    guided_steps = sum(int(t) >= 500 for t in start.timesteps)
    assert 0 < guided_steps < 6
    guided = _run(mid, j)[0]
    assert rows == [2] * guided_steps + [1] * (6 - guided_steps)
    assert _png(guided) != _png(_run(never, j)[0]) and _png(guided) != _png(_run(backend, j)[0])
    # img2img starts below the interval: guided at every step, so guidance_scale still matters
    rows.clear()
    init = _run(backend, _job(seed=5, steps=4))[0]
    edit = dict(kind="edit", steps=6, strength=0.5, init_images=[init], seed=3)
    a = _run(never, _job(guidance_scale=5.0, **edit))[0]
    assert rows and set(rows) == {2}
    assert _png(a) != _png(_run(never, _job(guidance_scale=1.0, **edit))[0])
