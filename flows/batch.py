"""The batch-inference flow: input file -> DuckDB -> vLLM -> results and output file.

    python flows/batch.py examples/sample_prompts.jsonl   # small run on the default model
    batchbin run examples/sample_prompts.jsonl            # the same through the CLI

Stages hand each other a RunRef (database path + run id); the data stays in DuckDB.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Iterator

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from prefect.utilities.annotations import quote
from pydantic import Field

from batchbin.store import db
from batchbin.config import JobConfig
from batchbin.engine.settings import DEFAULT_BLOCK_TOKENS, DEFAULT_MAX_NUM_SEQS, EngineSettings, choose_engine_settings
from batchbin.engine.machine import detect_machine
from batchbin.errors import BatchBinError
from batchbin.engine.models import resolve_model
from batchbin.engine.quiet import engine_noise_to_log
from batchbin.io.query_jobs import kept_query_results
from batchbin.io.readers import detect_format, file_format, is_openai_batch_file
from batchbin.scheduling import EngineRoom, kv_cache_capacity
from batchbin.flows.retrain import retrain_if_due
from batchbin.flows.table_jobs import answer_agreement
from batchbin.store.run_lock import run_lock
from batchbin.store.runs import finish_run, no_valid_request_message, record_engine, start_run
from batchbin.store.runs import RunRef
from batchbin.engine.step_loop import SamplingDefaults
from batchbin.tasks.generate import generate
from batchbin.tasks.load import LoadResult, load
from batchbin.tasks.predict import predict_lengths
from batchbin.tasks.prefixes import group_prefixes
from batchbin.tasks.probe import finish_probe, start_probe
from batchbin.tasks.report import check_output_folder, report
from batchbin.tasks.reuse import reuse_results
from batchbin.tasks.schedule import schedule
from batchbin.tasks.step_costs import learn_step_costs
from batchbin.tasks.tokenize import load_tokenizer, tokenize

# The stages that keep their rows between runs, in order. Each is handed the completion stamp of
# the one before it, so a stage that ran again makes every later one run again
# (tasks/common.py); generate then runs what has no result yet, and report always runs.
PIPELINE = ("load", "tokenize", "reuse", "group_prefixes", "predict_lengths", "probe", "schedule")


def stamp_before(ref: RunRef, stage: str) -> str:
    """The completion stamp of the stage before `stage` in PIPELINE."""
    previous = PIPELINE[PIPELINE.index(stage) - 1]
    return db.stage_stamp(ref.db_path, ref.run_id, previous) or ""


class StageClock:
    """Wall seconds of each stage as the flow sees them, Prefect's task handling included.

    The report shows them (`stage_seconds`), so a user sees where a job's time went."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 3)


def check_input(config: JobConfig) -> None:
    """Fail early, with a message, on a missing file or an unknown format (a table job: on a
    query that fails, returns nothing or lacks a column the template names)."""
    job = config.query_job()
    if job is not None:
        from batchbin.io.query_jobs import query_requests

        query_requests(job, field_order="input")  # the same checks, without choosing the order
        return
    if not Path(config.input_path).is_file():
        raise BatchBinError(f"input file not found: {config.input_path}")
    detect_format(Path(config.input_path))


def output_format_of(config: JobConfig, output_path: Path) -> str:
    """"batchbin" or "openai": as asked, or for "auto" the input's own kind (a Parquet output
    file asks for BatchBin's rows)."""
    parquet = file_format(output_path) == "parquet"
    if config.output_format == "openai" and parquet:
        raise BatchBinError(f"OpenAI batch output is JSONL: give a .jsonl output path, not {output_path}")
    if config.output_format == "auto":
        return "openai" if not parquet and config.input_path and is_openai_batch_file(config.input_path) else "batchbin"
    return config.output_format


def warm_up(config: JobConfig) -> None:
    """Do now the start-up work the stages would do first: prepare the model, load its tokenizer
    (tokenize) and import vLLM (generate). `batchbin run` does it while Prefect's API boots.
    A problem here is left for the flow to report (a missing model, say)."""
    try:
        load_tokenizer(resolve_model(config.model))
        with engine_noise_to_log():
            import vllm  # noqa: F401
    except Exception:
        pass


@flow(name="batch-inference", log_prints=True)
def batch_inference(config: JobConfig, retrain_after: Annotated[int, Field(ge=1)] | None = None) -> dict:
    """Run one batch job end to end and return its report.

    Problems with the user's input end the run as Failed with a one-line message (no traceback).

    Args:
        config: The job: input file, model, database, output file, sampling, scheduling and engine settings.
        retrain_after: After a finished run, retrain the served model's length predictor (quickly) when the
            database holds at least this many of its results that its predictor has not learnt from yet: on the
            retraining deployment where the server has it (`prefect deploy --all`), else in this process.
            None: never.
    """
    with kept_query_results():  # a table job's query runs once for the checks, the fingerprint and load
        return run_job(config, retrain_after)


def run_job(config: JobConfig, retrain_after: int | None) -> dict | State:
    """The flow's work (batch_inference): checks, then the run's stages under the database's run lock."""
    try:
        check_input(config)
        model_path = resolve_model(config.model)
        fingerprint = config.input_fingerprint()
        run_id = config.run_id(fingerprint)
        output_path = config.resolved_output_path(run_id)
        output_format = output_format_of(config, output_path)
        check_output_folder(output_path)
    except BatchBinError as error:
        return Failed(message=str(error))
    ref = RunRef(db_path=str(Path(config.db_path).resolve()), run_id=run_id)
    on_wait = get_run_logger().warning
    try:
        with run_lock(ref.db_path, run_id, on_wait):  # one run at a time on a database: the next one waits
            summary = run_stages(ref, config, fingerprint, model_path, output_path, output_format, on_wait)
    except BatchBinError as error:  # a database it cannot use, an output file it cannot write, ...
        return Failed(message=str(error))
    if retrain_after is not None and not isinstance(summary, State):  # a finished run, its database free
        outcome = retrain_if_due(ref.db_path, retrain_after, config.max_tokens, get_run_logger(), model=model_path)
        if isinstance(outcome, dict):  # trained in this process
            summary = {**summary, "retrained": {key: outcome.get(key) for key in ("version", "model", "train_rows")}}
        elif outcome is not None:      # the retraining deployment's flow run
            summary = {**summary, "retraining_flow_run": str(outcome)}
    return summary


@dataclass(frozen=True)
class PreparedWork:
    """The run, loaded and scheduled: the engine settings chosen for its size, what load counted,
    and what the probe's phase generated, if it ran (those requests are the job's own: the run's
    summary counts them with the rest, see with_probe_phase)."""

    ref: RunRef
    settings: EngineSettings
    loaded: LoadResult
    probe_generation: dict | None = None


def with_probe_phase(generation: dict, probe_generation: dict | None) -> dict:
    """The generate stage's summary with the probe's phase counted in: requests, output tokens,
    seconds and preemptions added up, the higher peak of KV-cache use."""
    if not probe_generation:
        return generation
    summed = {key: (generation.get(key) or 0) + (probe_generation.get(key) or 0)
              for key in ("generated", "generate_s", "output_tokens", "preemptions")}
    peak = max(generation.get("peak_kv_cache_usage") or 0.0, probe_generation.get("peak_kv_cache_usage") or 0.0)
    return {**generation, **summed, "peak_kv_cache_usage": peak}


def prepare_work(ref: RunRef, config: JobConfig, fingerprint: str, model_path: str, clock: StageClock | None = None,
                 with_probe: bool = True, on_wait: Callable[[str], None] | None = None) -> PreparedWork:
    """Start (or resume) the run and run the stages from load to schedule, each handed the stamp
    of the one before it. `with_probe=False` (`batchbin plan`: no engine) makes the probe stage
    run none. The stages share one open of the database, but for the probe's generation, which
    lets readers in (the probe's calibration and the schedule then open it again)."""
    clock = clock or StageClock()
    with db.session(ref.db_path, on_wait=on_wait):
        settings, loaded = load_and_choose_engine(ref, config, fingerprint, model_path, clock)
        block = settings.block_size or DEFAULT_BLOCK_TOKENS  # prefix-cache hits come in whole KV blocks
        # the KV cache's size where it is known before the engine is built (lengths matter where the
        # job's requests cannot all hold it at their limits): the probe and the schedule ask it
        kv_cache_tokens = kv_cache_capacity(model_path, settings.kv_cache_gib, settings.dtype)
        with clock.stage("tokenize"):
            ref = tokenize(ref, model_path, config.max_model_len, after=stamp_before(ref, "tokenize"))
        with clock.stage("reuse"):  # answers of earlier runs: those requests are not generated
            ref = reuse_results(ref, model_path, sampling_defaults(config), config.reuse_results,
                                after=stamp_before(ref, "reuse"))
        with clock.stage("group_prefixes"):
            ref = group_prefixes(ref, min_shared_tokens=block, after=stamp_before(ref, "group_prefixes"))
        # "auto" may skip the predictor where this process's engine runs every request at once; `plan`
        # (its estimate needs the lengths) and a Ray cluster's engines (with_probe False) always predict
        with clock.stage("predict_lengths"):
            room = EngineRoom(settings.max_num_seqs or DEFAULT_MAX_NUM_SEQS, kv_cache_tokens) if with_probe else None
            ref = predict_lengths(ref, config.predictor, config.max_tokens, after=stamp_before(ref, "predict_lengths"),
                                  engine_room=room)
        probe = ProbeStep(ref, config, settings, fraction=config.probe if with_probe else 0.0,
                          kv_cache_tokens=kv_cache_tokens)
        with clock.stage("probe"):
            probed = probe.start()
        if not probed.result():  # no probe to run (raises what the task raised): schedule in this open
            return PreparedWork(scheduled(ref, config, settings, clock, probed, kv_cache_tokens), settings, loaded)
    with clock.stage("probe"):  # the probe's generation holds the file only at checkpoints: readers get in
        probed = probe.run(model_path)
    return PreparedWork(scheduled(ref, config, settings, clock, probed, kv_cache_tokens), settings, loaded,
                        probe.generation)


def scheduled(ref: RunRef, config: JobConfig, settings: EngineSettings, clock: StageClock, upstream: State,
              kv_cache_tokens: int | None) -> RunRef:
    """The schedule stage. The probe is its one upstream in Prefect's graph, which then draws the
    stages in the pipeline's order (quote: the RunRef is not taken for predict_lengths' result)."""
    with clock.stage("schedule"):
        return schedule(quote(ref), config.k_bins, config.order,
                        min_shared_tokens=settings.block_size or DEFAULT_BLOCK_TOKENS,
                        max_num_seqs=settings.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
                        after=stamp_before(ref, "schedule"), wait_for=[upstream], kv_cache_tokens=kv_cache_tokens)


class ProbeStep:
    """The probe step: a few of the job's requests run first, and their real lengths calibrate
    the predictions of the rest before the schedule (tasks/probe.py). While the probe runs, the
    engine is kept full with the rest of the job in token order; what still runs when the probe
    has finished goes on into the main generation (the engine holds it, `Engine.left_running`).

    `start` chooses the probe (inside the stages' shared open of the database); `run`, only
    where it chose one, generates it and calibrates the rest. Each returns the state of its last
    task run, for the schedule's `wait_for` (the probe's tasks return no RunRef that would tell
    Prefect what comes after them)."""

    def __init__(self, ref: RunRef, config: JobConfig, settings: EngineSettings, fraction: float,
                 kv_cache_tokens: int | None) -> None:
        self.ref, self.config, self.settings = ref, config, settings
        self.args = (fraction, config.order, config.predictor, config.max_tokens,
                     settings.max_num_seqs or DEFAULT_MAX_NUM_SEQS)
        self.after = stamp_before(ref, "probe")
        self.generation: dict | None = None  # what `run` generated
        self.kv_cache_tokens = kv_cache_tokens

    def start(self) -> State:
        return start_probe(self.ref, *self.args, after=self.after, kv_cache_tokens=self.kv_cache_tokens,
                           return_state=True)

    def run(self, model_path: str) -> State:
        config = self.config
        self.generation = generate(self.ref, model_path, self.settings, sampling_defaults(config),
                                   config.checkpoint_every, until_probe_done=True, kv_admission=config.kv_admission)
        finished = finish_probe(self.ref, *self.args, generate_s=self.generation["generate_s"], after=self.after,
                                kv_cache_tokens=self.kv_cache_tokens, return_state=True)
        finished.result()
        return finished


def load_and_choose_engine(ref: RunRef, config: JobConfig, fingerprint: str, model_path: str,
                           clock: StageClock) -> tuple[EngineSettings, LoadResult]:
    """Start (or resume) the run, load its input, and choose the engine settings for the job's
    size (small jobs skip torch.compile's start-up); returns the settings and what load counted.
    A file without a valid request, or an
    engine option the engine would refuse, is a BatchBinError; the run is then marked failed."""
    with clock.stage("start"):
        start_run(ref, config, fingerprint, model_path)
    try:
        with clock.stage("load"):
            job = config.query_job()
            loaded = load(ref, config.input_path, fingerprint,
                          **({"query": job.query, "template": job.template, "field_order": job.field_order} if job else {}))
        if loaded.requests == 0:
            raise BatchBinError(no_valid_request_message(ref, config.input_name))
        settings = choose_engine_settings(detect_machine(), config.engine, requests=loaded.requests)
        record_engine(ref, settings)
    except BaseException:
        finish_run(ref, "failed")
        raise
    return settings, loaded


def sampling_defaults(config: JobConfig) -> SamplingDefaults:
    """The job's sampling settings, for requests that set none of their own."""
    return SamplingDefaults(config.max_tokens, config.temperature, config.top_p, config.seed, config.max_model_len)


def generate_scaled_out(ref: RunRef, config: JobConfig, model_path: str, settings: EngineSettings,
                        defaults: SamplingDefaults) -> dict:
    """The generate stage over `config.engines` engines of the Ray cluster at `config.ray_address`."""
    from batchbin.tasks.generate_ray import generate_on_ray

    return generate_on_ray(ref, model_path, config.engine, defaults, config.checkpoint_every, config.retry_errors,
                           config.ray_address, config.engines, min_shared_tokens=settings.block_size or DEFAULT_BLOCK_TOKENS,
                           max_num_seqs=settings.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
                           tensor_parallel_size=config.tensor_parallel_size)


def run_stages(ref: RunRef, config: JobConfig, fingerprint: str, model_path: str, output_path: Path,
               output_format: str, on_wait: Callable[[str], None]) -> dict:
    clock = StageClock()
    try:
        # the probe runs in this process's engine: not with the engines of a Ray cluster
        prepared = prepare_work(ref, config, fingerprint, model_path, clock, with_probe=not config.ray_address,
                                on_wait=on_wait)
        ref, settings = prepared.ref, prepared.settings
    except BaseException as error:
        finish_run(ref, "failed")
        if isinstance(error, BatchBinError):  # no valid request, an engine option the engine would refuse, ...
            return Failed(message=str(error))
        raise
    defaults = sampling_defaults(config)
    finished = False
    try:
        # generation holds the file only while it reads work or writes a checkpoint: readers get in
        with clock.stage("generate"):
            if config.ray_address:  # many engines on a Ray cluster (tasks/generate_ray.py)
                generation = generate_scaled_out(ref, config, model_path, settings, defaults)
            else:
                generation = generate(ref, model_path, settings, defaults, config.checkpoint_every, config.retry_errors,
                                      kv_admission=config.kv_admission)
            generation = with_probe_phase(generation, prepared.probe_generation)
        if config.check_agreement and not config.ray_address:  # a table job's answers in the user's field order
            with clock.stage("agreement"):
                generation = {**generation, **answer_agreement(ref, config, model_path, settings)}
        with db.session(ref.db_path, on_wait=on_wait):
            summary = report(ref, str(output_path), generation, clock.seconds, output_format, model_path)
            if "scale_out" in generation:
                summary = {**summary, "scale_out": generation["scale_out"]}
            finish_run(ref, "finished")  # only now: its report and output file are written
            finished = True
            learn_from_steps(ref)  # in the same open of the file
    except BaseException:
        if not finished:
            finish_run(ref, "failed")
        raise
    return summary


def learn_from_steps(ref: RunRef) -> None:
    """A finished run's engine steps refit this machine's step costs (in the report's open of
    the database); never the run's failure (the task logs its own problems)."""
    try:
        learn_step_costs(ref.db_path, ref.run_id)
    except Exception as error:
        get_run_logger().warning(f"step costs of this machine not refitted: {type(error).__name__}: {error}")


if __name__ == "__main__":
    from batchbin.flows.runtime import in_process_flow_runs

    with in_process_flow_runs():
        result = batch_inference(JobConfig(input_path=sys.argv[1] if len(sys.argv) > 1 else "examples/sample_prompts.jsonl",
                                           max_tokens=32))
    print(json.dumps(result, indent=2, default=str))
