"""What this machine offers the process: the CPU cores it may run on."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity (a container's or taskset's limit), not the
    machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
