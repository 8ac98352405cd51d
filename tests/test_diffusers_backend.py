"""DiffusersBackend on a tiny random-weight Stable Diffusion pipeline (built locally, ~seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from canvasd.backends.base import run_stepwise
from canvasd.backends.diffusers import (
    DiffusersBackend,
    DiffusersSample,
    NotAPipelineError,
)
from canvasd.backends.diffusers.stepwise import x0_of
from canvasd.contracts import Cancelled, Job
from tiny_pipelines import build_tiny_sd_pipeline, with_scheduler, write_not_a_pipeline

# diffusers' schedulers call np.array(tensor, copy=False) under numpy 2: noise, not our concern
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # tiny tensors: on a busy 2-core machine two OpenMP threads spin against other work and are
    # ~50x slower than one (measured: 13 s vs 0.14 s for a 6-step n=2 job)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory) -> Path:
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def backend(tiny_sd_path) -> DiffusersBackend:
    b = DiffusersBackend("tiny-sd", str(tiny_sd_path), precision="fp32")  # fp32's pixel tolerances
    b.load()
    return b


def job(**kw) -> Job:
    base = dict(kind="generate", model="tiny-sd", prompt="a cat", n=1, width=32, height=32, steps=4,
                guidance_scale=5.0, seed=1)
    base.update(kw)
    return Job(**base)


def keep_going(step, total, preview):
    return True


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


def init_image(seed: int = 0, size=(32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size[::-1], 4), dtype=np.uint8), "RGBA")


# -- capabilities ----------------------------------------------------------------------------


def test_capabilities_from_configs_only(tiny_sd_path, tmp_path):
    # no weight files at all: capabilities must still be known (the API validates before loading)
    configs_only = tmp_path / "configs-only"
    shutil.copytree(tiny_sd_path, configs_only, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    b = DiffusersBackend("m", str(configs_only))
    caps = b.capabilities
    assert caps.text_to_image and caps.image_to_image and caps.inpaint
    assert caps.stepwise and not caps.alpha and not caps.upscales
    assert caps.native_size == (32, 32)  # unet sample_size 16 x vae scale factor 2
    assert caps.size_multiple == 8 and caps.negative_prompt
    assert caps.max_prompt_tokens == 77 and caps.max_input_images == 1
    assert caps.default_guidance == 7.5
    assert b._pipes == {}
    with pytest.raises(RuntimeError, match="not loaded"):
        b.run(job(), keep_going)


def test_not_a_pipeline_folder_is_a_clear_error(tmp_path):
    with pytest.raises(NotAPipelineError, match="model_index.json"):
        DiffusersBackend("bert", str(write_not_a_pipeline(tmp_path / "bert")))
    with pytest.raises(NotAPipelineError, match="not a directory"):
        DiffusersBackend("gone", str(tmp_path / "missing"))
    with pytest.raises(NotAPipelineError, match="needs a folder"):
        DiffusersBackend("none", None)


def test_registry_builds_it(tiny_sd_path):
    from canvasd.settings import ModelSettings
    from canvasd.registry import build_backend

    b = build_backend(ModelSettings(id="x", backend="diffusers", path=str(tiny_sd_path)))
    assert isinstance(b, DiffusersBackend) and b.id == "x"


def test_count_tokens_uses_the_pipeline_tokenizer(tiny_sd_path, backend):
    lazy = DiffusersBackend("m", str(tiny_sd_path))  # tokenizer loads without the weights
    text = "the cat sat on the mat"
    assert lazy.count_tokens(text) == backend.count_tokens(text) > 0
    assert backend.count_tokens(text + " and then the cat ate") > backend.count_tokens(text)
    assert backend.count_tokens("") == 0


def test_count_tokens_on_another_thread_does_not_disturb_sampling(backend):
    # regression (found by test_e2e_load): the API counts prompt tokens on a worker thread while the
    # engine thread encodes prompts. HF tokenizers keep padding/truncation as state on the shared
    # object, so with one instance an encode sometimes came out unpadded (2 tokens instead of 77)
    # and the batched step failed ("Sizes of tensors must match").
    import threading

    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            backend.count_tokens("the cat sat on the mat")

    counter = threading.Thread(target=count)
    counter.start()
    try:
        pipe = backend._pipe("text2img")
        lengths = set()
        for _ in range(400):
            cond, uncond = pipe.encode_prompt("", torch.device("cpu"), 1, True)
            lengths |= {cond.shape[1], uncond.shape[1]}
    finally:
        stop.set()
        counter.join()
    assert lengths == {77}


# -- whole-job path --------------------------------------------------------------------------


def test_text2img_returns_n_images_of_requested_size(backend):
    images = backend.run(job(n=3, width=48, height=40), keep_going)
    assert len(images) == 3
    assert all(im.size == (48, 40) and im.mode == "RGB" for im in images)
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))  # different seeds


def test_same_seed_same_pixels_and_each_image_reproducible_alone(backend):
    a = backend.run(job(n=2, seed=5), keep_going)
    b = backend.run(job(n=2, seed=5), keep_going)
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b))
    second_alone = backend.run(job(n=1, seed=6), keep_going)[0]
    assert np.abs(pixels(second_alone) - pixels(a[1])).max() <= 1
    other = backend.run(job(n=1, seed=99), keep_going)[0]
    assert not np.array_equal(pixels(other), pixels(a[0]))


def test_negative_prompt_and_guidance_change_the_image(backend):
    plain = backend.run(job(), keep_going)[0]
    negative = backend.run(job(negative_prompt="blurry"), keep_going)[0]
    assert not np.array_equal(pixels(plain), pixels(negative))


def test_on_step_reports_every_step_with_real_previews(backend):
    calls = []

    def on_step(step, total, preview):
        images = preview()
        calls.append((step, total, [im.size for im in images]))
        return True

    backend.run(job(n=2, steps=5), on_step)
    assert [c[0] for c in calls] == [1, 2, 3, 4, 5]
    assert all(c[1] == 5 and c[2] == [(32, 32), (32, 32)] for c in calls)


def test_previews_are_x0_predictions_that_converge(backend):
    previews = []
    final = backend.run(job(steps=6), lambda s, t, p: previews.append(p()[0]) or True)[0]
    # the last preview decodes the last x0 prediction == the final latents for DPM-Solver++
    assert np.abs(pixels(previews[-1]) - pixels(final)).max() <= 1
    assert not np.array_equal(pixels(previews[0]), pixels(final))


def test_cancel_from_on_step_stops_early(backend):
    seen = []

    def stop_after_two(step, total, preview):
        seen.append(step)
        return step < 2

    with pytest.raises(Cancelled):
        backend.run(job(steps=8), stop_after_two)
    assert seen == [1, 2]


def test_cancel_flag_on_the_job_stops_it(backend):
    j = job(steps=8)
    seen = []

    def cancel_at_three(step, total, preview):
        seen.append(step)
        if step == 3:
            j.cancel()
        return True

    with pytest.raises(Cancelled):
        backend.run(j, cancel_at_three)
    assert seen == [1, 2, 3]
    # the pipeline is usable again afterwards
    assert backend.run(job(), keep_going)[0].size == (32, 32)


def test_img2img_with_strength(backend):
    totals = []
    edit = job(kind="edit", prompt="make it blue", steps=10, strength=0.5, init_images=[init_image(1)])
    out = backend.run(edit, lambda s, t, p: totals.append(t) or True)
    assert len(out) == 1 and out[0].size == (32, 32) and out[0].mode == "RGB"
    assert set(totals) == {5}  # strength 0.5 of 10 steps
    again = backend.run(edit, keep_going)[0]
    assert np.array_equal(pixels(out[0]), pixels(again))
    other_input = job(kind="edit", prompt="make it blue", steps=10, strength=0.5, init_images=[init_image(2)])
    assert not np.array_equal(pixels(backend.run(other_input, keep_going)[0]), pixels(out[0]))


def test_img2img_resizes_input_to_the_requested_size(backend):
    edit = job(kind="edit", width=40, height=32, strength=0.6, init_images=[init_image(3, (64, 64))])
    assert backend.run(edit, keep_going)[0].size == (40, 32)


def test_tiny_strength_still_runs_one_step(backend):
    totals = []
    backend.run(job(kind="edit", steps=4, strength=0.05, init_images=[init_image()]),
                lambda s, t, p: totals.append(t) or True)
    assert totals and totals[-1] >= 1


def test_variation_is_img2img_with_empty_prompt(backend):
    out = backend.run(job(kind="variation", prompt="", n=2, init_images=[init_image(4)]), keep_going)
    assert len(out) == 2 and all(im.size == (32, 32) for im in out)


def test_inpaint_runs_and_returns_requested_size(backend):
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    out = backend.run(job(kind="edit", n=2, mask=mask, init_images=[init_image(5)]), keep_going)
    assert len(out) == 2 and all(im.size == (32, 32) and im.mode == "RGB" for im in out)


# -- step-level path -------------------------------------------------------------------------


def test_stepwise_matches_whole_job_pipeline(backend):
    j = job(n=2, steps=5, seed=11, negative_prompt="ugly")
    whole = backend.run(j, keep_going)
    stepped = run_stepwise(backend, j, keep_going)
    for a, b in zip(whole, stepped):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_stepwise_img2img_matches_whole_job_pipeline(backend):
    j = job(kind="edit", n=2, steps=6, strength=0.5, init_images=[init_image(6)])
    whole = backend.run(j, keep_going)
    stepped = run_stepwise(backend, j, keep_going)
    for a, b in zip(whole, stepped):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_stepwise_results_do_not_depend_on_batch_mates(backend):
    a = job(n=2, steps=6, seed=21, guidance_scale=6.0)
    alone = backend.start(a)
    while not all(s.done for s in alone):
        backend.step([s for s in alone if not s.done])
    expected = backend.finish(alone)

    # same job again, batched with a job of another prompt, without CFG, and two steps ahead
    mates = backend.start(job(prompt="a red boat at sea", n=3, steps=9, seed=3, guidance_scale=1.0))
    for _ in range(2):
        backend.step(mates)
    mine = backend.start(a)
    everyone = mine + mates
    while not all(s.done for s in everyone):
        backend.step([s for s in everyone if not s.done])
    got = backend.finish(mine)
    for x, y in zip(expected, got):
        assert np.abs(pixels(x) - pixels(y)).max() <= 1
    assert all(s.step == 6 for s in mine) and all(s.step == 9 for s in mates)


def test_stepwise_preview_and_total_steps(backend):
    samples = backend.start(job(n=2, steps=4, width=40, height=48))
    assert all(isinstance(s, DiffusersSample) and s.total_steps == 4 for s in samples)
    backend.step(samples)
    assert all(s.step == 1 for s in samples)
    preview = backend.preview(samples[0])
    assert preview.size == (40, 48) and preview.mode == "RGB"
    assert backend.batch_key(samples[0].job) == ("tiny-sd", 40, 48, None, ())


def test_stepwise_inpaint_keeps_unmasked_latents(backend):
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # repaint the left half
    samples = backend.start(job(kind="edit", steps=4, mask=mask, init_images=[init_image(7)]))
    while not all(s.done for s in samples):
        backend.step([s for s in samples if not s.done])
    s = samples[0]
    keep = 1 - s.mask
    assert keep.sum() > 0 and s.mask.sum() > 0
    assert torch.equal(s.latents * keep, s.image_latents * keep)  # the kept half is the input's
    assert not torch.equal(s.latents * s.mask, s.image_latents * s.mask)
    assert backend.finish(samples)[0].size == (32, 32)


def test_stepwise_run_supports_cancel(backend):
    with pytest.raises(Cancelled):
        run_stepwise(backend, job(steps=6), lambda step, total, preview: step < 3)


# -- x0 predictions from schedulers ----------------------------------------------------------


def test_x0_taken_from_scheduler_outputs():
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    torch.manual_seed(0)
    latents, eps = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    ddim = DDIMScheduler()
    ddim.set_timesteps(4)
    out = ddim.step(eps, ddim.timesteps[0], latents)
    assert x0_of(ddim, out) is out.pred_original_sample

    dpm = DPMSolverMultistepScheduler()  # dpmsolver++: keeps x0 model outputs
    dpm.set_timesteps(4)
    t = dpm.timesteps[0]
    out = dpm.step(eps, t, latents)
    alpha, sigma = dpm._sigma_to_alpha_sigma_t(dpm.sigmas[0])
    assert torch.allclose(x0_of(dpm, out), (latents - sigma * eps) / alpha, atol=1e-5)


def test_stepwise_img2img_with_resized_rgba_input_matches_pipeline(backend):
    j = job(kind="variation", prompt="", steps=6, strength=0.7, width=40, height=32,
            init_images=[init_image(8, (50, 50))])
    whole = backend.run(j, keep_going)[0]
    stepped = run_stepwise(backend, j, keep_going)[0]
    assert whole.size == stepped.size == (40, 32)
    assert np.abs(pixels(whole) - pixels(stepped)).max() <= 1


def test_edit_without_input_image_is_refused(backend):
    with pytest.raises(ValueError, match="no input image"):
        backend.run(job(kind="edit"), keep_going)
    with pytest.raises(ValueError, match="no input image"):
        backend.start(job(kind="variation", prompt=""))


@pytest.mark.parametrize(
    "scheduler,config",
    [
        ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False}),
        ("EulerAncestralDiscreteScheduler", {}),  # stochastic: draws from each image's generator
        ("UniPCMultistepScheduler", {}),
    ],
)
def test_other_schedulers_stepwise_equals_whole_job_with_x0_previews(
    tiny_sd_path, tmp_path_factory, scheduler, config
):
    folder = with_scheduler(tiny_sd_path, tmp_path_factory.mktemp(scheduler), scheduler, **config)
    b = DiffusersBackend("alt", str(folder))
    b.load()
    assert type(b._pipe("text2img").scheduler).__name__ == scheduler
    j = job(model="alt", n=2, steps=5, seed=31)
    previews = []
    whole = b.run(j, lambda s, t, p: previews.append(p()) or True)
    stepped = run_stepwise(b, j, keep_going)
    again = b.run(j, keep_going)
    for x, y, z in zip(whole, stepped, again):
        assert np.array_equal(pixels(x), pixels(z))  # seeded, even for ancestral sampling
        assert np.abs(pixels(x) - pixels(y)).max() <= 1
    # previews decode x0 predictions: they differ from step to step and match the image shape
    assert len(previews) == 5 and all(len(p) == 2 and p[0].size == (32, 32) for p in previews)
    assert not np.array_equal(pixels(previews[0][0]), pixels(previews[-2][0]))
    samples = b.start(j)
    b.step(samples)
    assert samples[0].x0 is not None  # the scheduler exposed a clean-image prediction


# -- through the engine ----------------------------------------------------------------------


async def test_engine_batches_jobs_and_matches_images_made_alone(backend):
    from canvasd.settings import ModelSettings, Settings
    from canvasd.engine.events import JobFinished, PartialImage
    from canvasd.engine.scheduler import Engine

    settings = Settings(models=[ModelSettings(id="tiny-sd", backend="diffusers")], torch_threads=1)
    engine = Engine({"tiny-sd": backend}, settings)
    engine.start()
    try:
        a = job(n=2, steps=6, seed=41, partial_images=2)
        b = job(prompt="a blue bird", n=1, steps=4, seed=7, guidance_scale=1.0)
        ha, hb = engine.submit(a), engine.submit(b)
        events = [ev async for ev in ha.events()]
        images_b = await hb.result()
    finally:
        engine.shutdown(10)
    partials = [ev for ev in events if isinstance(ev, PartialImage)]
    assert sorted((p.image_index, p.partial_index) for p in partials) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(p.image.size == (32, 32) for p in partials)
    assert isinstance(events[-1], JobFinished)
    for got, alone in zip(events[-1].images, backend.run(job(n=2, steps=6, seed=41), keep_going)):
        assert np.abs(pixels(got) - pixels(alone)).max() <= 1
    alone_b = backend.run(job(prompt="a blue bird", steps=4, seed=7, guidance_scale=1.0), keep_going)[0]
    assert np.abs(pixels(images_b[0]) - pixels(alone_b)).max() <= 1
