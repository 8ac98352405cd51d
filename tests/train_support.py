"""Test helpers for the training code: a tiny dataset in the real format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_synthetic_dataset(out_dir: str | Path, name: str = "emoji64", n_concepts: int = 4, n_styles: int = 2,
                           seed: int = 0, size: int = 64) -> Path:
    """A tiny dataset in the real format (`canvasd.training.trainset`): coloured discs/squares on
    transparency, `size` px (shapes scale with it)."""
    rng = np.random.default_rng(seed)
    colours = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (240, 200, 20), (150, 50, 200), (20, 200, 200)]
    k = size / 64
    yy, xx = np.mgrid[0:size, 0:size] / k
    images, concept, style, split, concepts = [], [], [], [], []
    for c in range(n_concepts):
        col, shape = colours[c % len(colours)], ("disc", "square")[c % 2]
        concepts.append({"id": f"c{c}", "name": f"shape_{c}", "captions": [f"{shape} number {c}", f"a {shape} {c}"]})
        for s in range(n_styles):
            r = 20 + 4 * s
            inside = ((xx - 32) ** 2 + (yy - 32) ** 2 < r * r) if shape == "disc" else ((abs(xx - 32) < r) & (abs(yy - 32) < r))
            img = np.zeros((size, size, 4), np.uint8)
            img[inside, :3] = np.clip(np.array(col) + rng.integers(-10, 10, 3), 0, 255)
            img[inside, 3] = 255
            if size > 64:  # detail a 64 px image cannot hold: a 2 px dark line across the shape
                img[inside & (np.abs(yy * k - size / 2) < 1), :3] = 20
            images.append(img)
            concept.append(c)
            style.append(s)
            split.append(1 if (c == 0 and s == n_styles - 1) else 0)
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        d / f"{name}.npz", images=np.stack(images), concept=np.array(concept, np.int32),
        style=np.array(style, np.int32), split=np.array(split, np.uint8),
    )
    styles = [{"name": f"style{s}", "phrase": f"style{s} style"} for s in range(n_styles)]
    (d / f"{name}.json").write_text(json.dumps({"concepts": concepts, "styles": styles}))
    return d
