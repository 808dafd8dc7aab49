"""Run a command of the benchmark in a process of its own, with a time limit.

Every command the benchmark starts (vLLM's batch runner, an engine sweep point, a cold-start run)
goes through `run_command`: a command that hangs (an engine that never finishes) is stopped,
with what it started, and the benchmark ends with an error naming it, instead of waiting for ever.

    done = run_command([sys.executable, "-m", "batchbin.bench.user_script", ...], requests=120)
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess

# Generous on purpose: a slow run must not be cut short. START_S covers the imports, the engine's
# start and a first torch.compile (tens of seconds to a few minutes); PER_REQUEST_S is ~5x the
# slowest rate seen (plain vLLM defaults on the AMD CPU: 214 s for 120 requests, 1.8 s each).
START_S = 1200
PER_REQUEST_S = 10


class CommandTimeout(RuntimeError):
    """A benchmark command did not finish in its time limit and was stopped."""


def timeout_s(requests: int) -> int:
    """The time limit of a command that handles `requests` requests."""
    return START_S + PER_REQUEST_S * requests


def run_command(command: list[str], requests: int, name: str, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess:
    """Run `command` to its end with its output captured (text); stop it after `timeout_s(requests)`.

    The command gets a session of its own, so that stopping it also stops the processes it
    started (vLLM's engine core); for the same reason Ctrl-C here stops it too."""
    limit = timeout_s(requests)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=limit)
        except BaseException as error:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            if isinstance(error, subprocess.TimeoutExpired):
                raise CommandTimeout(f"{name} hung: no end after {limit} s ({START_S} s + {PER_REQUEST_S} s for "
                                     f"each of {requests} requests), stopped: {shlex.join(command)}") from None
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
