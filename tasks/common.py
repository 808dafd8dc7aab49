"""What every stage task shares: the small reference stages hand each other, the cache
policy that never lets a cache hit point at rows that are gone, and the retry condition.

A stage marks itself done in the `stages` table with a hash of its parameters. Its cache key
is Prefect's INPUTS + TASK_SOURCE key plus that completion stamp, and there is no key at all
while the stage is not done in this database: deleting the database (or the run) forces the
stage to run again instead of returning a cached reference to missing rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import duckdb
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from pydantic import BaseModel

from batchbin import db
from batchbin.errors import BatchBinError
from batchbin.sqlfiles import one, sql


class RunRef(BaseModel):
    """What a stage passes to the next: where the data is, never the data."""

    db_path: str
    run_id: str


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def open_run_db(ref: RunRef) -> Iterator[duckdb.DuckDBPyConnection]:
    con = db.connect(ref.db_path)
    try:
        yield con
    finally:
        con.close()


def stage_is_done(con: duckdb.DuckDBPyConnection, run_id: str, stage: str, params: dict[str, Any]) -> bool:
    """True when the stage finished for this run with these parameters."""
    row = one(con, "stages.stamp", {"run_id": run_id, "stage": stage})
    return row is not None and row[0] == params_hash(params)


def mark_stage_done(con: duckdb.DuckDBPyConnection, run_id: str, stage: str, params: dict[str, Any], rows: int) -> None:
    con.execute(sql("stages.mark"), {"run_id": run_id, "stage": stage, "params": params_hash(params), "rows": rows})


def clear_stages(con: duckdb.DuckDBPyConnection, run_id: str, stages: list[str]) -> None:
    con.execute(sql("stages.clear_from"), {"run_id": run_id, "stages": stages})


@dataclass
class StageDone(CachePolicy):
    """INPUTS + TASK_SOURCE, valid only while the stage's rows are in the database."""

    stage: str = ""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> Optional[str]:
        ref = inputs.get("ref")
        if not isinstance(ref, RunRef):
            return None
        stamp = db.stage_stamp(ref.db_path, ref.run_id, self.stage)
        if stamp is None:
            return None
        base = (INPUTS + TASK_SOURCE).compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        return None if base is None else f"{self.stage}-{base}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}"


TRANSIENT_ERRORS = (duckdb.IOException, ConnectionError, TimeoutError)


def retry_if_transient(task, task_run, state) -> bool:
    """Retry lock conflicts and connection hiccups; never bad input or out-of-memory."""
    try:
        state.result()
    except BatchBinError:
        return False
    except TRANSIENT_ERRORS:
        return True
    except Exception:
        return False
    return False


def stage_task_options(stage: str) -> dict[str, Any]:
    """The @task options every stage uses."""
    return {
        "name": stage,
        "cache_policy": StageDone(stage=stage),
        "retries": 2,
        "retry_delay_seconds": 2,
        "retry_condition_fn": retry_if_transient,
        "persist_result": True,
    }


PROGRESS_EVERY_S = 5.0


def chunk_progress(say: Callable[[str], None], what: str, total: int | None = None,
                   every_s: float = PROGRESS_EVERY_S) -> Callable[[int], None]:
    """A callback for a stage that works in chunks: called with how many `what` are done so
    far, it says so (at most once every `every_s` seconds), with the total when it is known.
    A large file takes minutes to load and tokenize; a user sees it move."""
    last = time.perf_counter()

    def progress(done: int) -> None:
        nonlocal last
        if time.perf_counter() - last < every_s:
            return
        last = time.perf_counter()
        say(f"{done:,} of {total:,} {what}" if total is not None else f"{done:,} {what}")

    return progress
