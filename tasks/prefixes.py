"""Stage 3, group prefixes (BatchLLM): find the prefixes a run's prompts share, in SQL over the
token lists, and cut the run into prefix groups the scheduler keeps together.

Sorting the token lists lexicographically puts prompts that share a prefix next to each other;
the longest common prefix (LCP) with the predecessor gives, summed over the run, the prefill
work with perfect reuse (`distinct_tokens`) and what perfect reuse would skip
(`ideal_cached_tokens`). The LCP array also spans the run's prefix tree (its LCP intervals).
Over that tree BatchLLM's rule picks one prefix level per group: a subtree stays one group
sharing its own prefix ((members - 1) * prefix reused tokens) or splits into its children's
best groups, whichever reuses more (a tie keeps it whole). Prefixes shorter than
`min_shared_tokens` (default: one vLLM CPU KV block, 128 tokens) are not worth a group;
prompts without a worthwhile shared prefix are singleton groups with prefix_tokens 0.

Writes, for one run (delete-then-insert in one transaction, so a re-run replaces its rows):
`prompt_groups` (group, sort rank and LCP of every prompt), `prefix_groups` (one row per group)
and `run_prefix_stats` (one row). All SQL is in sql/prefixes.sql.
"""

from __future__ import annotations

import duckdb
from prefect import task

from batchbin.store.db import transaction
from batchbin.store.queries import execute
from batchbin.store.runs import RunRef, open_run_db
from batchbin.tasks.common import Stage

DEFAULT_MIN_SHARED_TOKENS = 128  # one KV block of vLLM on CPU; prefix-cache hits come in whole blocks

STEPS = ["prefixes.sort_prompts", "prefixes.build_prefix_tree", "prefixes.assign_groups", "prefixes.replace_results"]


def assign_prefix_groups(
    con: duckdb.DuckDBPyConnection, run_id: str, min_shared_tokens: int = DEFAULT_MIN_SHARED_TOKENS
) -> dict:
    """Group the prompts of `run_id` by shared prefix; return its run_prefix_stats row as a dict.

    Reads `tokens`; replaces the run's rows in prompt_groups, prefix_groups, run_prefix_stats.
    Other runs' rows are untouched. The scratch tables it uses are dropped before it returns.
    """
    if int(min_shared_tokens) < 1:
        raise ValueError(f"min_shared_tokens must be at least 1, got {min_shared_tokens}")
    params = {"run_id": run_id, "min_shared_tokens": int(min_shared_tokens)}
    with transaction(con):
        for step in STEPS:
            execute(con, step, params)
        execute(con, "prefixes.drop_scratch")
    cursor = execute(con, "prefixes.run_stats", params)
    columns = [d[0] for d in cursor.description]
    (row,) = cursor.fetchall()  # fetchall: DuckDB 2.0 refuses new work while a result is unfinished
    return dict(zip(columns, row))


STAGE = Stage("group_prefixes", sql_file="prefixes", modules=(__name__,))


@task(**STAGE.task_options())
def group_prefixes(ref: RunRef, min_shared_tokens: int = DEFAULT_MIN_SHARED_TOKENS, after: str = "") -> RunRef:
    """Prefix groups and the ideal prefix reuse of the run (`after`: the stamp of the stage before it)."""
    params = {"min_shared_tokens": min_shared_tokens, "after": after}
    with open_run_db(ref) as con:
        if not STAGE.is_done(con, ref.run_id, params):
            stats = assign_prefix_groups(con, ref.run_id, min_shared_tokens)
            STAGE.mark_done(con, ref.run_id, params, stats["prompts"])
    return ref
