"""Binning and ordering a run's requests: k length bins (Multi-Bin Batching) and the order in
which requests go to vLLM (prefix groups together, decode-heavy work first; "auto" uses token
order where lengths cannot shorten the job). The logic is SQL (sql/schedule.sql); this module
runs it and chooses the order. The schedule stage (tasks/schedule.py) and the simulator's
rescheduling of a stored run both call it.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
from batchbin.config import ORDERS
from batchbin.store.db import transaction
from batchbin.engine.settings import DEFAULT_MAX_NUM_SEQS
from batchbin.store.queries import execute, fetch_one

# "auto" bins by length only where the lengths can shorten the job (`lengths_matter`: requests
# queue for the engine, by count or by KV cache) and the lengths the schedule plans with differ
# widely (coefficient of variation at least this). Measured (docs/benchmarks.md, orders when requests queue),
# hybrid against token order with requests queueing: mixed-length 640 (CV 1.34) 8% faster;
# chat-mix 640 (CV 0.98) 0.4% slower, prefix-heavy 720 (CV 0.85) 1.3% slower, sharegpt 480
# (CV 0.41) 1.6% slower. With every request running at once no order beat token order.
# The spread is read from the planned lengths: after an in-job probe, the calibrated ones. Whether
# lengths can matter at all (and so whether a probe runs) never depends on it: a predictor out
# of its distribution predicts alike what its model answers very differently.
MIN_LENGTH_SPREAD = 1.0


@dataclass(frozen=True)
class OrderChoice:
    order: str
    reason: str


@dataclass(frozen=True)
class JobLoad:
    """What decides whether a job's output lengths can shorten it: do its requests queue?

    `kv_tokens_needed`: KV tokens of every request at its limit (prompt + max_tokens) at once;
    `kv_cache_tokens`: what the engine's KV cache holds (None: not known before the engine)."""

    requests: int
    max_num_seqs: int
    kv_tokens_needed: int | None = None
    kv_cache_tokens: int | None = None


@dataclass(frozen=True)
class EngineRoom:
    """What of the engine decides whether a job's requests queue: the sequences it runs at once,
    and the tokens its KV cache holds (None: not known before it is built)."""

    max_num_seqs: int
    kv_cache_tokens: int | None = None


@dataclass(frozen=True)
class LengthsVerdict:
    matter: bool
    reason: str


def lengths_matter(load: JobLoad) -> LengthsVerdict:
    """Whether output lengths can change what the job costs, from the job alone: only where
    requests queue, because there are more than the engine runs at once (max_num_seqs) or because
    the KV cache cannot hold them all at their limits (vLLM then holds some back or preempts).
    Where every request runs at once from start to end, any order takes the same steps."""
    if load.requests > load.max_num_seqs:
        return LengthsVerdict(True, f"{load.requests} requests queue for {load.max_num_seqs} sequences")
    needed, held = load.kv_tokens_needed, load.kv_cache_tokens
    if needed and held and needed > held:
        return LengthsVerdict(True, f"the {load.requests} requests need up to {needed:,} KV tokens at their limits "
                                    f"and the KV cache holds {held:,}, so they queue for it")
    return LengthsVerdict(False, f"all {load.requests} requests run at once (max_num_seqs {load.max_num_seqs}"
                                 + (f", KV cache {held:,} tokens" if held else "") + ")")


def choose_order(order: str, requests: int, max_num_seqs: int, length_spread: float,
                 kv_tokens_needed: int | None = None, kv_cache_tokens: int | None = None) -> OrderChoice:
    """The order to run: `order` itself, or for "auto" hybrid or sorted (with the reason)."""
    if order not in ORDERS:
        raise ValueError(f"unknown order '{order}'; choose one of {', '.join(ORDERS)}")
    if order != "auto":
        return OrderChoice(order, "set by the user")
    verdict = lengths_matter(JobLoad(requests, max_num_seqs, kv_tokens_needed, kv_cache_tokens))
    if not verdict.matter:
        return OrderChoice("sorted", f"auto: {verdict.reason}, so only prefix order matters")
    if length_spread < MIN_LENGTH_SPREAD:
        return OrderChoice("sorted", f"auto: {verdict.reason}, but the planned lengths are alike (spread "
                                     f"{length_spread:.2f} < {MIN_LENGTH_SPREAD}), so only prefix order matters")
    return OrderChoice("hybrid", f"auto: {verdict.reason} and the planned lengths differ (spread "
                                 f"{length_spread:.2f}): longest bins first")


def kv_cache_capacity(model_path: str, kv_cache_gib: float | None, dtype: str | None) -> int | None:
    """How many tokens a KV cache of `kv_cache_gib` holds for the model in `model_path` (a folder
    with its config.json), or None where that is not known before the engine is built (a GPU's
    share of memory, a hub id, a config without the shapes)."""
    if not kv_cache_gib:
        return None
    from batchbin.errors import BatchBinError
    from batchbin.sim.step_costs import DTYPE_BYTES, ModelShape

    try:
        shape = ModelShape.from_folder(model_path)
    except (BatchBinError, OSError, ValueError):
        return None
    return int(kv_cache_gib * 2**30 // shape.kv_bytes_per_token(DTYPE_BYTES.get(str(dtype or "auto").lower(), 2)))


def schedule_run(con: duckdb.DuckDBPyConnection, run_id: str, k_bins: int, order: str, min_shared_tokens: int,
                 max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, kv_cache_tokens: int | None = None) -> int:
    """Write the run's schedule and the order chosen, in one transaction (a failure leaves the
    run's old schedule whole); return the number of scheduled requests. `kv_cache_tokens`: what
    the engine's KV cache holds, where known (`lengths_matter`)."""
    requests, spread, kv_needed = fetch_one(con, "schedule.prediction_spread", {"run_id": run_id})
    choice = choose_order(order, requests, max_num_seqs, spread, kv_needed, kv_cache_tokens)
    with transaction(con):
        execute(con, "schedule.replace_schedule",
            {"run_id": run_id, "k_bins": k_bins, "order": choice.order, "min_shared_tokens": min_shared_tokens})
        mark_duplicates(con, run_id)
        execute(con, "schedule.record_choice", {"run_id": run_id, "requested": order, "used": choice.order,
                                            "reason": choice.reason})
    return fetch_one(con, "schedule.count_scheduled", {"run_id": run_id})[0]


def mark_duplicates(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Mark the run's identical greedy requests so each answer is generated once, in whatever
    schedule the run has now: the schedule's own, or the probe's (sql/schedule.sql)."""
    execute(con, "schedule.mark_duplicates", {"run_id": run_id})
