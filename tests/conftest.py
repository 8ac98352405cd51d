"""Shared fixtures: a real uvicorn server on a loopback port, and THE backend the API tests use.

`api_backend_factory` is the one place that decides which model backs the API tests (a torch-free
fake drawing seed-dependent shapes with real alpha). Switch it to the embedded model when its
tiny-weights fixture exists; the tests only assume a stepwise, alpha-native, inpainting backend.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
from api_support import API_MODEL_ID, ShapeBackend

from canvasd.settings import ModelSettings, Settings
from canvasd.engine.client import EngineClient
from canvasd.backends.registry import ModelRegistry


@pytest.fixture(scope="session")
def api_backend_factory() -> Callable[..., Any]:
    """Builds the backend for API tests (one place to switch to the real embedded model)."""
    return ShapeBackend


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    # torch_threads=1: the test models are tiny, and on a busy 2-core machine two OpenMP threads
    # spin against the other processes and can be dramatically slower than one (up to ~50x); one
    # thread per engine keeps the live-server tests quick and their timing stable.
    s = Settings(models=[ModelSettings(id=API_MODEL_ID, backend="emoji")], image_dir=tmp / "images", url_secret="test-secret",
                 torch_threads=1)
    for k, v in overrides.items():
        setattr(s, k, v)
    return s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    settings: Settings
    registry: ModelRegistry
    backend: Any
    engine: Any
    _server: Any = field(repr=False, default=None)
    _thread: threading.Thread | None = field(repr=False, default=None)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)


def start_server(settings: Settings, registry: ModelRegistry, engine: EngineClient | None = None,
                 backend: Any = None, wait_ready: bool = True) -> LiveServer:
    import uvicorn

    from canvasd.api.app import create_app
    from canvasd.server import uvicorn_config

    app = create_app(settings, registry, engine)
    port = _free_port()
    # the protocol, timeouts and proxy policy `canvasd serve` runs with (canvasd.server)
    config = uvicorn_config(app, settings, log_level="warning", host="127.0.0.1", port=port,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.started and not wait_ready:
            break
        if server.started:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
        time.sleep(0.02)
    else:
        server.should_exit = True
        raise RuntimeError("live server did not become ready")
    return LiveServer(url, settings, registry, backend, app.state.service.engine, server, thread)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory,
                api_backend_factory: Callable[..., Any]) -> Iterator[Callable[..., LiveServer]]:
    """Factory: ``live_server(backend=None, engine=None, registry=None, wait_ready=True,
    **settings_overrides)`` starts uvicorn on a free loopback port, waits for /ready (unless
    wait_ready=False) and returns a LiveServer
    (``.url`` is the base URL without /v1). Servers stop at the end of the module."""
    started: list[LiveServer] = []

    def start(backend: Any = None, engine: EngineClient | None = None, registry: ModelRegistry | None = None,
              wait_ready: bool = True, **overrides: Any) -> LiveServer:
        settings = make_settings(tmp_path_factory.mktemp("canvasd"), **overrides)
        if registry is None:
            backend = backend if backend is not None else api_backend_factory()
            registry = ModelRegistry(settings, {backend.id: backend})
            settings.models = [ModelSettings(id=backend.id, backend="emoji")]
        server = start_server(settings, registry, engine, backend, wait_ready)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.gpu` tests need CUDA: skipped (with the reason) where torch sees none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (scripts/gpu-check.sh runs the gpu-marked tests)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
