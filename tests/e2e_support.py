"""Helpers for the end-to-end tests that drive REAL diffusion backends through the official SDK.

- `write_tiny_emoji_weights(dir)`: a random-weight, tiny-config embedded emoji model, written by
  the package's own export path (so the weights folder has exactly the format a trained model
  has) without training it.
- `decode`, `image_bytes`, `mask_bytes`: what the tests send and how they read answers.
- `metric`: one sample value out of a Prometheus text exposition.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

from PIL import Image

EMOJI_MODEL_ID = "tiny-emoji"
SD_MODEL_ID = "tiny-sd"


def write_tiny_emoji_weights(path: Path) -> Path:
    """`path`/config.json + model.safetensors for an untrained `TrainConfig.tiny()` emoji model
    (reused when already there). Goes through a checkpoint + `training.train.export`, the same
    route a trained model's weights take."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    import torch

    from canvasd.backends.emoji.model import build_unet
    from canvasd.training.train import TrainConfig, export

    cfg = TrainConfig.tiny(name="e2e-random")
    torch.manual_seed(0)
    unet = build_unet(cfg.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = path.parent / f"{path.name}-ckpt.pt"
    torch.save({"model": unet.state_dict(), "ema": unet.state_dict(), "step": 0, "train_seconds": 0.0,
                "loss_ema": None, "cfg": cfg.to_dict(), "git_commit": "test", "data_info": {}}, ckpt)
    export(ckpt, path)
    ckpt.unlink()
    return path


def decode(b64_or_bytes: str | bytes) -> Image.Image:
    raw = base64.b64decode(b64_or_bytes) if isinstance(b64_or_bytes, str) else b64_or_bytes
    img = Image.open(io.BytesIO(raw))
    img.load()
    return img


def image_bytes(size: tuple[int, int], colour=(200, 30, 30, 255), fmt: str = "PNG") -> bytes:
    mode = "RGBA" if fmt == "PNG" else "RGB"
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGBA" else colour[:3]).save(buf, fmt)
    return buf.getvalue()


def mask_bytes(size: tuple[int, int]) -> bytes:
    """An RGBA mask whose LEFT half is fully transparent (= repaint) and right half opaque (= keep)."""
    w, h = size
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, w // 2, h))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return buf.getvalue()


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of sample `name{labels}` in a Prometheus exposition (0.0 when absent). Labels
    not given are summed over."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group("name") != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels") or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group("value"))
    return total


def premultiplied(img: Image.Image) -> "np.ndarray":
    """RGBA as premultiplied int16 (what you see: a nearly transparent pixel's colour barely
    counts), RGB as is."""
    import numpy as np

    px = np.asarray(img, dtype=np.float64)
    if px.shape[-1] == 4:
        px = np.concatenate([px[..., :3] * px[..., 3:] / 255.0, px[..., 3:]], axis=-1)
    return np.rint(px).astype(np.int16)


def max_visible_diff(a: Image.Image, b: Image.Image) -> int:
    """Largest per-channel difference between two same-size images, alpha-weighted."""
    import numpy as np

    assert a.size == b.size and a.mode == b.mode
    return int(np.abs(premultiplied(a) - premultiplied(b)).max())
