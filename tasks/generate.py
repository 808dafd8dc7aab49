"""Stage 6, generate: hand the scheduled requests to vLLM in schedule order and store each
finished request as it completes, `checkpoint_every` at a time, so a crash loses at most one
checkpoint and a re-run generates only what is missing.

vLLM's own engine API (`LLMEngine.add_request` / `step`, through batchbin/vllm_adapter.py) is
used instead of one big `LLM.generate` call: the waiting queue is first-come-first-served, so
adding the requests in schedule order is the same as one `generate` call in that order, and
results stream out as they finish instead of at the end. Prompts go in as token ids (tokenized
once, stage 2).

A large job is not handed over at once: a request costs ~25 KiB of memory with a 300-token
prompt (half in its row here, half inside vLLM; measured), so a million would not fit in
24 GiB. The rows stream from DuckDB and at most `in_flight_limit` requests are inside vLLM at a
time; the rest join the tail of its queue as requests finish. The limit is several times the
sequences the engine runs at once, so its waiting queue never runs dry while rows are left,
and it picks the same requests, in the same order, as with the whole job queued up front.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

import duckdb
import pyarrow as pa
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from batchbin import vllm_adapter
from batchbin.admission import KvAdmission, planned_tokens
from batchbin.db import BriefConnection, registered
from batchbin.engine import Engine, get_engine, scheduler_held, shutdown_engine
from batchbin.engine_settings import EngineSettings
from batchbin.errors import BatchBinError
from batchbin.progress import GenerationProgress, publish
from batchbin.sqlfiles import arrow, one, run
from batchbin.tasks.common import PROGRESS_EVERY_S, RunRef, open_run_db, stage_task_options

RESULT_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("output_text", pa.string()), ("prompt_tokens", pa.int32()),
    ("output_tokens", pa.int32()), ("cached_tokens", pa.int32()), ("finish_reason", pa.string()),
    ("error", pa.string()), ("batch", pa.int32()), ("latency_s", pa.float64()), ("finished_s", pa.float64()),
])
# one row per engine step (vllm_adapter.StepShape, timed here); `started_s` counts from the start
# of the generation attempt, as results' `finished_s` does
STEP_SCHEMA = pa.schema([
    ("step", pa.int32()), ("started_s", pa.float64()), ("duration_s", pa.float64()), ("running", pa.int32()),
    ("waiting", pa.int32()), ("prefill_tokens", pa.int32()), ("decode_tokens", pa.int32()),
    ("context_tokens", pa.int64()), ("kv_cache_usage", pa.float64()), ("preempted", pa.int32()),
])


@dataclass
class SamplingDefaults:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    max_model_len: int = 2048


@dataclass
class GenerationStats:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    generate_s: float = 0.0
    checkpoints: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    preemptions: int = 0               # vLLM's, during this generation (when its counters are on)
    peak_kv_cache_usage: float = 0.0   # the highest KV-cache use seen at a progress report, 0..1
    left_running: dict = field(default_factory=dict)  # requests still in vLLM when a phase ended
    held_back: int = 0                 # times memory-centric admission kept a request waiting for room


def structured_outputs_for(response_format: str | None):
    """vLLM's constraint for a stored response format (None: free text)."""
    if not response_format:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    spec = json.loads(response_format)
    if spec["type"] == "json_object":
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=spec["schema"])


def request_seed(job_seed: int | None, request_id: str) -> int | None:
    """The seed of a sampled request that has none of its own: derived from the job's seed and
    the request's id, so a re-run samples the same, and two identical prompts (two ids) sample
    apart, as a Batch API user expects. None (a job without a seed): vLLM's own randomness."""
    if job_seed is None:
        return None
    digest = hashlib.sha256(f"{job_seed}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def sampling_params_for(row: dict, defaults: SamplingDefaults):
    """vLLM SamplingParams of one request: its own overrides, else the job's defaults."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    room = defaults.max_model_len - len(row["token_ids"])
    temperature = defaults.temperature if row["temperature"] is None else row["temperature"]
    max_tokens = max(1, min(row["max_tokens"] or defaults.max_tokens, room))
    return SamplingParams(
        max_tokens=max_tokens,
        min_tokens=min(row.get("min_tokens") or 0, max_tokens),
        ignore_eos=bool(row.get("ignore_eos")),
        temperature=temperature,
        top_p=defaults.top_p if row["top_p"] is None else row["top_p"],
        # a seed only matters when sampling; on greedy requests it would only cost vLLM a
        # per-request generator
        seed=None if temperature == 0 else (request_seed(defaults.seed, row["request_id"]) if row["seed"] is None
                                             else row["seed"]),
        stop=row["stop"] or None,
        structured_outputs=structured_outputs_for(row.get("response_format")),
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


class EngineFailure(BatchBinError):
    """vLLM's engine stopped working in the middle of a run (its process died, a step raised)."""


PUBLISH_EVERY_S = 1.0  # how often generation reports its progress (the log and artifact: PROGRESS_EVERY_S)

MIN_IN_FLIGHT = 1024
# vLLM request ids, unique in the process: a phase's requests may still run in the next one
_REQUEST_KEYS = itertools.count()


def in_flight_limit(engine: Engine) -> int:
    """How many requests may be inside vLLM at once: 4x the sequences it runs (at least 1024),
    as vLLM's own config says (on GPU, BatchBin leaves max_num_seqs to vLLM)."""
    running = vllm_adapter.max_num_seqs(engine.llm)
    if running is None:  # a vLLM that keeps it elsewhere
        running = engine.settings.max_num_seqs or 256
    return max(MIN_IN_FLIGHT, 4 * running)


def generate_in_order(
    engine: Engine,
    work: Iterable[dict],
    defaults: SamplingDefaults,
    store: Callable[[list[dict]], None],
    checkpoint_every: int = 32,
    progress: Callable[[GenerationStats, int], None] | None = None,
    total: int | None = None,
    in_flight: int | None = None,
    store_steps: Callable[[list[dict]], None] | None = None,
    running: dict[str, dict] | None = None,
    until_done: set[str] | None = None,
    admission: KvAdmission | None = None,
) -> GenerationStats:
    """Run `work` (rows of generate.work_in_order, in order) through vLLM; `store` every checkpoint.

    At most `in_flight` requests (default `in_flight_limit`) are inside vLLM at a time; `total`
    (default len(work)) is only for progress reports. `store_steps` (optional) gets the rows of
    STEP_SCHEMA of the steps since the last checkpoint, just before `store` gets its results
    (from vLLM's statistics: vllm_adapter.steps_watched).

    A generation in phases: `running` holds requests already inside vLLM (an earlier phase's,
    keyed by their vLLM request id), finished here as if added here; with `until_done`, the
    generation ends as soon as every one of those request ids has finished, adding nothing more
    and leaving what still runs in vLLM in `stats.left_running` for the next phase.

    `admission` (memory-centric admission, batchbin/admission.py): a row is handed over only
    while the KV cache holds every request inside vLLM at its predicted peak; the rows behind it
    wait for requests to finish."""
    llm = engine.llm
    stats = GenerationStats()
    pending: dict[str, dict] = dict(running or {})
    waiting_for = set(until_done) if until_done is not None else None
    finished: list[dict] = []
    steps: list[dict] = []
    step_numbers = itertools.count()
    rows = iter(work)
    held: list[dict] = []  # a row the admission gate sent back, first in line
    total = len(work) if total is None and hasattr(work, "__len__") else (total or 0)
    in_flight = in_flight or in_flight_limit(engine)

    def flush() -> None:
        if steps and store_steps:
            store_steps(list(steps))
            steps.clear()
        if finished:
            store(finished)
            stats.checkpoints += 1
            finished.clear()

    def record(row: dict, **result) -> None:
        finished.append({"request_id": row["request_id"], "batch": row["batch"],
                         "finished_s": time.perf_counter() - started, **result})
        stats.requests += 1
        if waiting_for is not None:
            waiting_for.discard(row["request_id"])
        if len(finished) >= checkpoint_every:
            flush()

    def top_up() -> None:
        """Add rows, in order, until `in_flight` requests are in vLLM (or admission finds no
        room for the next one) or no row is left."""
        while len(pending) < in_flight:
            row = held.pop() if held else next(rows, None)
            if row is None:
                return
            if admission is not None:
                expected = expected_tokens(row, defaults)
                if not admission.admits(len(row["token_ids"]), expected):
                    held.append(row)
                    return
            key = f"bb-{next(_REQUEST_KEYS)}"
            try:
                params = sampling_params_for(row, defaults)
                vllm_adapter.add_request(llm, key, row["token_ids"], params)
            except Exception as error:  # a bad request must not stop the run
                stats.errors += 1
                record(row, output_text=None, prompt_tokens=len(row["token_ids"]), output_tokens=0, cached_tokens=0,
                       finish_reason="error", error=f"{type(error).__name__}: {error}", latency_s=0.0)
                continue
            row["added_at"] = time.perf_counter()
            pending[key] = row  # outputs come back under this (external) id
            if admission is not None:
                admission.handed_over(key, len(row["token_ids"]), expected)

    if admission is not None:
        for key, row in pending.items():  # an earlier phase's, still running: as if just handed over
            admission.handed_over(key, len(row["token_ids"]), expected_tokens(row, defaults))
    started = time.perf_counter()
    try:
        with scheduler_held(engine):  # the first requests all queued before the first step
            top_up()
        last_report = time.perf_counter()
        # steps are watched only for someone who stores them (Ray's engines do not)
        with vllm_adapter.steps_watched(llm) if store_steps else nullcontext() as watch:
            while vllm_adapter.has_unfinished_requests(llm):
                step_started = time.perf_counter()
                outputs = _step(llm, stats, total)
                if admission is not None:
                    admission.stepped()
                if watch is not None and watch.last is not None:
                    steps.append({"step": next(step_numbers), "started_s": step_started - started,
                                  "duration_s": time.perf_counter() - step_started, **asdict(watch.last)})
                    watch.last = None
                for output in outputs:
                    if not output.finished:
                        continue
                    row = pending.pop(output.request_id, None)
                    if row is None:
                        continue
                    if admission is not None:
                        admission.finished(output.request_id)
                    completion = output.outputs[0]
                    reason = completion.finish_reason or "unknown"
                    stats.prompt_tokens += len(output.prompt_token_ids or row["token_ids"])
                    stats.output_tokens += len(completion.token_ids)
                    stats.cached_tokens += output.num_cached_tokens or 0
                    stats.finish_reasons[reason] = stats.finish_reasons.get(reason, 0) + 1
                    record(row, output_text=completion.text, prompt_tokens=len(row["token_ids"]),
                           output_tokens=len(completion.token_ids), cached_tokens=output.num_cached_tokens or 0,
                           finish_reason=reason, error=None, latency_s=time.perf_counter() - row["added_at"])
                if waiting_for is not None and not waiting_for:
                    break  # the phase is over: what still runs goes on in the next one
                top_up()
                if progress and time.perf_counter() - last_report > PUBLISH_EVERY_S:
                    progress(stats, total)
                    last_report = time.perf_counter()
    except BaseException:
        if pending:
            try:
                vllm_adapter.abort_requests(llm, list(pending))
            except Exception:
                pass
        flush()
        raise
    flush()
    stats.generate_s = time.perf_counter() - started
    stats.left_running = pending
    stats.held_back = admission.held_back if admission is not None else 0
    if progress:
        progress(stats, total)
    return stats


def expected_tokens(row: dict, defaults: SamplingDefaults) -> int:
    """The output tokens admission plans for a row (the length the schedule assumed)."""
    return planned_tokens(row.get("predicted_tokens"), row["max_tokens"] or defaults.max_tokens,
                          len(row["token_ids"]), defaults.max_model_len)


def kv_admission_for(engine: Engine) -> KvAdmission | None:
    """The admission gate for this engine's KV cache (None where vLLM does not say its size)."""
    tokens = vllm_adapter.kv_cache_tokens(engine.llm)
    return KvAdmission(tokens) if tokens else None


def _step(llm, stats: GenerationStats, total: int) -> list:
    """One engine step; an engine that died or a step that failed becomes EngineFailure."""
    try:
        return vllm_adapter.step(llm)
    except Exception as error:  # the engine died, or a step failed: nothing to resume in it
        why = ("its process stopped" if vllm_adapter.is_engine_dead(error)
               else f"{type(error).__name__}: {str(error) or 'no message'}")
        raise EngineFailure(
            f"the vLLM engine failed ({why}) after {stats.requests} "
            f"of {total} requests of this attempt; every finished result is stored: run the same command again "
            "to resume (only requests without a result are generated)") from error


def store_results(con: duckdb.DuckDBPyConnection, run_id: str, rows: list[dict], attempt: int | None = None) -> None:
    """Write one checkpoint of finished requests (of generation attempt `attempt`)."""
    with registered(con, finished_batch=pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)):
        run(con, "generate.insert_results", {"run_id": run_id, "attempt": attempt})
    run(con, "generate.copy_duplicates", {"run_id": run_id, "leaders": [row["request_id"] for row in rows]})


def store_steps(con: duckdb.DuckDBPyConnection, run_id: str, attempt: int, rows: list[dict]) -> None:
    """Write the engine steps of generation attempt `attempt` taken since the last checkpoint."""
    with registered(con, engine_step_rows=pa.Table.from_pylist(rows, schema=STEP_SCHEMA)):
        run(con, "generate.insert_steps", {"run_id": run_id, "attempt": attempt})


WORK_PAGE_ROWS = 4096  # requests read from the schedule at a time (a few MB of token ids)


def work_pages(held: BriefConnection, run_id: str, page_rows: int = WORK_PAGE_ROWS) -> Iterator[dict]:
    """The run's requests without a result, in schedule order, read a page at a time."""
    after = -1
    while True:
        rows = arrow(held.get(), "generate.work_in_order", {"run_id": run_id, "after": after, "limit": page_rows}).to_pylist()
        held.used()
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
    say: Callable[[str], None] | None = None,
    until_probe_done: bool = False,
    kv_admission: bool = False,
) -> GenerationStats:
    """Generate every scheduled request of the run that has no result yet.

    The database is held only while work is read or a checkpoint written (BriefConnection). A
    checkpoint that finds the file in a reader's hands waits in memory for the next one; the
    last is written whatever happens, waiting for the file if it must.

    `until_probe_done`: the first phase of a probed run. Only as many requests as vLLM runs at
    once are handed over (so the rest can still be reordered), and the phase ends as soon as the
    run's probe requests (`probe_requests`) have all finished; what still runs in vLLM then is
    left on the engine (`Engine.left_running`) and finished by the run's next generation, which
    hands over the rest of the job behind it in the new schedule's order.

    `kv_admission`: hand requests over by memory (see generate_in_order), not by count alone."""
    running = take_left_running(engine, run_id)
    held = BriefConnection(db_path, say)
    waiting: list[dict] = []
    waiting_steps: list[dict] = []
    attempt = None

    def write(con: duckdb.DuckDBPyConnection) -> None:
        if waiting_steps:
            store_steps(con, run_id, attempt, waiting_steps)
            waiting_steps.clear()
        if waiting:
            store_results(con, run_id, waiting, attempt)
            waiting.clear()

    def store(rows: list[dict]) -> None:
        waiting.extend(rows)
        con = held.get(wait=False)
        if con is not None:
            write(con)
            held.used()

    try:
        run(held.get(), "generate.copy_duplicates", {"run_id": run_id, "leaders": None})
        total, attempt = one(held.get(), "generate.count_work", {"run_id": run_id})
        until_done, in_flight = None, None
        if until_probe_done:
            until_done = {row[0] for row in run(held.get(), "generate.probe_without_result",
                                                {"run_id": run_id}).fetchall()}
            in_flight = vllm_adapter.max_num_seqs(engine.llm) or engine.settings.max_num_seqs or 256
            if not until_done:  # the probe has its results (a resumed run): nothing to wait for
                engine.left_running = (run_id, running) if running else None
                return GenerationStats()
        if not total and not running:
            return GenerationStats()
        in_vllm = {row["request_id"] for row in running.values()}
        work = (row for row in work_pages(held, run_id) if row["request_id"] not in in_vllm)
        stats = generate_in_order(engine, work, defaults, store, checkpoint_every, progress, total=total,
                                  in_flight=in_flight, store_steps=waiting_steps.extend, running=running,
                                  until_done=until_done, admission=kv_admission_for(engine) if kv_admission else None)
        if stats.left_running:
            engine.left_running = (run_id, stats.left_running)
        return stats
    except BaseException:
        if running:  # not finished by this phase: nobody would collect them
            try:
                vllm_adapter.abort_requests(engine.llm, list(running))
            except Exception:
                pass
        raise
    finally:
        if waiting or waiting_steps:
            write(held.get())
        held.close()


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
    retried = 0
    if retry_errors:
        with open_run_db(ref) as con:
            retried = len(run(con, "generate.clear_errors", {"run_id": ref.run_id}).fetchall())
    try:
        stats = generate_run(ref.db_path, ref.run_id, engine, defaults, checkpoint_every,
                             progress_reporter(engine, logger), say=logger.warning, until_probe_done=until_probe_done,
                             kv_admission=kv_admission)
    except EngineFailure:
        shutdown_engine()  # a dead engine is not kept for the next run
        raise
    with open_run_db(ref) as con:
        total, ok = one(con, "generate.count_results", {"run_id": ref.run_id})
    return {"generated": stats.requests, "generate_s": stats.generate_s, "engine_start_s": engine.start_s,
            "output_tokens": stats.output_tokens, "results": total, "ok": ok, "retried_errors": retried,
            "preemptions": stats.preemptions, "peak_kv_cache_usage": round(stats.peak_kv_cache_usage, 3),
            "kv_admission": ({"budget_tokens": vllm_adapter.kv_cache_tokens(engine.llm), "held_back": stats.held_back}
                             if kv_admission else None),
            "max_num_seqs": vllm_adapter.max_num_seqs(engine.llm)}
