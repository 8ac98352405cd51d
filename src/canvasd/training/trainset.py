"""What the training loop reads: the image set, caption strings and their cached text states.

Data format (built by `canvasd.training.data`): `<name>.npz` with `images` (N,64,64,4) uint8
straight alpha, `concept` (N,) int32, `style` (N,) int32, `split` (N,) uint8 (0 train, 1 held out),
and `<name>.json` with `concepts` [{id, name, captions[]}] and `styles` [{name, phrase, ...}].

Running MiniLM per training step would cost about as much as the UNet step, so every caption string
a training sample can draw is encoded once and cached (fp16) under `<data_dir>/cache/`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from canvasd.backends.emoji.model import TextCond, TextEncoder


@dataclass
class CaptionTable:
    strings: list[str]  # index 0 is "" (the unconditional caption)
    plain: np.ndarray  # (n_concepts, K) indices into strings, -1 padded
    plain_count: np.ndarray  # (n_concepts,)
    styled: np.ndarray  # (N_images, S) indices: "<caption>, <style phrase>" for that image, -1 padded


@dataclass
class EmojiData:
    images: np.ndarray  # (N,64,64,4) uint8, train split only
    concept: np.ndarray
    style: np.ndarray
    meta: dict
    captions: CaptionTable
    text: TextCond  # states of captions.strings (fp16 tokens)


def load_arrays(data_dir: str | Path, name: str = "emoji64"):
    d = Path(data_dir)
    z = np.load(d / f"{name}.npz")
    meta = json.loads((d / f"{name}.json").read_text())
    return {k: z[k] for k in ("images", "concept", "style", "split")}, meta


def style_phrase(meta: dict, style: int) -> str:
    st = meta["styles"][int(style)]
    return st.get("phrase") or f"{st['name']} style"


def concept_captions(meta: dict) -> list[list[str]]:
    out = []
    for c in meta["concepts"]:
        caps = [" ".join(x.split()) for x in (c.get("captions") or []) if x and x.strip()]
        out.append(caps or [c["name"].replace("_", " ")])
    return out


# max_plain: captions of a concept a trainer draws from (the dataset orders them most useful
# first: name, aliases, phrases, then keywords); 16 covers the widened lists of all but a few.
def build_captions(
    concept: np.ndarray, style: np.ndarray, meta: dict, max_plain: int = 16, styled_per_image: int = 2,
    seed: int = 0,
) -> CaptionTable:
    rng = np.random.default_rng(seed)
    strings: list[str] = [""]
    index: dict[str, int] = {"": 0}

    def add(s: str) -> int:
        if s not in index:
            index[s] = len(strings)
            strings.append(s)
        return index[s]

    caps_of = concept_captions(meta)
    plain = np.full((len(caps_of), max_plain), -1, np.int64)
    count = np.zeros(len(caps_of), np.int64)
    for ci, caps in enumerate(caps_of):
        ids = [add(s) for s in caps[:max_plain]]
        plain[ci, : len(ids)] = ids
        count[ci] = len(ids)
    styled = np.full((len(concept), styled_per_image), -1, np.int64)
    for i, (ci, si) in enumerate(zip(concept, style)):
        caps = caps_of[int(ci)][:max_plain]
        # the concept's name (caption 0) always gets a styled variant: it is what users type
        others = rng.choice(np.arange(1, len(caps)), size=min(styled_per_image - 1, len(caps) - 1), replace=False)
        picks = [0, *others.tolist()]
        phrase = style_phrase(meta, si)
        for j, p in enumerate(picks):
            styled[i, j] = add(f"{caps[p]}, {phrase}")
    return CaptionTable(strings, plain, count, styled)


def encode_cached(strings: list[str], cache_dir: Path, max_tokens: int) -> TextCond:
    key = hashlib.sha256(("\n".join(strings) + f"|{max_tokens}").encode()).hexdigest()[:16]
    path = cache_dir / f"text_cache_{key}.pt"
    if path.exists():
        d = torch.load(path)
        return TextCond(d["tokens"], d["mask"], d["pooled"])
    tc = TextEncoder(max_tokens).load().encode(strings, batch_size=128)
    d = {"tokens": tc.tokens.half(), "mask": tc.mask.to(torch.uint8), "pooled": tc.pooled.half()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(d, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").rename(path)
    return TextCond(d["tokens"], d["mask"], d["pooled"])


def load_training_data(data_dir: str | Path, name: str, max_tokens: int, max_images: int | None = None) -> EmojiData:
    arrays, meta = load_arrays(data_dir, name)
    keep = arrays["split"] == 0
    images, concept, style = arrays["images"][keep], arrays["concept"][keep], arrays["style"][keep]
    if max_images:
        images, concept, style = images[:max_images], concept[:max_images], style[:max_images]
    table = build_captions(concept, style, meta)
    text = encode_cached(table.strings, Path(data_dir) / "cache", max_tokens)
    return EmojiData(images, concept.astype(np.int64), style.astype(np.int64), meta, table, text)

