"""What a bench run measures: its configuration, the request plan every scenario sends, and the
model under test (the embedded model, a local folder, or the simulated `fake`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from canvasd.backends.base import Backend
from canvasd.settings import EMBEDDED_MODEL_ID, ModelSettings, Settings, model_from_arg

SCENARIOS = ("engine", "http", "http-serial")
SCENARIO_LABELS = {
    "engine": "(a) engine, no HTTP",
    "http": "(b) HTTP, batching",
    "http-serial": "(c) HTTP, serial",
}
PROMPTS = (
    "a red apple", "a smiling cat face", "a blue car", "a slice of pizza", "a rocket",
    "a green frog", "a yellow star", "a birthday cake", "a sleeping dog", "a sunflower",
)
MIXED_SIZES = ("1024x1024", "1536x1024", "1024x1536")
MIXED_QUALITIES = ("low", "medium", "high")
FAKE_MODEL = "fake"
LOOPBACK = "127.0.0.1"
BENCH_KEY = "canvasd-bench-key"  # the servers the bench starts accept only this key


@dataclass
class BenchConfig:
    model: str | None = None  # None: the embedded model; "name=/path": a local folder; "fake"
    scenarios: tuple[str, ...] = SCENARIOS
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    requests: int | None = None  # per level and round; None: max(8, 3 x concurrency)
    rounds: int = 1  # times each level is measured per scenario (interleaved), pooled
    stream: str = "both"  # off | on | both
    partial_images: int = 2  # streamed runs
    size: str = "1024x1024"
    quality: str = "low"
    mixed: bool = False  # cycle sizes x qualities instead of one size/quality
    client_model: str = "gpt-image-1"  # the `model` the SDK sends (an alias of the bench model)
    max_batch: int | None = None  # None: Settings' default
    threads: int | None = None  # torch threads; None: all cores
    precision: str = "auto"  # the denoiser's: auto | fp32 | bf16 (Settings.precision)
    device: str | None = None  # the model's device (auto | cpu | cuda | cuda:N | mps | xpu); None: its default
    dtype: str | None = None  # the model's dtype (auto | bf16 | fp16 | fp32); None: its default
    mfu: bool = True  # count the denoiser's FLOPs and time the device's matmul peak (bench/mfu.py)
    level_timeout_s: float = 300.0  # a level stops sending after this long
    ready_timeout_s: float = 600.0  # server start + model load
    app_factory: str = "canvasd.api.app:create_app"  # module:function(settings, ...) -> ASGI app
    out_dir: Path = Path("benchmarks/results")
    quick: bool = False  # concurrency 1,4 and max(4, 2 x concurrency) requests per level
    progress: bool = True

    def effective(self) -> "BenchConfig":
        cfg = self
        if cfg.quick:
            cfg = replace(cfg, concurrency=(1, 4))
        unknown = set(cfg.scenarios) - set(SCENARIOS)
        if unknown:
            raise ValueError(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
        if cfg.stream not in ("off", "on", "both"):
            raise ValueError("stream must be off, on or both")
        if cfg.rounds < 1:
            raise ValueError("rounds must be at least 1")
        return cfg

    def requests_at(self, c: int) -> int:
        if self.requests:
            base = self.requests
        else:
            base = max(4, 2 * c) if self.quick else max(8, 3 * c)
        return max(base, c)  # every client sends at least one request

    def stream_modes(self) -> list[bool]:
        return {"off": [False], "on": [True], "both": [False, True]}[self.stream]


@dataclass
class RequestSpec:
    index: int
    prompt: str
    size: str
    quality: str
    seed: int


def request_plan(cfg: BenchConfig, count: int) -> list[RequestSpec]:
    plan = []
    for i in range(count):
        if cfg.mixed:
            size, quality = MIXED_SIZES[i % 3], MIXED_QUALITIES[(i // 3) % 3]
        else:
            size, quality = cfg.size, cfg.quality
        plan.append(RequestSpec(i, PROMPTS[i % len(PROMPTS)], size, quality, seed=1000 + i))
    return plan


def request_body(spec: RequestSpec, cfg: BenchConfig, stream: bool) -> dict[str, Any]:
    """The JSON body the SDK sends for this request (the same in every scenario)."""
    body: dict[str, Any] = dict(model=cfg.client_model, prompt=spec.prompt, size=spec.size,
                                quality=spec.quality, n=1)
    if stream:
        body.update(stream=True, partial_images=cfg.partial_images)
    return body


def model_spec(model: str | None, device: str | None = None, dtype: str | None = None) -> ModelSettings:
    if model in (None, ""):
        spec = ModelSettings(id=EMBEDDED_MODEL_ID, backend="emoji")
    elif model == FAKE_MODEL:
        return ModelSettings(id=FAKE_MODEL, backend="emoji")  # the id selects `fake_backend`
    else:
        spec = model_from_arg(model)
    for key, value in (("device", device), ("dtype", dtype)):
        if value is not None:
            setattr(spec, key, value)  # the model's own setting (validated), as `--model name=path,device=...`
    return spec


def is_fake(spec: ModelSettings) -> bool:
    return spec.id == FAKE_MODEL


def fake_backend() -> Backend:
    """CPU-like cost shape (measured for small UNets: ~15 ms at batch 1, ~40 ms at batch 8)."""
    from canvasd.testing.fakes import FakeBackend

    return FakeBackend(FAKE_MODEL, step_s=0.012, per_sample_s=0.0035)


def build_backends(spec: ModelSettings, precision: str = "auto") -> dict[str, Backend]:
    if is_fake(spec):
        return {spec.id: fake_backend()}
    from canvasd.registry import build_backend

    return {spec.id: build_backend(spec, precision)}


def scenario_settings(cfg: BenchConfig, spec: ModelSettings, batching: bool, image_dir: str) -> Settings:
    max_c = max(cfg.concurrency)
    s = Settings(models=[spec], batching=batching, torch_threads=cfg.threads, precision=cfg.precision,
                 max_queue=max(64, 4 * max_c), image_dir=Path(image_dir), api_keys=[BENCH_KEY])
    if cfg.max_batch:
        s.max_batch = cfg.max_batch
    return s
