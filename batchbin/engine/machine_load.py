"""How busy other processes keep this machine's cores while BatchBin measures something.

    with cores_busy_elsewhere(result):   # result["cores_busy_elsewhere"]: cores, on average
        ...

A shared machine's other work slows a measured run down, and a step-cost fit made on slowed
steps estimates too long; `batchbin doctor --calibrate` and `batchbin bench --validate-plan`
say how many cores other processes kept busy while they ran. Linux only (/proc); None elsewhere.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def cpu_seconds_by_process() -> dict[int, tuple[int, float]]:
    """Every process's parent and CPU seconds so far (user + system, and of its children that
    ended, pid -1 - pid), from /proc; empty elsewhere."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    seen = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        seen[pid] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        seen[-1 - pid] = (pid, (int(fields[13]) + int(fields[14])) / tick)
    return seen


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has been busy (not idle or waiting), from /proc/stat."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    return (sum(values[:8]) - values[3] - values[4]) / tick  # less idle and iowait


@contextmanager
def cores_busy_elsewhere(result: dict) -> Iterator[None]:
    """Set result["cores_busy_elsewhere"]: the cores other processes (not this one or its
    children) kept busy on average during the block: the machine's busy time less this
    process tree's, short-lived processes included. A shared machine's other work slows a
    measured run down; the estimate assumes a quiet machine."""
    before, busy_before, started = cpu_seconds_by_process(), machine_busy_seconds(), time.perf_counter()
    yield
    after, busy, wall = cpu_seconds_by_process(), machine_busy_seconds() - busy_before, time.perf_counter() - started
    ours = {os.getpid()}
    for _ in range(8):  # descendants, a few generations deep
        ours |= {pid for pid, (parent, _) in after.items() if parent in ours and pid > 0}
    mine = sum(cpu - before.get(pid, (0, 0.0))[1] for pid, (_, cpu) in after.items()
               if pid in ours or (pid < 0 and -1 - pid in ours))
    result["cores_busy_elsewhere"] = round(max(0.0, busy - mine) / wall, 2) if wall > 0 and after else None
