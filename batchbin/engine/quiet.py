"""Keep the engine's start-up noise out of a user's terminal: vLLM, torch and their libraries
print Triton notes, FutureWarnings, NUMA binding lines and safetensors progress bars straight to
the process's standard error, from Python and from C++. `batchbin run` (without --verbose)
names a log file in BATCHBIN_ENGINE_LOG; while vLLM is imported and an engine starts, file
descriptor 2 points there. If the start fails, the log's last lines are shown.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ENGINE_LOG_VARIABLE = "BATCHBIN_ENGINE_LOG"
TAIL_LINES = 20


@contextmanager
def engine_noise_to_log() -> Iterator[None]:
    """Standard error (fd 2) into the file BATCHBIN_ENGINE_LOG names, for the block; nothing
    when it names none."""
    path = os.environ.get(ENGINE_LOG_VARIABLE)
    if not path:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            tail = Path(path).read_text(errors="replace").splitlines()[-TAIL_LINES:]
            print(f"the engine's output ({path}), last lines:\n" + "\n".join(tail), file=sys.stderr)
            raise
        _restore(saved)


def _restore(saved: int) -> None:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
