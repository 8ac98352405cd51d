"""A real `canvasd serve` child process on a free loopback port (the embedded model), for the
tests that need real signals or a process to measure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(tmp_path: Path, *args: str, **env_settings: str) -> tuple[subprocess.Popen, str]:
    """Start `canvasd serve` (settings as CANVASD_* variables) and wait for /ready."""
    port = _free_port()
    env = {**os.environ, "CANVASD_IMAGE_DIR": str(tmp_path / "images"), **env_settings}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from canvasd.cli import main; main()", "serve", "--port", str(port),
         "--torch-threads", "1", "--log-level", "warning", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read().decode(errors="replace"))
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("canvasd serve did not become ready")
