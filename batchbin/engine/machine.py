"""What this machine is: its CPU (model and flags), the cores this process may use, its memory,
a GPU if vLLM's CUDA build sees one, and the tcmalloc / Intel OpenMP libraries found for the
engine. Facts only; what BatchBin makes of them is batchbin/engine/settings.py.

    from batchbin.engine.machine import detect_machine
    detect_machine().has_bf16
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from batchbin.engine.preload import all_loaded, find_preload_libs


@dataclass(frozen=True)
class MachineInfo:
    cpu_model: str
    cpu_flags: frozenset[str]
    cores: tuple[int, ...]          # cores this process may run on
    mem_total_gib: float
    gpu: str | None = None          # GPU name when vLLM's CUDA build sees one
    mem_available_gib: float | None = None  # free for new allocations (MemAvailable)
    preload_libs: tuple[str, ...] = ()      # tcmalloc / Intel OpenMP libraries found on this machine
    preload_loaded: bool = False            # ... and already in this process (LD_PRELOAD at its start)

    @property
    def has_bf16(self) -> bool:
        return bool({"avx512_bf16", "amx_bf16"} & self.cpu_flags)


def read_cpu_flags() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or "unknown CPU", frozenset()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("unknown CPU", platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


def read_meminfo_gib() -> dict[str, float]:
    """/proc/meminfo in GiB (MemTotal, MemAvailable, ...); empty where there is none."""
    values = {}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    values[key] = int(rest.split()[0]) / 1024**2
    except OSError:
        pass
    return values


def detect_gpu() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        return None
    return None


def _allowed_cores() -> tuple[int, ...]:
    return tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else tuple(range(os.cpu_count() or 1))


# Read when this module is imported, before any engine: an engine running in this process pins
# this thread to one core, after which the thread's own affinity no longer shows the machine's.
_CORES = _allowed_cores()


def detect_machine() -> MachineInfo:
    model, flags = read_cpu_flags()
    memory = read_meminfo_gib()
    gpu = detect_gpu()
    libs = () if gpu else find_preload_libs()
    return MachineInfo(model, flags, _CORES, memory.get("MemTotal", 8.0), gpu, memory.get("MemAvailable"),
                       libs, all_loaded(libs))
