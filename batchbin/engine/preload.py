"""tcmalloc and Intel OpenMP for vLLM's CPU engine: where they are, whether this process has
them, and how the `batchbin` command restarts itself with them.

vLLM advises preloading both into the process that runs the model. A library in LD_PRELOAD
only reaches a process when it starts, so there are two ways to have it:
- the engine core in a new process (vLLM's default), spawned with LD_PRELOAD set;
- the engine core in this process, which then must have started with it: the `batchbin`
  command restarts itself once with LD_PRELOAD set (`restart_with_preload`).
The second is the one whose greedy outputs repeat run to run (docs/engine-settings.md).
"""

from __future__ import annotations

import glob
import os
import platform
import sys
from functools import lru_cache

# set in the restarted process, so that it never restarts again
RESTARTED_FLAG = "BATCHBIN_PRELOAD_RESTARTED"


def find_preload_libs(prefix: str = sys.prefix) -> tuple[str, ...]:
    """tcmalloc (the venv's lib/, vLLM's bundled libs/ or the system's) and, on x86, Intel OpenMP
    (the venv's lib/, from the intel-openmp package), in that order; only files that exist."""
    search = {
        "tcmalloc": [os.path.join(prefix, "lib", "libtcmalloc_minimal.so*"),
                     os.path.join(prefix, "lib", "python3*", "site-packages", "vllm", "libs", "libtcmalloc*.so*"),
                     "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4"],
    }
    if platform.machine() in ("x86_64", "AMD64"):
        search["iomp"] = [os.path.join(prefix, "lib", "libiomp5.so")]
    found = []
    for patterns in search.values():
        matches = [path for pattern in patterns for path in sorted(glob.glob(pattern))]
        if matches:
            found.append(matches[0])
    return tuple(found)


def libraries_in_this_process(maps_path: str = "/proc/self/maps") -> frozenset[str]:
    """Real paths of the shared libraries mapped into this process (empty where unknown)."""
    try:
        with open(maps_path) as handle:
            fields = (line.split(None, 5) for line in handle)
            paths = {parts[5].strip() for parts in fields if len(parts) == 6 and parts[5].startswith("/")}
    except OSError:
        return frozenset()
    return frozenset(_real_path(path) for path in paths)  # each library once (it has several mappings)


@lru_cache(maxsize=None)
def _real_path(path: str) -> str:
    """os.path.realpath, once per path: a process with vLLM maps hundreds of libraries, and the
    batch flow asks at every run (detect_machine)."""
    return os.path.realpath(path)


def all_loaded(libs: tuple[str, ...], loaded: frozenset[str] | None = None) -> bool:
    """True when every library of `libs` is already in this process."""
    loaded = libraries_in_this_process() if loaded is None else loaded
    return bool(libs) and all(os.path.realpath(lib) in loaded for lib in libs)


def gpu_present() -> bool:
    """A cheap look for an NVIDIA device (no torch import): preloading is for CPU engines."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def restart_with_preload(argv: list[str], module: str = "batchbin.cli.main") -> None:
    """Replace this process by `python -m module argv[1:]` with the preload libraries in
    LD_PRELOAD, once.

    Does nothing where there is nothing to preload, where they are loaded already, on a GPU
    machine, or where the user turned the preload off (`--no-preload`)."""
    if os.environ.get(RESTARTED_FLAG) or "--no-preload" in argv or gpu_present():
        return
    libs = find_preload_libs()
    if not libs or all_loaded(libs):
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join([*libs, *filter(None, [env.get("LD_PRELOAD")])])
    env[RESTARTED_FLAG] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv[1:]], env)
