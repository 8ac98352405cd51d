"""SIGTERM against a real `canvasd serve` process (the embedded model): admission stops at once,
running jobs get `shutdown_timeout_s`, then fail with an OpenAI error (an `error` event in a
stream), and the process exits 0 within its deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from server_process import start_serve

SHUTDOWN_TIMEOUT_S = 3.0
STEP_GRACE_S = 5.0  # canvasd.server.STEP_GRACE_S: a denoising step already running finishes
LONG = {"prompt": "a red apple", "num_inference_steps": 500, "n": 4, "size": "64x64",
        "response_format": "b64_json"}


def start(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, str]:
    return start_serve(tmp_path, **{"CANVASD_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S), **env})


def wait_running(url: str, jobs: int) -> None:
    """Until the engine holds `jobs` jobs (queued or stepping)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stats = httpx.get(f"{url}/ready", timeout=5).json()["engine"]
        if stats["active_jobs"] + stats["waiting_jobs"] >= jobs and stats["active_jobs"] >= 1:
            return
        time.sleep(0.1)
    raise AssertionError(f"engine never held {jobs} jobs: {stats}")


def stop(proc: subprocess.Popen) -> tuple[int, float]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=SHUTDOWN_TIMEOUT_S + STEP_GRACE_S + 30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return code, time.monotonic() - t0


def test_sigterm_cancels_long_jobs_at_the_deadline_and_exits_0(tmp_path):
    proc, url = start(tmp_path)
    results: dict[str, object] = {}

    def plain() -> None:
        r = httpx.post(f"{url}/v1/images/generations", json=LONG, timeout=120)
        results["plain"] = (r.status_code, r.json())

    def streamed() -> None:
        with httpx.stream("POST", f"{url}/v1/images/generations", json={**LONG, "stream": True},
                          timeout=120) as r:
            results["stream"] = (r.status_code, r.read().decode())

    threads = [threading.Thread(target=plain), threading.Thread(target=streamed)]
    try:
        for t in threads:
            t.start()
        wait_running(url, 2)
        code, elapsed = stop(proc)
        print(f"\nSIGTERM with 2 long jobs in flight: exit {code} after {elapsed:.2f}s "
              f"(shutdown_timeout_s={SHUTDOWN_TIMEOUT_S})")
        for t in threads:
            t.join(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0
    assert elapsed < SHUTDOWN_TIMEOUT_S + STEP_GRACE_S + 10  # the deadline holds (not a speed target)
    status, body = results["plain"]
    assert status == 503 and body["error"]["type"] == "server_error" and "shutting down" in body["error"]["message"]
    status, text = results["stream"]
    assert status == 200
    events = [line for line in text.splitlines() if line.startswith("data: ")]
    last = json.loads(events[-1][len("data: "):])
    assert last["type"] == "error" and "shutting down" in last["error"]["message"]
    # admission stopped: the port no longer accepts requests
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)


def test_sigterm_lets_short_jobs_finish(tmp_path):
    proc, url = start(tmp_path, CANVASD_SHUTDOWN_TIMEOUT_S="60")
    result: dict[str, object] = {}

    def short() -> None:
        r = httpx.post(f"{url}/v1/images/generations", timeout=120,
                       json={**LONG, "num_inference_steps": 40, "n": 1})
        result["r"] = (r.status_code, r.json())

    t = threading.Thread(target=short)
    try:
        t.start()
        wait_running(url, 1)
        code, elapsed = stop(proc)
        print(f"\nSIGTERM with a short job in flight: exit {code} after {elapsed:.2f}s")
        t.join(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0
    status, body = result["r"]
    assert status == 200 and body["data"][0]["b64_json"]


def test_idle_server_exits_0_at_once(tmp_path):
    proc, url = start(tmp_path)
    try:
        code, elapsed = stop(proc)
        print(f"\nSIGTERM on an idle server: exit {code} after {elapsed:.2f}s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0
