"""Stage 6, generate: hand the scheduled requests to vLLM in schedule order (the step loop,
batchbin/engine/step_loop.py) and store each finished request as it completes,
`checkpoint_every` at a time, so a crash loses at most one checkpoint and a re-run generates
only what is missing. The rows stream from DuckDB a page at a time.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterator

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from batchbin.engine import vllm_adapter
from batchbin.engine.pool import Engine, get_engine, shutdown_engine
from batchbin.engine.progress import GenerationProgress, publish
from batchbin.engine.settings import DEFAULT_MAX_NUM_SEQS, EngineSettings
from batchbin.engine.step_loop import (EngineFailure, GenerationStats, SamplingDefaults, generate_in_order,
                                       kv_admission_for)
from batchbin.store.checkpoints import CheckpointWriter, begin_attempt, count_results
from batchbin.store.db import BriefConnection
from batchbin.store.queries import execute, fetch_arrow
from batchbin.store.runs import RunRef, open_run_db
from batchbin.tasks.common import PROGRESS_EVERY_S, stage_task_options

WORK_PAGE_ROWS = 4096  # requests read from the schedule at a time (a few MB of token ids)


def work_pages(database: BriefConnection, run_id: str, page_rows: int = WORK_PAGE_ROWS) -> Iterator[dict]:
    """The run's requests without a result, in schedule order, read a page at a time."""
    after = -1
    while True:
        rows = fetch_arrow(database.get(), "generate.work_in_order", {"run_id": run_id, "after": after, "limit": page_rows}).to_pylist()
        database.used()
        if not rows:
            return
        yield from rows
        after = rows[-1]["position"]


def take_left_running(engine: Engine, run_id: str) -> dict[str, dict]:
    """The requests an earlier phase of this run left running in vLLM; another run's leftovers
    (a run that stopped between its phases) are aborted."""
    left, engine.left_running = engine.left_running, None
    if left is None:
        return {}
    if left[0] == run_id:
        return left[1]
    vllm_adapter.abort_requests(engine.llm, list(left[1]))
    return {}


def generate_run(
    db_path: str,
    run_id: str,
    engine: Engine,
    defaults: SamplingDefaults,
    checkpoint_every: int = 32,
    progress: Callable[[GenerationStats, int], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
    until_probe_done: bool = False,
    kv_admission: bool = False,
    retry_errors: bool = False,
) -> GenerationStats:
    """Generate every scheduled request of the run that has no result yet (`retry_errors`: and
    those that ended in an error), checkpoints written by the run's CheckpointWriter.

    `until_probe_done`: the first phase of a probed run. Only as many requests as vLLM runs at
    once are handed over (so the rest can still be reordered), and the phase ends as soon as the
    run's probe requests (`probe_requests`) have all finished; what still runs in vLLM then is
    left on the engine (`Engine.left_running`) and finished by the run's next generation, which
    hands over the rest of the job behind it in the new schedule's order.

    `kv_admission`: hand requests over by memory (see generate_in_order), not by count alone."""
    running = take_left_running(engine, run_id)
    database = BriefConnection(db_path, on_wait)
    writer = CheckpointWriter(database, run_id)
    try:
        attempt = begin_attempt(database, run_id, retry_errors)
        writer.attempt = attempt.number
        until_done, in_flight = None, None
        if until_probe_done:
            until_done = {row[0] for row in execute(database.get(), "generate.probe_without_result",
                                                    {"run_id": run_id}).fetchall()}
            in_flight = vllm_adapter.max_num_seqs(engine.llm) or engine.settings.max_num_seqs or DEFAULT_MAX_NUM_SEQS
            if not until_done:  # the probe has its results (a resumed run): nothing to wait for
                engine.left_running = (run_id, running) if running else None
                return GenerationStats(retried_errors=attempt.retried_errors)
        if not attempt.work and not running:
            return GenerationStats(retried_errors=attempt.retried_errors)
        in_vllm = {row["request_id"] for row in running.values()}
        work = (row for row in work_pages(database, run_id) if row["request_id"] not in in_vllm)
        stats = generate_in_order(engine, work, defaults, writer.add, checkpoint_every, progress, total=attempt.work,
                                  in_flight=in_flight, store_steps=writer.add_steps, running=running,
                                  until_done=until_done, admission=kv_admission_for(engine) if kv_admission else None)
        if stats.left_running:
            engine.left_running = (run_id, stats.left_running)
        stats.retried_errors = attempt.retried_errors
        return stats
    except BaseException:
        if running:  # not finished by this phase: nobody would collect them
            try:
                vllm_adapter.abort_requests(engine.llm, list(running))
            except Exception:
                pass
        raise
    finally:
        writer.flush()
        database.close()


PROGRESS_ARTIFACT_KEY = "batchbin-generation-progress"


def progress_reporter(engine: Engine, logger: logging.Logger | logging.LoggerAdapter,
                      artifact: bool = True) -> Callable[[GenerationStats, int], None]:
    """What generate_in_order calls about once a second: a snapshot for listeners (the command
    line's progress bar) every time; a log line and the Prefect progress artifact every
    PROGRESS_EVERY_S. Prefill and output tokens come from vLLM's counters, counted from now
    (the engine may have served runs before); without them, from finished requests."""
    started = time.perf_counter()
    before = vllm_adapter.engine_counters(engine.llm)
    last_said = float("-inf")
    artifact_id = None
    if artifact:
        artifact_id = create_progress_artifact(0.0, key=PROGRESS_ARTIFACT_KEY, description="generation starting")

    def report(stats: GenerationStats, total: int) -> None:
        nonlocal last_said
        counters = vllm_adapter.engine_counters(engine.llm)

        def since_start(name: str, otherwise: int) -> int:
            return int(counters[name] - before.get(name, 0)) if name in counters else otherwise

        snapshot = GenerationProgress(
            requests_done=stats.requests, requests_total=total,
            prompt_tokens=since_start("prompt_tokens", stats.prompt_tokens),
            output_tokens=since_start("generation_tokens", stats.output_tokens),
            elapsed_s=time.perf_counter() - started, preemptions=since_start("preemptions", 0))
        stats.preemptions = snapshot.preemptions
        stats.peak_kv_cache_usage = max(stats.peak_kv_cache_usage, counters.get("kv_cache_usage", 0.0))
        publish(snapshot)
        if time.perf_counter() - last_said >= PROGRESS_EVERY_S or snapshot.requests_done == total:
            last_said = time.perf_counter()
            logger.info("generated %s", snapshot.line())
            if artifact_id is not None:
                update_progress_artifact(artifact_id, round(100 * snapshot.fraction, 1), description=snapshot.line())

    return report


# Not cached by Prefect: the results table is this stage's cache (only missing requests run),
# so a re-run reports honestly what it generated and a deleted result is generated again.
@task(**{**stage_task_options("generate"), "cache_policy": NO_CACHE, "persist_result": False})
def generate(ref: RunRef, model_path: str, settings: EngineSettings, defaults: SamplingDefaults,
             checkpoint_every: int, retry_errors: bool = False, until_probe_done: bool = False,
             kv_admission: bool = False) -> dict:
    """Generate the missing results of the run with vLLM, in schedule order (`retry_errors`:
    and those that ended in an error; `until_probe_done`: only until the run's probe requests
    have finished, see generate_run; `kv_admission`: hand requests to vLLM by predicted memory)."""
    engine = get_engine(model_path, settings, defaults.max_model_len)
    logger = get_run_logger()
    try:
        stats = generate_run(ref.db_path, ref.run_id, engine, defaults, checkpoint_every,
                             progress_reporter(engine, logger), on_wait=logger.warning, until_probe_done=until_probe_done,
                             kv_admission=kv_admission, retry_errors=retry_errors)
    except EngineFailure:
        shutdown_engine()  # a dead engine is not kept for the next run
        raise
    with open_run_db(ref) as con:
        total, ok = count_results(con, ref.run_id)
    return {"generated": stats.requests, "generate_s": stats.generate_s, "engine_start_s": engine.start_s,
            "output_tokens": stats.output_tokens, "results": total, "ok": ok, "retried_errors": stats.retried_errors,
            "preemptions": stats.preemptions, "peak_kv_cache_usage": round(stats.peak_kv_cache_usage, 3),
            "kv_admission": ({"budget_tokens": vllm_adapter.kv_cache_tokens(engine.llm), "held_back": stats.held_back}
                             if kv_admission else None),
            "max_num_seqs": vllm_adapter.max_num_seqs(engine.llm)}
