"""LoRA adapters on the tiny SD pipeline, with tiny adapters the test makes (tiny_pipelines.py):
the config's adapters load, a request's `lora` selects among them with scales, samples with
different adapter sets are batched apart, and stepwise still equals the pipeline's own call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from canvasd.backends.base import run_stepwise
from canvasd.backends.diffusers import DiffusersBackend
from canvasd.backends.diffusers.lora import LoraSpec
from canvasd.contracts import Job
from tiny_pipelines import build_tiny_lora, build_tiny_sd_pipeline

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    sd = build_tiny_sd_pipeline(root / "sd")
    return sd, build_tiny_lora(sd, root / "adapters" / "ink.safetensors", seed=1), \
        build_tiny_lora(sd, root / "adapters" / "neon.safetensors", seed=2)


@pytest.fixture(scope="module")
def plain(files):
    b = DiffusersBackend("plain", str(files[0]), precision="fp32", device="cpu")
    b.load()
    return b


@pytest.fixture(scope="module")
def styled(files):
    sd, ink, neon = files
    b = DiffusersBackend("styled", str(sd), precision="fp32", device="cpu",
                         loras=[LoraSpec("ink", ink, 1.0), LoraSpec("neon", neon, 0.5)])
    b.load()
    return b


def job(**kw) -> Job:
    base = dict(kind="generate", model="m", prompt="a cat", n=1, width=32, height=32, steps=4,
                guidance_scale=5.0, seed=3)
    base.update(kw)
    return Job(**base)


def image(b, j) -> np.ndarray:
    return np.asarray(run_stepwise(b, j, lambda *a: True)[0], dtype=np.int16)


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return int(np.abs(a - b).max()) <= 1


def test_adapters_are_capabilities_and_selected_per_request(plain, styled):
    assert styled.capabilities.loras == ("ink", "neon") and plain.capabilities.loras == ()
    base = image(plain, job())
    assert close(image(styled, job(lora=())), base)  # [] = the base model
    ink = image(styled, job(lora=(("ink", None),)))
    assert not close(ink, base)
    assert not close(image(styled, job(lora=(("neon", None),))), ink)
    assert close(image(styled, job(lora=(("ink", 0.0),))), base)  # scale 0: no effect
    assert not close(image(styled, job(lora=(("ink", 2.0),))), ink)  # the scale is honoured
    # absent = the configured set at configured scales
    assert close(image(styled, job()), image(styled, job(lora=(("ink", 1.0), ("neon", 0.5)))))


def test_stepwise_with_an_adapter_equals_the_pipeline_call(styled):
    j = job(n=2, lora=(("ink", 0.8),))
    whole = styled.run(j, lambda *a: True)
    stepped = run_stepwise(styled, j, lambda *a: True)
    for a, b in zip(whole, stepped):
        assert close(np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16))


def test_different_adapter_sets_never_share_a_batch(styled):
    ink, none = job(lora=(("ink", None),)), job(lora=())
    assert styled.batch_key(ink) != styled.batch_key(none)
    assert styled.batch_key(ink) == styled.batch_key(job(prompt="a dog", seed=9, lora=(("ink", 1.0),)))
    # interleaved batches (as the engine runs two keys) switch adapters without leaking
    a, b = styled.start(ink), styled.start(none)
    while not all(s.done for s in a + b):
        styled.step([s for s in a if not s.done])
        styled.step([s for s in b if not s.done])
    got_a = np.asarray(styled.finish(a)[0], dtype=np.int16)
    got_b = np.asarray(styled.finish(b)[0], dtype=np.int16)
    assert close(got_a, image(styled, ink)) and close(got_b, image(styled, none))


def test_bad_adapter_config_is_a_clear_error(files, tmp_path):
    sd, ink, _ = files
    with pytest.raises(ValueError, match="listed twice"):
        DiffusersBackend("m", str(sd), device="cpu", loras=[LoraSpec("a", ink), LoraSpec("a", ink)])
    with pytest.raises(ValueError, match="safetensors"):
        DiffusersBackend("m", str(sd), device="cpu", loras=[LoraSpec("a", tmp_path / "missing.safetensors")])
    (tmp_path / "x.bin").write_bytes(b"0")
    with pytest.raises(ValueError, match="safetensors"):
        DiffusersBackend("m", str(sd), device="cpu", loras=[LoraSpec("a", tmp_path / "x.bin")])


def test_unknown_adapter_in_a_job_is_refused(styled):
    with pytest.raises(ValueError, match="unknown LoRA 'gone'"):
        styled.batch_key(job(lora=(("gone", None),)))


def test_openai_sdk_selects_adapters_on_a_live_server(files, live_server):
    import base64
    import io

    import openai
    from openai import OpenAI

    sd, ink, neon = files
    backend = DiffusersBackend("styled-e2e", str(sd), precision="fp32", device="cpu",
                               loras=[LoraSpec("ink", ink, 1.0), LoraSpec("neon", neon, 0.5)])
    srv = live_server(backend=backend, torch_threads=1)
    client = OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, _strict_response_validation=True)

    def generate(**extra) -> np.ndarray:
        r = client.images.generate(model="styled-e2e", prompt="a cat", size="32x32",
                                   extra_body={"num_inference_steps": 3, "seed": 5, **extra})
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json))), dtype=np.int16)

    base, ink_img = generate(lora=[]), generate(lora="ink")
    assert not close(base, ink_img)
    assert close(generate(lora=[{"name": "ink", "scale": 0.0}]), base)
    assert np.array_equal(generate(lora="ink"), ink_img)
    with pytest.raises(openai.BadRequestError) as err:
        generate(lora="sepia")
    assert err.value.body["param"] == "lora" and "'sepia'" in err.value.body["message"]


def test_model_settings_reach_the_backend(files):
    from canvasd.registry import build_backend
    from canvasd.settings import ModelSettings, SettingsError

    sd, ink, _ = files
    spec = ModelSettings(id="cfg", path=str(sd), device="cpu", dtype="fp32", vae_tiling="on",
                         loras=[dict(name="ink", path=str(ink), scale=0.7)])
    b = build_backend(spec)
    assert (b.device, b.dtype, b.vae_tiling) == ("cpu", "fp32", "on")
    assert b.capabilities.loras == ("ink",) and b.loras[0].scale == 0.7
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU"):
        build_backend(ModelSettings(id="h", path=str(sd), device="cpu", dtype="fp16"))
    with pytest.raises(SettingsError, match="device = 'cuda:0' is not supported yet"):
        build_backend(ModelSettings(id="e", backend="emoji", device="cuda:0"))  # the embedded model: CPU only
