"""Stage 5, bin and schedule: the stage around batchbin/scheduling.py (sql/schedule.sql)."""

from __future__ import annotations

from prefect import task

from batchbin.engine.settings import DEFAULT_MAX_NUM_SEQS
from batchbin.scheduling import schedule_run
from batchbin.store.runs import RunRef, open_run_db
from batchbin.tasks.common import Stage

STAGE = Stage("schedule", sql_file="schedule", modules=(__name__, "batchbin.scheduling"))


@task(**STAGE.task_options())
def schedule(ref: RunRef, k_bins: int, order: str, min_shared_tokens: int,
             max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, after: str = "", kv_cache_tokens: int | None = None) -> RunRef:
    """Bin the run's requests by predicted length and order them for generation (`after`: the
    stamp of the stage before it; `kv_cache_tokens`: what the engine's KV cache holds, if known)."""
    params = {"k_bins": k_bins, "order": order, "min_shared_tokens": min_shared_tokens, "max_num_seqs": max_num_seqs,
              "after": after, **({"kv_cache_tokens": kv_cache_tokens} if kv_cache_tokens else {})}
    with open_run_db(ref) as con:
        if not STAGE.is_done(con, ref.run_id, params):
            rows = schedule_run(con, ref.run_id, k_bins, order, min_shared_tokens, max_num_seqs, kv_cache_tokens)
            STAGE.mark_done(con, ref.run_id, params, rows)
    return ref
