"""Tiny random-weight diffusers pipelines for tests: built locally in ~a second, no hub access.

`build_tiny_sd_pipeline(path)` saves a StableDiffusionPipeline whose every component is real
(UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, a scheduler) but a few
thousand parameters big. The tokenizer's vocabulary is written here: the 256 byte-level symbols
(plain and word-final) plus a handful of merges, enough for CLIP's BPE to tokenize any text.
"""

from __future__ import annotations

import json
from pathlib import Path

VAE_BLOCKS = (8, 16)  # vae scale factor 2
UNET_SAMPLE_SIZE = 16  # native size = 16 * 2 = 32 px
TEXT_HIDDEN = 16
MERGES = ["a t", "t h", "th e</w>", "c a", "ca t</w>", "r e", "o n</w>"]


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def tiny_clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for sym in _byte_symbols():
        vocab.setdefault(sym, len(vocab))
        vocab.setdefault(sym + "</w>", len(vocab))
    for merge in MERGES:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in MERGES], model_max_length=77)


def build_tiny_sd_pipeline(path: Path, scheduler: str = "dpm") -> Path:
    """Save a tiny StableDiffusionPipeline under `path` (reused when already there)."""
    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=UNET_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=VAE_BLOCKS,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=UNET_SAMPLE_SIZE * 2,
    )
    tokenizer = tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    sched_config = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )
    if scheduler == "ddim":
        sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **sched_config)
    else:
        sched = DPMSolverMultistepScheduler(**sched_config)
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def with_scheduler(src: Path, dst: Path, class_name: str, **config) -> Path:
    """A copy of pipeline `src` whose scheduler is swapped (configs only; weights are linked)."""
    dst = Path(dst)
    if (dst / "model_index.json").exists():
        return dst
    for item in Path(src).rglob("*"):
        target = dst / item.relative_to(src)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif item.suffix in (".safetensors", ".bin"):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(item.resolve())
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.read_bytes())
    index = json.loads((dst / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", class_name]
    (dst / "model_index.json").write_text(json.dumps(index, indent=2))
    sched_path = dst / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_path.read_text())
    sched.update(_class_name=class_name, **config)
    sched_path.write_text(json.dumps(sched, indent=2))
    return dst


def write_not_a_pipeline(path: Path) -> Path:
    """A folder that looks like a model but is not a diffusers pipeline."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return path
