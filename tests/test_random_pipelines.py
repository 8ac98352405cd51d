"""The random-weight pipelines the GPU check benchmarks: the published architectures (checked by
their exact parameter counts, built on the meta device: no memory, no download), and tiny variants
that canvasd loads and runs like any saved pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from canvasd.bench import random_pipelines as rp
from canvasd.contracts import Job

# Parameter counts of the published checkpoints' components.
PUBLISHED = {
    "sdxl": {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
             "vae": 83_653_863},
    "flux": {"transformer": 11_901_408_320, "text_encoder": 123_060_480,
             "text_encoder_2": 4_762_310_656, "vae": 83_819_683},
}


@pytest.mark.parametrize("family", rp.FAMILIES)
def test_full_size_configs_are_the_published_architectures(family):
    pipe = rp._BUILDERS[family](False, "meta")
    counts = {name: sum(p.numel() for p in module.parameters())
              for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    assert counts == PUBLISHED[family]


def test_tokenizers_are_written_offline_and_tokenize_any_prompt():
    clip, t5 = rp.clip_tokenizer(), rp.t5_tokenizer()
    ids = clip("a red apple, ünïcode ✓", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == clip.bos_token_id and clip.eos_token_id == max(clip.get_vocab().values())
    t5_ids = t5("a red apple", padding="max_length", max_length=512).input_ids
    assert len(t5_ids) == 512 and t5.eos_token_id in t5_ids and t5.unk_token_id not in t5_ids


@pytest.mark.parametrize("family", rp.FAMILIES)
def test_tiny_pipeline_loads_and_generates_in_canvasd(family, tmp_path):
    from canvasd.backends.diffusers import DiffusersBackend

    path = rp.build_random_pipeline(family, tmp_path / family, tiny=True)
    assert json.loads((path / "canvasd-random.json").read_text())["family"] == family
    assert rp.build_random_pipeline(family, path, tiny=True) == path  # reused, not rebuilt
    backend = DiffusersBackend(family, str(path), precision="fp32")
    assert backend.capabilities.stepwise  # the families canvasd batches step by step
    backend.load()
    job = Job(kind="generate", model=family, prompt="a red apple", width=64, height=64, steps=2, seed=3)
    (image,) = backend.run(job, lambda *_: True)
    assert image.size == (64, 64)
