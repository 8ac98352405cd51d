"""`precision` (auto | fp32 | bf16): parsed once, handed to every backend, and honoured by both."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from canvasd.backends.base import run_stepwise
from canvasd.backends.emoji.backend import PACKAGED_WEIGHTS, EmojiBackend
from canvasd.backends.precision import cpu_has_fast_bf16, use_bf16
from canvasd.contracts import Job
from canvasd.backends.registry import ModelRegistry
from canvasd.settings import EMBEDDED_MODEL_ID, ModelSettings, Settings, SettingsError, load_settings

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def keep_going(*_):
    return True


def px(im) -> np.ndarray:
    return np.asarray(im, dtype=int)


def test_choices_resolve_and_bad_values_are_refused(monkeypatch):
    assert use_bf16("bf16") and not use_bf16("fp32")
    assert use_bf16("auto") == cpu_has_fast_bf16()
    with pytest.raises(ValueError, match="precision must be one of"):
        use_bf16("fp16")
    monkeypatch.setenv("CANVASD_PRECISION", "fp32")
    assert load_settings().precision == "fp32"
    monkeypatch.setenv("CANVASD_PRECISION", "half")
    with pytest.raises(SettingsError, match="CANVASD_PRECISION: Input should be 'auto', 'fp32' or 'bf16'"):
        load_settings()


def test_registry_hands_the_setting_to_each_backend():
    settings = Settings(models=[ModelSettings(id=EMBEDDED_MODEL_ID, backend="emoji")], precision="bf16")
    assert ModelRegistry(settings).get(EMBEDDED_MODEL_ID).precision == "bf16"


@pytest.fixture(scope="module")
def packaged():
    """The packaged model in both precisions (two UNets of ~22 M parameters)."""
    out = {}
    for p in ("fp32", "bf16"):
        b = EmojiBackend(EMBEDDED_MODEL_ID, str(PACKAGED_WEIGHTS), precision=p)
        b.load()
        out[p] = b
    return out


def emoji_job(prompt: str, seed: int) -> Job:
    return Job(kind="generate", model=EMBEDDED_MODEL_ID, prompt=prompt, width=64, height=64, steps=8,
               guidance_scale=5.0, seed=seed)


def premultiplied(im) -> np.ndarray:
    """RGBA with colour times alpha: the colour of an invisible pixel is arbitrary and not compared."""
    a = px(im)
    return np.concatenate([a[..., :3] * a[..., 3:] // 255, a[..., 3:]], axis=-1)


def test_emoji_bf16_is_honoured_and_draws_the_same_image(packaged):
    job = emoji_job("red apple", 3)
    fp32 = premultiplied(packaged["fp32"].run(job, keep_going)[0])
    bf16 = premultiplied(packaged["bf16"].run(job, keep_going)[0])
    again = premultiplied(packaged["bf16"].run(job, keep_going)[0])
    assert np.array_equal(bf16, again)  # same seed, same bytes
    assert not np.array_equal(fp32, bf16)  # the setting changes the arithmetic...
    diff = np.abs(fp32 - bf16)
    assert diff.mean() < 12 and (diff > 32).mean() < 0.05  # ...not the picture (another seed: ~60)
    other = premultiplied(packaged["bf16"].run(emoji_job("red apple", 4), keep_going)[0])
    assert np.abs(other - bf16).mean() > 3 * diff.mean()


def test_emoji_bf16_batch_mates_do_not_change_a_sample(packaged):
    b = packaged["bf16"]
    jobs = [emoji_job(p, i) for i, p in enumerate(("red apple", "smiling cat", "rocket"))]
    alone = [premultiplied(b.run(j, keep_going)[0]) for j in jobs]
    started = [b.start(j) for j in jobs]
    live = [s for ss in started for s in ss]
    while not all(s.done for s in live):
        b.step([s for s in live if not s.done])
    other_seed = premultiplied(b.run(emoji_job("red apple", 7), keep_going)[0])
    for ss, a in zip(started, alone):
        diff = np.abs(premultiplied(b.finish(ss)[0]) - a)
        # bf16 rounds a row differently per batch size, and the ODE carries that forward: a few
        # pixels move (by up to a few tens of levels), the picture does not (another seed differs
        # far more).
        assert (diff > 3).mean() < 0.1
        assert diff.mean() < 0.1 * np.abs(other_seed - alone[0]).mean()


def test_bf16_weights_stored_once_compute_what_autocast_computes():
    """cast_weights=True (the emoji UNet's setting) keeps conv/linear weights in bf16 instead of
    autocast re-casting them every forward: the same numbers, norms still fp32."""
    import copy

    from canvasd.backends.emoji.model import ModelConfig, build_unet
    from canvasd.backends.precision import run_denoiser_in_bf16

    torch.manual_seed(0)
    cfg = ModelConfig(block_out_channels=(32, 32, 32), norm_num_groups=8, head_channels=16)
    autocast_only = build_unet(cfg).eval().requires_grad_(False)
    stored = copy.deepcopy(autocast_only)
    run_denoiser_in_bf16(autocast_only)
    run_denoiser_in_bf16(stored, cast_weights=True)
    assert autocast_only.conv_in.weight.dtype == torch.float32
    assert stored.conv_in.weight.dtype == torch.bfloat16
    assert all(m.weight.dtype == torch.float32 for m in stored.modules() if isinstance(m, torch.nn.GroupNorm))
    z, t = torch.randn(3, cfg.latent_channels, 16, 16), torch.tensor([10, 500, 990])
    text, pooled = torch.randn(3, cfg.max_tokens, 384), torch.randn(3, 384)
    with torch.inference_mode():
        a = autocast_only(z, t, encoder_hidden_states=text, class_labels=pooled).sample
        b = stored(z, t, encoder_hidden_states=text, class_labels=pooled).sample
    assert a.dtype == b.dtype == torch.float32
    assert torch.equal(a, b)


def test_diffusers_bf16_runs_whole_job_and_stepwise(tmp_path_factory):
    from tiny_pipelines import build_tiny_sd_pipeline

    from canvasd.backends.diffusers import DiffusersBackend

    path = build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd-bf16"))
    job = Job(kind="generate", model="tiny", prompt="a cat", n=2, width=32, height=32, steps=4,
              guidance_scale=5.0, seed=1)
    results = {}
    for p in ("fp32", "bf16"):
        b = DiffusersBackend("tiny", str(path), precision=p)
        b.load()
        results[p] = (b.run(job, keep_going), run_stepwise(b, job, keep_going))
    for whole, stepped in results.values():
        assert [im.size for im in whole + stepped] == [(32, 32)] * 4
    (fp32_whole, _), (bf16_whole, bf16_stepped) = results["fp32"], results["bf16"]
    assert not np.array_equal(px(fp32_whole[0]), px(bf16_whole[0]))
    # both paths run the UNet under the same autocast: they agree as closely as in fp32
    assert np.abs(px(bf16_whole[0]) - px(bf16_stepped[0])).mean() < 2
