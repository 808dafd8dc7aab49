"""Stage 5, bin and schedule: k length bins (Multi-Bin Batching) and the order in which
requests go to vLLM (prefix groups together, decode-heavy work first). The logic is SQL
(sql/schedule.sql); this module runs it.
"""

from __future__ import annotations

import duckdb
from prefect import task

from batchbin.sqlfiles import one, run
from batchbin.tasks.common import RunRef, mark_stage_done, open_run_db, stage_is_done, stage_task_options

ORDERS = ("hybrid", "group", "bin", "sorted", "input")


def schedule_run(con: duckdb.DuckDBPyConnection, run_id: str, k_bins: int, order: str, min_shared_tokens: int) -> int:
    """Write the run's schedule; return the number of scheduled requests."""
    if order not in ORDERS:
        raise ValueError(f"unknown order '{order}'; choose one of {', '.join(ORDERS)}")
    run(con, "schedule.replace_schedule",
        {"run_id": run_id, "k_bins": k_bins, "order": order, "min_shared_tokens": min_shared_tokens})
    return one(con, "schedule.count_scheduled", {"run_id": run_id})[0]


@task(**stage_task_options("schedule"))
def schedule(ref: RunRef, k_bins: int, order: str, min_shared_tokens: int) -> RunRef:
    """Bin the run's requests by predicted length and order them for generation."""
    params = {"k_bins": k_bins, "order": order, "min_shared_tokens": min_shared_tokens}
    with open_run_db(ref) as con:
        if not stage_is_done(con, ref.run_id, "schedule", params):
            rows = schedule_run(con, ref.run_id, k_bins, order, min_shared_tokens)
            mark_stage_done(con, ref.run_id, "schedule", params, rows)
    return ref
