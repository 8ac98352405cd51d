"""Models on demand: preload, load on first request (requests wait, never refused), LRU unloading
under a per-device budget (after the victim's running jobs), failed loads, and what /v1/models and
/ready say. The registry and engine are the real ones; the backends are torch-free fakes that
count their loads and unloads."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import httpx
import openai
import pytest
from api_support import ShapeBackend
from canvasd.testing.fakes import FakeBackend, seed_colour

from canvasd.backends import registry as registry_mod
from canvasd.backends.memory import estimate_weight_bytes, parse_bytes
from canvasd.backends.registry import ModelRegistry
from canvasd.contracts import Job
from canvasd.engine.events import ModelUnavailable
from canvasd.engine.scheduler import Engine
from canvasd.settings import ModelSettings, Settings


class Lifecycle:
    """Mixin: records loads/unloads into a shared journal; `gate` holds a load until set;
    `fail` makes the load raise; `size` is what `memory_bytes()` reports."""

    def setup(self, journal: list[str], device: str = "cpu", size: int = 100,
              fail: bool = False, gate: threading.Event | None = None) -> None:
        self.journal, self.device, self.size, self.fail, self.gate = journal, device, size, fail, gate
        self.dtype = "fp32"
        self.loaded = False

    def load(self) -> None:
        if self.gate is not None:
            assert self.gate.wait(10), "load gate never opened"
        if self.fail:
            raise RuntimeError(f"weights of {self.id} are corrupt")
        self.journal.append(f"load {self.id}")
        self.loaded = True

    def unload(self) -> None:
        self.journal.append(f"unload {self.id}")
        self.loaded = False

    def memory_bytes(self) -> int:
        return self.size

    def step(self, samples) -> None:
        assert self.loaded, f"{self.id} stepped while unloaded"
        super().step(samples)


class Model(Lifecycle, FakeBackend):
    def __init__(self, id: str, journal: list[str], **kw):
        FakeBackend.__init__(self, id)
        self.setup(journal, **kw)


class ShapeModel(Lifecycle, ShapeBackend):
    def __init__(self, id: str, journal: list[str], **kw):
        ShapeBackend.__init__(self, id)
        self.setup(journal, **kw)


def make_registry(backends, **settings) -> ModelRegistry:
    s = Settings(models=[ModelSettings(id=b.id, backend="emoji") for b in backends])
    for key, value in settings.items():
        setattr(s, key, value)
    return ModelRegistry(s, {b.id: b for b in backends})


def job(model: str, *, seed: int = 0, steps: int = 3, n: int = 1) -> Job:
    return Job(kind="generate", model=model, prompt="p", n=n, steps=steps, seed=seed, width=64,
               height=64)


@pytest.fixture
def engine_on():
    engines: list[Engine] = []

    def make(registry: ModelRegistry) -> Engine:
        engine = Engine(registry.backends, registry.settings, models=registry)
        engines.append(engine)
        engine.start()
        return engine

    yield make
    for engine in engines:
        engine.shutdown(timeout_s=5)


async def colour_of(handle) -> tuple[int, int, int]:
    return (await handle.result())[0].getpixel((0, 0))[:3]


# ----------------------------------------------------------------------------- preload ------
def test_only_the_first_model_preloads_by_default_and_preload_can_be_set():
    journal: list[str] = []
    a, b, c = Model("a", journal), Model("b", journal), Model("c", journal)
    reg = make_registry([a, b, c])
    assert reg.preload_ids == ["a"]
    settings = Settings(models=[ModelSettings(id="a", backend="emoji"), ModelSettings(id="b", backend="emoji"),
                                ModelSettings(id="c", backend="emoji", preload=True)])
    reg = ModelRegistry(settings, {m.id: m for m in (a, b, c)})
    assert reg.preload_ids == ["a", "c"] and not reg.ready
    reg.preload()
    assert journal == ["load a", "load c"]
    assert [reg.state(m) for m in "abc"] == ["loaded", "unloaded", "loaded"]
    assert reg.ready  # the preloaded ones are loaded; b loads on its first request


async def test_request_for_an_unloaded_model_loads_it_and_waits(engine_on):
    journal: list[str] = []
    gate = threading.Event()
    reg = make_registry([Model("a", journal), Model("b", journal, gate=gate)])
    reg.preload()
    engine = engine_on(reg)
    waiting = [engine.submit(job("b", seed=s)) for s in (1, 2, 3)]  # all while b loads
    served = engine.submit(job("a", seed=9))  # a is loaded: not held up by b's load
    assert await colour_of(served) == seed_colour(9)
    assert _wait(lambda: reg.state("b") == "loading") and not any(h.done for h in waiting)
    gate.set()
    assert [await colour_of(h) for h in waiting] == [seed_colour(s) for s in (1, 2, 3)]
    assert journal == ["load a", "load b"]  # one load for the three requests


# ----------------------------------------------------------------------------- budget -------
async def test_count_budget_unloads_the_least_recently_used_idle_model(engine_on):
    journal: list[str] = []
    models = [Model(m, journal) for m in "abc"]
    reg = make_registry(models, max_loaded_models=2)
    reg.preload()
    engine = engine_on(reg)
    await colour_of(engine.submit(job("b")))
    await colour_of(engine.submit(job("a")))  # a is now more recently used than b
    await colour_of(engine.submit(job("c")))
    assert journal == ["load a", "load b", "unload b", "load c"]
    assert {m: reg.state(m) for m in "abc"} == {"a": "loaded", "b": "unloaded", "c": "loaded"}
    await colour_of(engine.submit(job("b", seed=4)))  # back again: a is now the LRU
    assert journal[-2:] == ["unload a", "load b"]


async def test_budget_is_per_device():
    journal: list[str] = []
    reg = make_registry([Model("a", journal, device="cuda:0"), Model("b", journal, device="cuda:1"),
                         Model("c", journal, device="cuda:0")], max_loaded_models=1)
    for m in "abc":
        reg.acquire(m).release()
        await asyncio.to_thread(lambda: _wait(lambda: reg.state(m) == "loaded"))
    assert journal == ["load a", "load b", "unload a", "load c"]


def weights(folder, nbytes: int):
    """A weights folder whose safetensors hold `nbytes` of fp32: what the budget estimates a
    model by before its first load."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({"w": torch.zeros(nbytes // 4)}, folder / "model.safetensors")
    return folder


async def test_memory_budget_in_bytes(engine_on, tmp_path):
    journal: list[str] = []
    models = [Model(m, journal, size=size) for m, size in (("a", 600), ("b", 300), ("c", 300))]
    for m in models:
        m.path = weights(tmp_path / m.id, m.size)
    reg = make_registry(models, device_memory_budget="1KB")  # 1000 bytes
    assert reg.memory_budget == 1000
    reg.preload()
    engine = engine_on(reg)
    await colour_of(engine.submit(job("b")))  # 600 + 300 fit
    assert journal == ["load a", "load b"]
    await colour_of(engine.submit(job("c")))  # 900 + 300 do not: a is the least recently used
    assert journal[-2:] == ["unload a", "load c"]
    assert reg.describe("c")["memory_bytes"] == 300


async def test_the_victim_unloads_only_after_its_running_jobs_finish(engine_on):
    journal: list[str] = []
    a, b = Model("a", journal), Model("b", journal)
    reg = make_registry([a, b], max_loaded_models=1)
    reg.preload()
    engine = engine_on(reg)
    a.pause_at(2)
    running = engine.submit(job("a", seed=5, steps=4))
    assert await asyncio.to_thread(a.paused.wait, 10)
    wants_b = engine.submit(job("b", seed=6))
    await asyncio.sleep(0.3)
    assert reg.state("a") == "loaded" and journal == ["load a"]  # a's job is inside a step
    late_a = engine.submit(job("a", seed=7))  # a is draining: this one waits for a's reload
    a.resume()
    assert await colour_of(running) == seed_colour(5)
    assert await colour_of(wants_b) == seed_colour(6)
    assert await colour_of(late_a) == seed_colour(7)
    assert journal == ["load a", "unload a", "load b", "unload b", "load a"]


# ----------------------------------------------------------------------------- failures -----
async def test_failed_load_fails_its_requests_and_others_keep_serving(engine_on):
    journal: list[str] = []
    reg = make_registry([Model("a", journal), Model("bad", journal, fail=True)])
    reg.preload()
    engine = engine_on(reg)
    handle = engine.submit(job("bad"))
    with pytest.raises(ModelUnavailable, match="'bad' could not be loaded.*corrupt"):
        await handle.result()
    assert reg.state("bad") == "failed" and reg.ready
    with pytest.raises(ModelUnavailable):  # later requests get the same error at once
        engine.submit(job("bad"))
    assert await colour_of(engine.submit(job("a", seed=3))) == seed_colour(3)


def test_load_progress_is_logged(caplog, monkeypatch):
    monkeypatch.setattr(registry_mod, "PROGRESS_EVERY_S", 0.05)
    gate = threading.Event()
    reg = make_registry([Model("slow", [], gate=gate)])
    threading.Timer(0.3, gate.set).start()
    with caplog.at_level(logging.INFO, logger="canvasd.registry"):
        reg.preload()
    lines = [r.getMessage() for r in caplog.records if r.name == "canvasd.registry"]
    assert lines[0] == "loading model slow on cpu in fp32 (preloaded)"
    assert any(line.startswith("still loading model slow (") for line in lines)
    assert lines[-1].startswith("loaded model slow on cpu in ") and "(measured " in lines[-1]


# ----------------------------------------------------------------------------- over HTTP ----
def test_models_endpoint_ready_and_errors_over_http(live_server):
    journal: list[str] = []
    specs = [ModelSettings(id="main", backend="emoji"), ModelSettings(id="extra", backend="emoji"), ModelSettings(id="broken", backend="emoji")]
    backends = [ShapeModel("main", journal), ShapeModel("extra", journal),
                ShapeModel("broken", journal, fail=True)]
    reg = ModelRegistry(Settings(models=specs), {b.id: b for b in backends})
    srv = live_server(registry=reg, models=specs)
    listed = {m["id"]: m for m in httpx.get(f"{srv.url}/v1/models").json()["data"]}
    assert {k: (listed[k]["state"], listed[k]["device"], listed[k]["dtype"]) for k in ("main", "extra", "broken")} == {
        "main": ("loaded", "cpu", "fp32"), "extra": ("unloaded", "cpu", "fp32"),
        "broken": ("unloaded", "cpu", "fp32")}
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    # On demand, through the official SDK: the request waits for the load and gets its image.
    result = client.images.generate(model="extra", prompt="a cat", size="64x64")
    assert result.data[0].b64_json
    assert client.models.retrieve("extra").model_extra["state"] == "loaded"
    with pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model="broken", prompt="a cat", size="64x64")
    assert info.value.status_code == 503
    body = info.value.body
    assert body["type"] == "server_error" and "'broken' could not be loaded" in body["message"]
    assert "corrupt" in body["message"]
    ready = httpx.get(f"{srv.url}/ready")
    assert ready.status_code == 200  # the others serve
    assert ready.json()["states"] == {"main": "loaded", "extra": "loaded", "broken": "failed"}
    assert "corrupt" in ready.json()["failed"]["broken"]
    assert client.images.generate(model="main", prompt="a dog", size="64x64").data[0].b64_json


def test_ready_is_503_when_no_model_can_serve(live_server):
    specs = [ModelSettings(id="only", backend="emoji")]
    reg = ModelRegistry(Settings(models=specs), {"only": ShapeModel("only", [], fail=True)})
    srv = live_server(registry=reg, models=specs, wait_ready=False)
    assert _wait(lambda: reg.state("only") == "failed")
    r = httpx.get(f"{srv.url}/ready")
    assert r.status_code == 503 and "corrupt" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------- sizes --------
def test_parse_bytes():
    assert parse_bytes("24GiB") == 24 * 2**30
    assert parse_bytes("16 GB") == 16 * 10**9
    assert parse_bytes(12345) == 12345 and parse_bytes("1.5e3") == 1500
    with pytest.raises(ValueError, match="not a memory size"):
        parse_bytes("lots")


def test_weight_estimate_reads_safetensors_headers_at_the_run_dtype(tmp_path):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "unet").mkdir()
    save_file({"w": torch.zeros(100, 10), "b": torch.zeros(10)}, tmp_path / "unet" / "m.safetensors")
    save_file({"ids": torch.zeros(50, dtype=torch.int64)}, tmp_path / "other.safetensors")
    assert estimate_weight_bytes(tmp_path) == 1010 * 4 + 50 * 8
    assert estimate_weight_bytes(tmp_path, "fp16") == 1010 * 2 + 50 * 8  # integers keep their size
    assert estimate_weight_bytes(tmp_path / "nothing-here") is None


def _wait(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


# ----------------------------------------------------------------------------- on a GPU -----
@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_sizes_are_measured_and_the_budget_unloads(tmp_path_factory):
    import torch
    from tiny_pipelines import build_tiny_sd_pipeline

    from canvasd.backends.diffusers import DiffusersBackend

    path = build_tiny_sd_pipeline(tmp_path_factory.mktemp("sd"))
    a, b = DiffusersBackend("a", str(path), device="cuda"), DiffusersBackend("b", str(path), device="cuda")
    settings = Settings(models=[ModelSettings(id=m, backend="emoji") for m in "ab"], max_loaded_models=1)
    reg = ModelRegistry(settings, {"a": a, "b": b})
    reg.preload()
    size = reg.describe("a")["memory_bytes"]
    assert size > 0 and reg.describe("a")["device"] == "cuda:0"
    with_a = torch.cuda.memory_allocated()
    reg.acquire("b").release()
    assert _wait(lambda: reg.state("b") == "loaded")
    assert reg.state("a") == "unloaded" and not a.loaded
    assert torch.cuda.memory_allocated() <= with_a + size // 10  # a's weights went, b's came
