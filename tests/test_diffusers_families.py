"""The stepwise families beyond SD-1/2 (SDXL, SD3, Flux) on tiny random-weight pipelines built
offline (tiny_pipelines.py): each family's step-level path makes the images its pipeline's own
``__call__`` makes for the same seeds, batches across jobs without changing them, previews the
sampler's real clean-image estimate and honours guidance/negative prompts as the family means them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from canvasd.backends.base import run_stepwise
from canvasd.backends.diffusers import DiffusersBackend, inspect_pipeline_folder
from canvasd.contracts import Job
from tiny_pipelines import (
    build_tiny_flux_pipeline,
    build_tiny_sd3_pipeline,
    build_tiny_sdxl_pipeline,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BUILDERS = {
    "sdxl": build_tiny_sdxl_pipeline,
    "sd3": build_tiny_sd3_pipeline,
    "sd3-no-t5": lambda p: build_tiny_sd3_pipeline(p, t5=False),
    "flux": build_tiny_flux_pipeline,
}
FAMILY = {"sdxl": "sdxl", "sd3": "sd3", "sd3-no-t5": "sd3", "flux": "flux"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a shared machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory) -> dict[str, Path]:
    return {name: build(tmp_path_factory.mktemp(name)) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module", params=list(BUILDERS))
def backend(request, tiny_paths) -> DiffusersBackend:
    b = DiffusersBackend(request.param, str(tiny_paths[request.param]), precision="fp32", device="cpu")
    b.load()
    return b


def job(b: DiffusersBackend, **kw) -> Job:
    base = dict(kind="generate", model=b.id, prompt="a red cat", n=1, width=32, height=32, steps=3,
                guidance_scale=4.0, seed=1)
    if b.capabilities.negative_prompt:
        base["negative_prompt"] = "a blue dog"
    base.update(kw)
    return Job(**base)


def keep_going(step, total, preview):
    return True


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


def assert_close(a: list[Image.Image], b: list[Image.Image], tol: int = 1) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.size == y.size
        assert np.abs(pixels(x) - pixels(y)).max() <= tol


def init_image(seed: int = 0, size=(32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8), "RGB")


def run_together(b: DiffusersBackend, samples) -> None:
    while not all(s.done for s in samples):
        b.step([s for s in samples if not s.done])


# -- what each family declares ---------------------------------------------------------------


def test_family_and_requests_honoured_from_configs(tiny_paths):
    for name, path in tiny_paths.items():
        info = inspect_pipeline_folder(path)
        caps = info.capabilities()
        assert info.family == FAMILY[name], name
        assert caps.stepwise and caps.text_to_image and caps.image_to_image and caps.inpaint
        # Flux's guidance is distilled: no negative rows, so a negative prompt is refused
        assert caps.negative_prompt == (FAMILY[name] != "flux") and caps.guidance_scale
        assert caps.default_guidance == {"sdxl": 5.0, "sd3": 7.0, "flux": 3.5}[FAMILY[name]]
        assert caps.size_multiple == (8 if name == "sdxl" else 16)


# -- stepwise equals the pipeline ------------------------------------------------------------


def test_stepwise_text2img_equals_the_pipeline_call(backend):
    j = job(backend, n=2, seed=11)
    whole = backend.run(j, keep_going)
    stepped = run_stepwise(backend, j, keep_going)
    assert_close(whole, stepped)
    assert not np.array_equal(pixels(stepped[0]), pixels(stepped[1]))  # each image its own seed


def test_stepwise_img2img_equals_the_pipeline_call(backend):
    j = job(backend, kind="edit", n=2, steps=4, strength=0.6, init_images=[init_image(3)])
    totals = []
    # image by image: diffusers' SD3 img2img pipeline fails for n > 1 with a list of generators
    # (it encodes image[i:i+1] of a one-image batch); each image alone is its seed's image anyway
    whole = [backend.run(job(backend, kind="edit", n=1, seed=j.seed + i, steps=4, strength=0.6,
                             init_images=[init_image(3)]), lambda s, t, p: totals.append(t) or True)[0]
             for i in range(2)]
    samples = backend.start(j)
    assert samples[0].total_steps == totals[-1]  # the pipeline's own step count for the strength
    run_together(backend, samples)
    assert_close(whole, backend.finish(samples))


def test_guidance_and_negative_prompt_change_the_image(backend):
    base = run_stepwise(backend, job(backend, guidance_scale=4.0), keep_going)[0]
    other = run_stepwise(backend, job(backend, guidance_scale=1.5), keep_going)[0]
    assert not np.array_equal(pixels(base), pixels(other))
    if backend.capabilities.negative_prompt:
        neg = run_stepwise(backend, job(backend, negative_prompt="a red boat"), keep_going)[0]
        assert not np.array_equal(pixels(base), pixels(neg))


def test_results_do_not_depend_on_batch_mates(backend):
    mine_job = job(backend, n=2, seed=21)
    alone = backend.start(mine_job)
    run_together(backend, alone)
    expected = backend.finish(alone)

    mates_job = job(backend, prompt="the dog at sea", n=2, steps=5, seed=3, guidance_scale=1.0,
                    negative_prompt=None)
    assert backend.batch_key(mates_job) == backend.batch_key(mine_job)
    mates = backend.start(mates_job)
    backend.step(mates)
    mine = backend.start(mine_job)
    run_together(backend, mine + mates)
    assert_close(expected, backend.finish(mine))
    assert all(s.step == 3 for s in mine) and all(s.step == 5 for s in mates)


def test_last_preview_is_the_final_image(backend):
    previews = []
    final = backend.run(job(backend, steps=3), lambda s, t, p: previews.append(p()[0]) or True)[0]
    assert len(previews) == 3
    assert_close([previews[-1]], [final])
    assert not np.array_equal(pixels(previews[0]), pixels(final))
    samples = backend.start(job(backend, steps=3))
    run_together(backend, samples)
    assert torch.allclose(samples[0].x0, samples[0].latents, atol=1e-5)  # x0 at sigma 0 is the image


def test_flow_matching_preview_is_x_minus_sigma_v(backend):
    if not backend.family.flow_matching:
        pytest.skip("epsilon-prediction family: x0 comes from the scheduler (tested for SD)")
    s = backend.start(job(backend, steps=3))[0]
    before = s.latents.clone()
    sigma, sigma_next = s.scheduler.sigmas[0], s.scheduler.sigmas[1]
    backend.step([s])
    # Euler on a velocity: x_next = x + (sigma_next - sigma) v, so v and x0 = x - sigma v follow
    v = (s.latents - before) / (sigma_next - sigma)
    assert torch.allclose(s.x0, before - sigma * v, atol=1e-4)
    assert backend.preview(s).size == (32, 32)


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_stepwise_inpaint_equals_the_pipeline_call(backend, strength):
    # compared as latents: diffusers' SD3 inpaint pipeline decodes without the VAE's shift_factor
    # (its text2img and img2img pipelines add it, as canvasd does for every SD3 image)
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    j = job(backend, kind="edit", n=2, seed=30, steps=4, strength=strength, mask=mask, init_images=[init_image(5)])
    extra = {"negative_prompt": j.negative_prompt} if j.negative_prompt else {}
    whole = []
    for i in range(2):  # image by image: diffusers' batched edit pipelines mishandle generator lists
        out = backend.pipe("inpaint")(
            prompt=j.prompt, image=j.init_images[0], mask_image=mask, strength=strength, num_inference_steps=4,
            guidance_scale=j.guidance_scale, width=32, height=32, output_type="latent",
            generator=[torch.Generator().manual_seed(j.seed + i)], **extra)
        whole.append(out.images)
    samples = backend.start(j)
    run_together(backend, samples)
    for expected, s in zip(whole, samples):
        assert torch.allclose(expected, s.latents, atol=1e-4)


def test_inpaint_keeps_the_unmasked_latents(backend):
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))
    samples = backend.start(job(backend, kind="edit", steps=3, mask=mask, init_images=[init_image(7)]))
    run_together(backend, samples)
    s = samples[0]
    keep = 1 - s.mask
    assert keep.sum() > 0 and s.mask.sum() > 0
    assert torch.equal(s.latents * keep, s.image_latents * keep)
    assert not torch.equal(s.latents * s.mask, s.image_latents * s.mask)
    assert backend.finish(samples)[0].size == (32, 32)


# -- family specifics ------------------------------------------------------------------------


def test_sdxl_time_ids_carry_each_samples_size(tiny_paths):
    b = DiffusersBackend("sdxl", str(tiny_paths["sdxl"]), precision="fp32", device="cpu")
    b.load()
    s = b.start(Job(kind="generate", model="sdxl", prompt="a cat", width=40, height=24, steps=2))[0]
    assert s.cond["time_ids"].tolist() == [[24.0, 40.0, 0.0, 0.0, 24.0, 40.0]]
    assert s.uncond is not None and "text_embeds" in s.uncond  # true CFG rows


def test_flux_schedule_shift_is_part_of_the_batch_key(tiny_paths):
    b = DiffusersBackend("flux", str(tiny_paths["flux"]), precision="fp32", device="cpu")
    small = Job(kind="generate", model="flux", prompt="a", width=32, height=32)
    large = Job(kind="generate", model="flux", prompt="a", width=64, height=64)
    assert b.batch_key(small) != b.batch_key(large)
    assert b.batch_key(small)[3][1] != b.batch_key(large)[3][1]  # the shift mu differs
    b.load()
    s_small, s_large = b.start(small)[0], b.start(large)[0]
    assert not torch.equal(s_small.scheduler.sigmas[1], s_large.scheduler.sigmas[1])
    assert s_small.uncond is None and s_small.cond["guidance"].tolist() == [5.0]  # distilled guidance


def test_flux_without_guidance_embedding_has_no_guidance(tmp_path):
    # schnell-like: no guidance embedding, so no guidance row is sent
    b = DiffusersBackend("schnell", str(build_tiny_flux_pipeline(tmp_path / "s", guidance_embeds=False)),
                         precision="fp32", device="cpu")
    b.load()
    j = Job(kind="generate", model="schnell", prompt="a cat", width=32, height=32, steps=2, n=2, seed=4)
    assert not b.capabilities.guidance_scale  # a request's guidance_scale is refused by the API
    s = b.start(j)
    assert "guidance" not in s[0].cond
    assert_close(b.run(j, keep_going), (run_together(b, s), b.finish(s))[1])


async def test_engine_runs_flux_jobs_of_two_sizes_with_partials(tiny_paths):
    # different sizes have different shifts: separate batch keys; each image equals the one made alone
    from canvasd.engine.events import JobFinished, PartialImage
    from canvasd.engine.scheduler import Engine
    from canvasd.settings import ModelSettings, Settings

    b = DiffusersBackend("flux", str(tiny_paths["flux"]), precision="fp32", device="cpu")
    b.load()
    engine = Engine({"flux": b}, Settings(models=[ModelSettings(id="flux", backend="diffusers")], torch_threads=1))
    engine.start()
    small = Job(kind="generate", model="flux", prompt="a red cat", n=2, width=32, height=32, steps=3, seed=8,
                guidance_scale=3.5, partial_images=1)
    large = Job(kind="generate", model="flux", prompt="a blue dog", n=1, width=64, height=48, steps=2, seed=2,
                guidance_scale=3.5)
    try:
        hs, hl = engine.submit(small), engine.submit(large)
        events = [ev async for ev in hs.events()]
        images_large = await hl.result()
    finally:
        engine.shutdown(10)
    assert [ev.image.size for ev in events if isinstance(ev, PartialImage)] == [(32, 32), (32, 32)]
    assert isinstance(events[-1], JobFinished)
    assert_close(events[-1].images, b.run(small, keep_going))
    assert images_large[0].size == (64, 48)
    assert_close(images_large, b.run(large, keep_going))


def test_openai_sdk_against_a_live_flux_server(tiny_paths, live_server):
    import base64
    import io

    import openai
    from openai import OpenAI

    b = DiffusersBackend("flux-e2e", str(tiny_paths["flux"]), precision="fp32", device="cpu")
    srv = live_server(backend=b, torch_threads=1)
    client = OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, _strict_response_validation=True)
    fast = {"num_inference_steps": 2, "seed": 4}
    r = client.images.generate(model="flux-e2e", prompt="a red cat", n=2, size="80x64", extra_body=fast)
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in r.data]
    assert [im.size for im in images] == [(80, 64)] * 2 and images[0].mode == "RGB"
    stronger = client.images.generate(model="flux-e2e", prompt="a red cat", size="80x64",
                                      extra_body={**fast, "guidance_scale": 9.0})
    assert stronger.data[0].b64_json != r.data[0].b64_json  # distilled guidance is honoured
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(model="flux-e2e", prompt="a red cat", size="80x64",
                               extra_body={**fast, "negative_prompt": "blurry"})
    assert err.value.body["param"] == "negative_prompt"


def test_vae_tiling_auto_on_off(tiny_paths):
    from canvasd.backends.diffusers.backend import AUTO_TILING_PIXELS

    side = int(AUTO_TILING_PIXELS ** 0.5)
    small = Job(kind="generate", model="m", prompt="", width=64, height=64)
    large = Job(kind="generate", model="m", prompt="", width=side + 16, height=side)
    for mode, expect in (("auto", (False, True)), ("on", (True, True)), ("off", (False, False))):
        b = DiffusersBackend("m", str(tiny_paths["sdxl"]), device="cpu", vae_tiling=mode)
        b.load()
        vae = b.pipe("text2img").vae
        got = []
        for j in (small, large):
            b._set_tiling(vae, j)
            got.append(vae.use_tiling)
        assert tuple(got) == expect, mode
    with pytest.raises(ValueError, match="vae_tiling must be"):
        DiffusersBackend("m", str(tiny_paths["sdxl"]), device="cpu", vae_tiling="sometimes")
