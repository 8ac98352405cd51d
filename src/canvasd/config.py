"""Settings from the environment (CANVASD_*), an optional TOML file and CLI flags.

One `Settings` object is built at startup and handed to the app factory; nothing reads the
environment after that.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from canvasd.backends.precision import Precision, check_precision

# OpenAI model names accepted as aliases. By default each maps to the default (first) local model;
# `[aliases]` in the config file or `--alias gpt-image-1=mymodel` maps them elsewhere.
OPENAI_ALIASES = (
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
    "gpt-image-2.5-sunburst",
    "gpt-image-2.5-sunburst-2026-09-08",
    "gpt-image-2.5-flare",
    "gpt-image-2.5-flare-2026-09-08",
    "gpt-image-2.6-sunburst",
    "gpt-image-2.6-flare",
    "chatgpt-image-latest",
    "dall-e-2",
    "dall-e-3",
)

EMBEDDED_MODEL_ID = "canvasd-emoji"


@dataclass
class ModelSpec:
    id: str
    backend: Literal["emoji", "diffusers"]
    path: str | None = None  # diffusers: pipeline folder; emoji: weights folder (None = packaged)


@dataclass
class Settings:
    models: list[ModelSpec] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)  # OpenAI name -> local id (overrides)
    api_keys: list[str] = field(default_factory=list)
    compat: Literal["permissive", "strict"] = "permissive"
    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str | None = None  # e.g. https://img.example.com/prefix ; else from request
    url_ttl_s: int = 3600
    image_dir: Path = field(default_factory=lambda: Path(".canvasd/images"))
    url_secret: str | None = None  # HMAC key for signed urls; random per process when unset
    max_queue: int = 64  # images waiting; beyond -> 429
    max_batch: int = 8  # samples per denoising step
    batching: bool = True  # False: one job at a time (the peers' design), for `bench`
    request_timeout_s: float = 600.0
    torch_threads: int | None = None  # None: all cores
    # Denoiser precision: "auto" = bf16 autocast where the CPU has native bf16 kernels, else fp32
    # (canvasd.backends.precision).
    precision: Precision = "auto"
    # Threads fitting/encoding finished images at once. Each one takes a core from the engine's
    # torch threads, so few: None = half the cores (1 on a 2-core machine).
    render_threads: int | None = None
    max_upload_bytes: int = 50 * 1024 * 1024
    max_upload_pixels: int = 4096 * 4096  # decompression-bomb guard

    @property
    def default_model(self) -> str:
        return self.models[0].id

    def resolve_alias(self, name: str) -> str | None:
        """Local model id for a request's `model`, or None when unknown."""
        if any(m.id == name for m in self.models):
            return name
        if name in self.aliases:
            return self.aliases[name]
        if name in OPENAI_ALIASES and self.models:
            return self.default_model
        return None


def _env_list(name: str) -> list[str]:
    raw = os.environ.get(name, "")
    return [x.strip() for x in raw.split(",") if x.strip()]


def load_settings(config_file: str | Path | None = None, **overrides) -> Settings:
    """Defaults < TOML file (CANVASD_CONFIG or argument) < environment < explicit overrides."""
    s = Settings()
    path = config_file or os.environ.get("CANVASD_CONFIG")
    if path:
        data = tomllib.loads(Path(path).read_text())
        for m in data.pop("models", []):
            s.models.append(ModelSpec(**m))
        s.aliases.update(data.pop("aliases", {}))
        for key, value in data.items():
            if not hasattr(s, key):
                raise ValueError(f"{path}: unknown setting {key!r}")
            setattr(s, key, Path(value) if key == "image_dir" else value)
    env = os.environ
    if keys := _env_list("CANVASD_API_KEYS"):
        s.api_keys = keys
    for key, conv in (
        ("compat", str), ("host", str), ("port", int), ("public_base_url", str),
        ("url_ttl_s", int), ("url_secret", str), ("max_queue", int), ("max_batch", int),
        ("request_timeout_s", float), ("torch_threads", int), ("render_threads", int),
        ("precision", str),
        ("image_dir", Path),
    ):
        if (v := env.get("CANVASD_" + key.upper())) is not None:
            setattr(s, key, conv(v))
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "models":
            s.models = list(value) + s.models
        elif key == "aliases":
            s.aliases.update(value)
        else:
            setattr(s, key, value)
    check_precision(s.precision)
    if s.compat not in ("permissive", "strict"):
        raise ValueError(f"compat must be 'permissive' or 'strict', not {s.compat!r}")
    return s
