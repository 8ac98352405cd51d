"""Tiny random-weight diffusers pipelines for tests: built locally in ~a second, no hub access.

`build_tiny_sd_pipeline(path)` saves a StableDiffusionPipeline whose every component is real
(UNet2DConditionModel, AutoencoderKL, CLIPTextModel, CLIPTokenizer, a scheduler) but a few
thousand parameters big. The tokenizer's vocabulary is written here: the 256 byte-level symbols
(plain and word-final) plus a handful of merges, enough for CLIP's BPE to tokenize any text.

`build_tiny_sdxl_pipeline`, `build_tiny_sd3_pipeline` and `build_tiny_flux_pipeline` do the same
for the other stepwise families: two CLIP encoders (SDXL), two CLIP + a T5 encoder (SD3), CLIP + T5
(Flux). The T5 tokenizer is a `tokenizers` Unigram model whose vocabulary is written here too
(single characters with and without the word-start marker, a few whole words), so nothing is
downloaded.
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


# -- the other stepwise families -------------------------------------------------------------


def tiny_t5_tokenizer():
    """A T5 tokenizer (Unigram, Metaspace, "</s>" appended) over a vocabulary written here."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for ch in string.ascii_letters + string.digits + string.punctuation:
        vocab += [(ch, -3.0), ("\u2581" + ch, -3.5)]
    vocab += [("\u2581" + w, -1.0) for w in ("a", "the", "cat", "dog", "red", "blue", "on", "at", "sea")]
    model = Tokenizer(models.Unigram(vocab, unk_id=2))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(tokenizer_object=model, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=512)


def _tiny_t5_encoder(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=32, num_layers=1,
                                   num_heads=2, relative_attention_num_buckets=8, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=1))


def _clip_config(vocab_size: int, hidden: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    extra = {"projection_dim": projection} if projection else {}
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, hidden_act="gelu", **extra)


def _tiny_vae(latent_channels: int = 4, **config):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=VAE_BLOCKS,
                         down_block_types=("DownEncoderBlock2D",) * len(VAE_BLOCKS),
                         up_block_types=("UpDecoderBlock2D",) * len(VAE_BLOCKS), latent_channels=latent_channels,
                         layers_per_block=1, norm_num_groups=4, sample_size=UNET_SAMPLE_SIZE * 2, **config)


def build_tiny_sdxl_pipeline(path: Path) -> Path:
    """A tiny StableDiffusionXLPipeline: UNet with text_time embeddings, CLIP + CLIP-with-projection."""
    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer), TEXT_HIDDEN))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(len(tokenizer), TEXT_HIDDEN, projection=TEXT_HIDDEN))
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=UNET_SAMPLE_SIZE, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * TEXT_HIDDEN, attention_head_dim=(2, 4), norm_num_groups=4, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=TEXT_HIDDEN + 6 * time_dim, transformer_layers_per_block=(1, 1),
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=_tiny_vae(force_upcast=True), text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                                     unet=unet, scheduler=scheduler)
    pipe.save_pretrained(path)
    return path


def build_tiny_sd3_pipeline(path: Path, t5: bool = True) -> Path:
    """A tiny StableDiffusion3Pipeline: MMDiT, two CLIP-with-projection encoders, T5 (or none)."""
    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    text_encoder = CLIPTextModelWithProjection(_clip_config(len(tokenizer), TEXT_HIDDEN, projection=TEXT_HIDDEN))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(len(tokenizer), TEXT_HIDDEN, projection=TEXT_HIDDEN))
    joint = 2 * TEXT_HIDDEN  # the CLIP pair's width; T5's d_model must match
    tokenizer_3 = text_encoder_3 = None
    if t5:
        tokenizer_3 = tiny_t5_tokenizer()
        text_encoder_3 = _tiny_t5_encoder(len(tokenizer_3), joint)
    # 16 latent channels as the real SD3 VAE has: diffusers' SD3 inpaint pipeline insists on it
    transformer = SD3Transformer2DModel(sample_size=UNET_SAMPLE_SIZE, patch_size=1, in_channels=16, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=joint,
                                        caption_projection_dim=16, pooled_projection_dim=2 * TEXT_HIDDEN,
                                        out_channels=16, pos_embed_max_size=32)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_vae(16, shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_flux_pipeline(path: Path, guidance_embeds: bool = True) -> Path:
    """A tiny FluxPipeline: packed latents, CLIP pooled + T5 sequence, guidance embedding."""
    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_t5_tokenizer()
    text_encoder = CLIPTextModel(_clip_config(len(tokenizer), TEXT_HIDDEN))
    text_encoder_2 = _tiny_t5_encoder(len(tokenizer_2), 32)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=TEXT_HIDDEN, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 4, 8))
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5,
                                                max_shift=1.15, use_dynamic_shifting=True, shift=3.0)
    pipe = FluxPipeline(transformer=transformer, scheduler=scheduler,
                        vae=_tiny_vae(shift_factor=0.1159, scaling_factor=0.3611),
                        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2)
    pipe.save_pretrained(path)
    return path


def build_tiny_lora(pipeline: Path, out_file: Path, seed: int = 0, strength: float = 8.0) -> Path:
    """A LoRA adapter (.safetensors, diffusers' layout) for the tiny SD pipeline's UNet attention.

    Random low-rank factors, scaled up so that the adapter visibly changes a 4-step image."""
    out_file = Path(out_file)
    if out_file.exists():
        return out_file
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(Path(pipeline) / "unet")
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.mul_(strength)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out_file.parent, unet_lora_layers=layers, weight_name=out_file.name)
    return out_file
