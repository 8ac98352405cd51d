"""Random-weight SDXL and Flux pipelines at their published sizes, built offline, to measure speed.

Speed does not depend on the weights' values, so `canvasd bench` (and scripts/gpu-check.sh) can
measure the families people serve without downloading them: every component is built from the
architecture configs written below (those of stabilityai/stable-diffusion-xl-base-1.0 and
black-forest-labs/FLUX.1-dev), initialised at random on the target device, cast to the target
dtype and saved with `save_pretrained`, so canvasd loads the folder exactly as it loads a real
one. The tokenizers are written here too (a CLIP byte-level BPE and a T5 Unigram vocabulary):
they tokenize any prompt, with fewer distinct tokens than the real ones, which costs the same.

`tiny=True` keeps every component and the pipeline classes but shrinks widths and depths (the
same code path, in seconds on a CPU) — for tests and for running gpu-check.sh without a GPU.

    python -m canvasd.bench.random_pipelines sdxl /tmp/sdxl --device cuda --dtype fp16
    python -m canvasd.bench.random_pipelines flux /tmp/flux --tiny
"""

from __future__ import annotations

import argparse
import json
import string
from pathlib import Path
from typing import Any

FAMILIES = ("sdxl", "flux")

# --- published architecture configs -----------------------------------------------------------
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048, use_linear_projection=True, norm_num_groups=32,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # pooled bigG (1280) + 6 time ids x 256
)
SDXL_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=1024,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.13025,
    force_upcast=True,
)
CLIP_L: dict[str, Any] = dict(  # openai/clip-vit-large-patch14's text tower (SDXL's and Flux's first)
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
CLIP_BIG_G: dict[str, Any] = dict(  # OpenCLIP ViT-bigG/14's text tower (SDXL's second, projected)
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
    num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)
SDXL_SCHEDULER: dict[str, Any] = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
)
FLUX_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
    guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)
FLUX_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, sample_size=1024,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.3611,
    shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
)
T5_XXL: dict[str, Any] = dict(  # google/t5-v1_1-xxl's encoder (Flux's second text encoder)
    vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
    relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
)
FLUX_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)

# --- the tiny variants: the same components, narrow and shallow ------------------------------
_TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  projection_dim=32)
_TINY_VAE = dict(layers_per_block=1, block_out_channels=(16, 32), norm_num_groups=8, sample_size=64,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
TINY: dict[str, dict[str, Any]] = {
    "sdxl_unet": dict(
        sample_size=32, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 1),
        attention_head_dim=(2, 4), cross_attention_dim=64, norm_num_groups=8, addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8),
    "vae": _TINY_VAE,
    "clip": _TINY_TEXT,
    "flux_transformer": dict(num_layers=1, num_single_layers=1, attention_head_dim=16,
                             num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                             axes_dims_rope=(4, 6, 6)),
    "t5": dict(d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=1),
}


# --- tokenizers written here -----------------------------------------------------------------
def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE (GPT-2, CLIP) uses for raw bytes."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def clip_tokenizer():
    """CLIP's BPE over the byte symbols (plain and word-final) and a few merges; the special tokens
    come last, as in CLIP's vocabulary, so the end-of-text token has the highest id (CLIP text
    models pool at the highest id when their config says so)."""
    from transformers import CLIPTokenizer

    merges = ["a t", "t h", "th e</w>", "c a", "ca t</w>", "r e", "o n</w>", "i n", "e r</w>"]
    vocab: dict[str, int] = {}
    for sym in _byte_symbols():
        vocab.setdefault(sym, len(vocab))
        vocab.setdefault(sym + "</w>", len(vocab))
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], model_max_length=77,
                         pad_token="<|endoftext|>")


def t5_tokenizer():
    """A T5 tokenizer (Unigram over letters, digits, punctuation and a few words; Metaspace; "</s>"
    appended), the shape FluxPipeline pads to 512 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for ch in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(ch, -3.0), ("\u2581" + ch, -3.5)]
    pieces += [("\u2581" + w, -1.0) for w in ("a", "an", "the", "of", "on", "in", "with", "and")]
    model = Tokenizer(models.Unigram(pieces, unk_id=2))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=model, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=512)


# --- building ---------------------------------------------------------------------------------
def _config(base: dict[str, Any], tiny: bool, key: str, **fixed: Any) -> dict[str, Any]:
    return {**base, **(TINY[key] if tiny else {}), **fixed}


def _clip_config(base: dict[str, Any], tiny: bool, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig

    cfg = _config(base, tiny, "clip")
    ids = tokenizer.get_vocab()
    if tiny:
        cfg["vocab_size"] = len(ids)
    # the token ids the text model pools at and pads with are the tokenizer's
    return CLIPTextConfig(bos_token_id=ids["<|startoftext|>"], eos_token_id=ids["<|endoftext|>"],
                          pad_token_id=ids["<|endoftext|>"], **cfg)


def _t5_config(tiny: bool, tokenizer: Any) -> Any:
    from transformers import T5Config

    cfg = _config(T5_XXL, tiny, "t5")
    if tiny:
        cfg["vocab_size"] = len(tokenizer)
    return T5Config(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **cfg)


def _sdxl(tiny: bool, device: str) -> Any:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    with torch.device(device):  # the weights only: schedulers keep their tables on the CPU
        modules = dict(
            vae=AutoencoderKL(**_config(SDXL_VAE, tiny, "vae")),
            text_encoder=CLIPTextModel(_clip_config(CLIP_L, tiny, tokenizer)),
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(CLIP_BIG_G, tiny, tokenizer_2)),
            unet=UNet2DConditionModel(**_config(SDXL_UNET, tiny, "sdxl_unet")),
        )
    return StableDiffusionXLPipeline(tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                                     scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER), **modules)


def _flux(tiny: bool, device: str) -> Any:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    with torch.device(device):
        modules = dict(
            transformer=FluxTransformer2DModel(**_config(FLUX_TRANSFORMER, tiny, "flux_transformer")),
            vae=AutoencoderKL(**_config(FLUX_VAE, tiny, "vae")),
            text_encoder=CLIPTextModel(_clip_config(CLIP_L, tiny, tokenizer)),
            text_encoder_2=T5EncoderModel(_t5_config(tiny, tokenizer_2)),
        )
    return FluxPipeline(tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), **modules)


_BUILDERS = {"sdxl": _sdxl, "flux": _flux}
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def build_random_pipeline(family: str, path: str | Path, *, tiny: bool = False, device: str = "cpu",
                          dtype: str = "fp32", seed: int = 0) -> Path:
    """Save a random-weight `family` pipeline under `path` (reused when a finished one is there).

    Components are initialised on `device` (a GPU initialises a 12-billion-parameter transformer in
    seconds where a CPU takes minutes) and stored in `dtype`."""
    if family not in _BUILDERS:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, not {family!r}")
    path = Path(path)
    stamp = path / "canvasd-random.json"
    wanted = {"family": family, "tiny": tiny, "dtype": dtype, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return path
    import torch

    torch.manual_seed(seed)
    pipe = _BUILDERS[family](tiny, device)
    if dtype != "fp32":
        pipe.to(getattr(torch, _DTYPES[dtype]))
    pipe.save_pretrained(path, safe_serialization=True)
    stamp.write_text(json.dumps(wanted))  # last: a folder without it is unfinished
    return path


def parameter_counts(path: str | Path) -> dict[str, int]:
    """Parameters per component of a saved pipeline, from its safetensors headers."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    for file in sorted(Path(path).rglob("*.safetensors")):
        component = file.relative_to(path).parts[0]
        with safe_open(str(file), framework="numpy") as f:
            for key in f.keys():
                n = 1
                for side in f.get_slice(key).get_shape():
                    n *= side
                counts[component] = counts.get(component, 0) + n
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m canvasd.bench.random_pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=FAMILIES)
    parser.add_argument("path", type=Path)
    parser.add_argument("--tiny", action="store_true", help="narrow, shallow components (tests, CPU runs)")
    parser.add_argument("--device", default="cpu", help="where to initialise the weights (cpu, cuda, ...)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(_DTYPES), help="stored dtype")
    args = parser.parse_args(argv)
    path = build_random_pipeline(args.family, args.path, tiny=args.tiny, device=args.device, dtype=args.dtype)
    counts = parameter_counts(path)
    total = sum(counts.values())
    parts = ", ".join(f"{k} {v:,}" for k, v in counts.items())
    print(f"{path}: {args.family}{' (tiny)' if args.tiny else ''}, {total:,} parameters ({parts})")


if __name__ == "__main__":
    main()
