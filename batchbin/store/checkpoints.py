"""Generation's side of the database, shared by the single engine (tasks/generate.py) and the
Ray driver (tasks/generate_ray.py): what an attempt starts from, the one checkpoint writer, and
what the run holds at the end. SQL in sql/generate.sql.

The writer holds the file only while it writes (BriefConnection): a checkpoint that finds the
file in a reader's hands waits in memory for the next one; the last is written whatever
happens, waiting for the file if it must.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from batchbin.store.db import BriefConnection, registered
from batchbin.store.queries import execute, fetch_one

RESULT_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("output_text", pa.string()), ("prompt_tokens", pa.int32()),
    ("output_tokens", pa.int32()), ("cached_tokens", pa.int32()), ("finish_reason", pa.string()),
    ("error", pa.string()), ("batch", pa.int32()), ("latency_s", pa.float64()), ("finished_s", pa.float64()),
])
# one row per engine step (vllm_adapter.StepShape, timed by the step loop); `started_s` counts
# from the start of the generation attempt, as results' `finished_s` does
STEP_SCHEMA = pa.schema([
    ("step", pa.int32()), ("started_s", pa.float64()), ("duration_s", pa.float64()), ("running", pa.int32()),
    ("waiting", pa.int32()), ("prefill_tokens", pa.int32()), ("decode_tokens", pa.int32()),
    ("context_tokens", pa.int64()), ("kv_cache_usage", pa.float64()), ("preempted", pa.int32()),
])


@dataclass(frozen=True)
class Attempt:
    """A generation attempt of a run: its number, the requests still without a result when it
    starts, and how many errored results `--retry-errors` cleared for it."""

    number: int
    work: int
    retried_errors: int = 0


def begin_attempt(database: BriefConnection, run_id: str, retry_errors: bool = False) -> Attempt:
    """Clear errored results where asked, give duplicates their leader's stored result (a stop
    between a checkpoint and its copies leaves none behind), and count the work left."""
    retried = 0
    if retry_errors:
        retried = len(execute(database.get(), "generate.clear_errors", {"run_id": run_id}).fetchall())
    execute(database.get(), "generate.copy_duplicates", {"run_id": run_id, "leaders": None})
    work, number = fetch_one(database.get(), "generate.count_work", {"run_id": run_id})
    return Attempt(number=number, work=work, retried_errors=retried)


def count_results(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[int, int]:
    """The run's results and how many of them are not errors."""
    return fetch_one(con, "generate.count_results", {"run_id": run_id})


def store_results(con: duckdb.DuckDBPyConnection, run_id: str, rows: list[dict], attempt: int | None = None) -> None:
    """Write one checkpoint of finished requests (of generation attempt `attempt`), and copy
    them to the requests that duplicate them."""
    with registered(con, finished_batch=pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)):
        execute(con, "generate.insert_results", {"run_id": run_id, "attempt": attempt})
    execute(con, "generate.copy_duplicates", {"run_id": run_id, "leaders": [row["request_id"] for row in rows]})


def store_steps(con: duckdb.DuckDBPyConnection, run_id: str, attempt: int, rows: list[dict]) -> None:
    """Write the engine steps of generation attempt `attempt` taken since the last checkpoint."""
    with registered(con, engine_step_rows=pa.Table.from_pylist(rows, schema=STEP_SCHEMA)):
        execute(con, "generate.insert_steps", {"run_id": run_id, "attempt": attempt})


# A checkpoint costs about as much for one result as for hundreds (~50 ms here: the file opened,
# two inserts, the steps' rows): results that finish close together (the end of a wave) go in
# together, at most one checkpoint per CHECKPOINT_GAP_S. A kill -9 loses at most that much of
# finished work, which the next run generates again; a stop or an engine failure loses none.
CHECKPOINT_GAP_S = 2.0


@dataclass
class CheckpointWriter:
    """The run's one writer of results (and engine steps): what it is given waits in memory
    until `checkpoint_every` results are there, CHECKPOINT_GAP_S has passed since the last
    checkpoint and the file is free, then goes in at once.

    `drop_repeats`: a result whose request already has one from this writer is counted in
    `repeats` and dropped (the Ray driver: an engine may finish work that was given back)."""

    database: BriefConnection
    run_id: str
    attempt: int | None = None
    checkpoint_every: int = 1
    drop_repeats: bool = False
    stored_ids: set[str] = field(default_factory=set)
    results: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    received: int = 0
    repeats: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    checkpoints: int = 0
    store_s: float = 0.0
    flushed_at: float = float("-inf")

    def add(self, results: list[dict]) -> None:
        """Results of finished requests; written when a checkpoint's worth waits and the file is free."""
        for result in results:
            self.received += 1
            if self.drop_repeats:
                if result["request_id"] in self.stored_ids:
                    self.repeats += 1
                    continue
                self.stored_ids.add(result["request_id"])
            self.results.append(result)
            self.prompt_tokens += result["prompt_tokens"] or 0
            self.output_tokens += result["output_tokens"] or 0
        if len(self.results) >= self.checkpoint_every and time.monotonic() - self.flushed_at >= CHECKPOINT_GAP_S:
            self.flush(wait=False)

    def add_steps(self, steps: list[dict]) -> None:
        """Engine steps, written with the next checkpoint."""
        self.steps.extend(steps)

    def flush(self, wait: bool = True) -> None:
        """Write what waits (without `wait`: only if the file is free now; else at the next one)."""
        if not self.results and not self.steps:
            return
        con = self.database.get(wait=wait)
        if con is None:
            return
        began = time.perf_counter()
        if self.steps:
            store_steps(con, self.run_id, self.attempt, self.steps)
            self.steps = []
        if self.results:
            store_results(con, self.run_id, self.results, self.attempt)
            self.results = []
            self.checkpoints += 1
        self.store_s += time.perf_counter() - began
        self.flushed_at = time.monotonic()
        self.database.used()
