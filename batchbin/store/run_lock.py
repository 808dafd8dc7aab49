"""One run at a time on a database: a run holds an exclusive lock on a file beside the
database (`<db>.runlock`, fcntl.flock) from its start to its end, and a second run on the same
database waits for it, saying which run it waits for.

The database file itself is not what serialises runs: a run lets go of it between checkpoints
so that readers get in (batchbin/store/db.py BriefConnection), and two engines at once would compete
for the same cores and memory anyway. The lock goes with the process that holds it, also when
that process is killed.

    with run_lock("out/batchbin.duckdb", "93c231cd7e7f", on_wait=print):
        ...  # the run
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from batchbin.store.db import LOCK_WAIT_S, Held, wait_while_held


def lock_path(db_path: str | Path) -> Path:
    return Path(f"{db_path}.runlock")


@contextmanager
def run_lock(db_path: str | Path, run_id: str, on_wait: Callable[[str], None], wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the database's run lock for the block, waiting up to `wait_s` for a run that has it."""
    path = lock_path(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        def attempt() -> None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Held(path.read_text().strip() or "another run") from None

        wait_while_held(
            attempt, wait_s, on_wait,
            waiting=lambda holder: (f"waiting for {holder} on {db_path} to finish: one run at a time on a database "
                                    f"(up to {wait_s:.0f} s)"),
            gave_up=lambda holder: f"{db_path} is still taken by {holder} after {wait_s:.0f} s; try again when it has finished")
        handle.seek(0)
        handle.truncate()
        handle.write(f"run {run_id} (process {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle, fcntl.LOCK_UN)
