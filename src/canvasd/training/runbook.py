"""The bookkeeping both trainers (first stage, second stage) share: the optimizer step with gradient
clipping and EMA, the step count and the time budget, the loss log (`loss.csv`, `loss.png`) and
when to checkpoint. What a checkpoint holds and how a batch is made stay with each trainer."""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch

LOG_HEADER = ["step", "loss", "lr", "train_seconds"]


class _Architecture(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class RunConfig:
    """Base of both trainers' config dataclasses: where a run lives and its JSON form (stored in
    the run folder and in every checkpoint), with the nested architecture written as its own dict."""

    name: str
    runs_dir: str
    model: _Architecture

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]  # the subclasses are dataclasses
        d["model"] = self.model.to_dict()
        return d

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


def budget_seconds(dt: float, typical: float | None) -> tuple[float, float]:
    """(seconds of the time budget a step of `dt` s spends, the new running mean step time).
    A step over 10x the mean was paused (kill -STOP, a suspended VM): it counts as a typical step,
    so pausing a run to measure something else does not spend its budget."""
    if typical is None:
        return dt, dt
    if dt > 10 * typical:
        return typical, typical
    return dt, 0.95 * typical + 0.05 * dt


def plot_losses(csv_path: Path, png_path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a training extra
        return
    import numpy as np

    rows = list(csv.reader(csv_path.open()))[1:]
    if not rows:
        return
    steps = np.array([int(r[0]) for r in rows])
    loss = np.array([float(r[1]) for r in rows])
    smooth = np.copy(loss)
    for i in range(1, len(loss)):
        smooth[i] = 0.98 * smooth[i - 1] + 0.02 * loss[i]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, alpha=0.25, lw=0.6, label="loss")
    ax.plot(steps, smooth, lw=1.5, label="EMA(0.98)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


class RunBook:
    """A run's counters and logs. `step`, `train_seconds` and `loss_ema` are what a checkpoint
    saves and `resume` restores."""

    def __init__(self, run_dir: Path, *, log_every: int, ckpt_every_minutes: float):
        self.csv_path = run_dir / "loss.csv"
        self.png_path = run_dir / "loss.png"
        self.log_every = log_every
        self.ckpt_every_s = ckpt_every_minutes * 60
        self.step = 0
        self.train_seconds = 0.0
        self.loss_ema: float | None = None
        self._typical: float | None = None  # running mean of a step's time
        self._rows: list[list] = []
        self._last_ckpt = time.monotonic()
        self._bar = None

    def resume(self, step: int, train_seconds: float, loss_ema: float | None) -> None:
        """Continue from a checkpoint: the log loses the rows written after it."""
        self.step, self.train_seconds, self.loss_ema = step, train_seconds, loss_ema
        if self.csv_path.exists():
            rows = [r for r in csv.reader(self.csv_path.open())][1:]
            with self.csv_path.open("w", newline="") as f:
                csv.writer(f).writerows([LOG_HEADER, *[r for r in rows if int(r[0]) <= step]])

    def start(self, total_steps: int | None, progress_bar: bool) -> None:
        from tqdm import tqdm

        if not self.csv_path.exists():
            self.csv_path.write_text(",".join(LOG_HEADER) + "\n")
        self._bar = tqdm(total=total_steps, initial=self.step, disable=not progress_bar, mininterval=20,
                         dynamic_ncols=False, file=sys.stdout)

    @staticmethod
    def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, params: list[torch.Tensor],
                       ema_params: list[torch.Tensor], grad_clip: float, ema_decay: float, step: int) -> None:
        """Backward, clip, step, then move the EMA towards the weights (its decay warms up, so
        early EMA weights are not the random start)."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)

    def record(self, started: float, loss: float, lr: float, **postfix: str) -> bool:
        """Count a finished step (begun at perf_counter `started`); True when a checkpoint is due."""
        self.step += 1
        counted, self._typical = budget_seconds(time.perf_counter() - started, self._typical)
        self.train_seconds += counted
        self.loss_ema = loss if self.loss_ema is None else 0.99 * self.loss_ema + 0.01 * loss
        self._rows.append([self.step, f"{loss:.5f}", f"{lr:.3e}", f"{self.train_seconds:.1f}"])
        self._bar.update(1)
        if self.step % self.log_every == 0:
            self._bar.set_postfix(loss=f"{self.loss_ema:.4f}", lr=f"{lr:.2e}", **postfix, refresh=False)
            self.flush()
        if time.monotonic() - self._last_ckpt >= self.ckpt_every_s:
            self._last_ckpt = time.monotonic()
            return True
        return False

    def flush(self) -> None:
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerows(self._rows)
        self._rows.clear()

    def checkpointed(self) -> None:
        """After a checkpoint: the log is on disk and its plot redrawn."""
        self.flush()
        plot_losses(self.csv_path, self.png_path)

    def close(self) -> None:
        self._bar.close()
        self.flush()
