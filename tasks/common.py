"""What every stage task shares: the small reference stages hand each other, the cache
policy that never lets a cache hit point at rows that are gone, and the retry condition.

A stage marks itself done in the `stages` table with a hash of its parameters and its code
(its SQL file and the source of its modules). Its cache key is Prefect's INPUTS + TASK_SOURCE
key, that code version and the completion stamp, and there is no key at all while the stage is
not done in this database: deleting the database (or the run) forces the stage to run again
instead of returning a cached reference to missing rows.

A stage knows nothing of the others. The flow holds their order and hands each stage the
completion stamp of the one before it (`after`), which is part of the stage's parameters: when a
stage runs again its stamp changes, so every stage after it runs again too, and no crash between
two stages can leave a later stage's rows standing on an earlier stage's old ones.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import time
from dataclasses import dataclass
from functools import cache
from typing import Any, Callable, Optional

import duckdb
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy

from batchbin.store import db
from batchbin.errors import BatchBinError
from batchbin.store.queries import execute, fetch_one, sql_file_text
from batchbin.store.runs import RunRef


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


@cache
def code_version(sql_file: str, modules: tuple[str, ...]) -> str:
    """A hash of what decides a stage's output besides its parameters: its SQL file and the
    source of its Python modules. A changed query or stage code runs the stage again."""
    texts = [sql_file_text(sql_file) if sql_file else ""]
    texts += [inspect.getsource(importlib.import_module(name)) for name in modules]
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline, as the stage itself knows it: its name, its file in sql/ and
    the modules that hold its logic (its task's own module is one of them)."""

    name: str
    sql_file: str = ""
    modules: tuple[str, ...] = ()

    def version(self) -> str:
        return code_version(self.sql_file, self.modules)

    def is_done(self, con: duckdb.DuckDBPyConnection, run_id: str, params: dict[str, Any]) -> bool:
        """True when the stage finished for this run with these parameters and this code."""
        row = fetch_one(con, "stages.stamp", {"run_id": run_id, "stage": self.name})
        return row is not None and row[0] == params_hash({**params, "code": self.version()})

    def mark_done(self, con: duckdb.DuckDBPyConnection, run_id: str, params: dict[str, Any], rows: int) -> None:
        execute(con, "stages.mark", {"run_id": run_id, "stage": self.name, "rows": rows,
                                 "params": params_hash({**params, "code": self.version()})})

    def task_options(self, extra_key: Callable[[RunRef, dict[str, Any]], str] | None = None) -> dict[str, Any]:
        """The @task options of the stage (`extra_key`: see StageDone)."""
        return stage_task_options(self.name, StageDone(stage=self, extra=extra_key))


@dataclass
class StageDone(CachePolicy):
    """INPUTS + TASK_SOURCE + the stage's code version, valid only while the stage's rows are
    in the database. `extra` adds what else decides the stage's output and is not among its
    inputs (the predictor "auto" picks, say): a function of the stage's RunRef and inputs."""

    stage: Optional[Stage] = None
    extra: Optional[Callable[[RunRef, dict[str, Any]], str]] = None

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> Optional[str]:
        ref = inputs.get("ref")
        if not isinstance(ref, RunRef) or self.stage is None:
            return None
        stamp = db.stage_stamp(ref.db_path, ref.run_id, self.stage.name)
        if stamp is None:
            return None
        base = (INPUTS + TASK_SOURCE).compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        if base is None:
            return None
        parts = [stamp, self.stage.version(), self.extra(ref, inputs) if self.extra else ""]
        return f"{self.stage.name}-{base}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:16]}"


TRANSIENT_ERRORS = (ConnectionError, TimeoutError)


def retry_if_transient(task, task_run, state) -> bool:
    """Retry lock conflicts and connection hiccups; never bad input, a file that is not a
    database, or out-of-memory."""
    try:
        state.result()
    except BatchBinError:
        return False
    except duckdb.IOException as error:
        return db.is_lock_conflict(error)
    except TRANSIENT_ERRORS:
        return True
    except Exception:
        return False
    return False


def stage_task_options(name: str, cache_policy: CachePolicy = NO_CACHE) -> dict[str, Any]:
    """The @task options every stage uses (generate and report keep no Prefect cache)."""
    return {
        "name": name,
        "cache_policy": cache_policy,
        "retries": 2,
        "retry_delay_seconds": 2,
        "retry_condition_fn": retry_if_transient,
        "persist_result": True,
    }


# How often a stage says how far it got in the run's log (BATCHBIN_PROGRESS_EVERY_S overrides).
PROGRESS_EVERY_S = float(os.environ.get("BATCHBIN_PROGRESS_EVERY_S", "5"))


def chunk_progress(log_progress: Callable[[str], None], what: str, total: int | None = None,
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
        log_progress(f"{done:,} of {total:,} {what}" if total is not None else f"{done:,} {what}")

    return progress
