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
from pathlib import Path
from typing import Iterator

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from batchbin import db
from batchbin.config import JobConfig, file_fingerprint
from batchbin.engine_settings import DEFAULT_MAX_NUM_SEQS, EngineSettings, choose_engine_settings, detect_machine
from batchbin.errors import BatchBinError
from batchbin.models import resolve_model
from batchbin.sqlfiles import run
from batchbin.tasks.common import RunRef, open_run_db
from batchbin.tasks.generate import SamplingDefaults, generate
from batchbin.tasks.load import detect_format, file_format, is_openai_batch_file, load, no_valid_request_message
from batchbin.tasks.predict import predict_lengths
from batchbin.tasks.prefixes import group_prefixes
from batchbin.tasks.report import report
from batchbin.tasks.schedule import schedule
from batchbin.tasks.tokenize import load_tokenizer, tokenize


@task(name="start run", cache_policy=NO_CACHE)
def start_run(ref: RunRef, config: JobConfig, fingerprint: str, model_path: str) -> RunRef:
    """Create or resume the run's row with its parameters."""
    with open_run_db(ref) as con:
        run(con, "runs.start_run", {
            "run_id": ref.run_id, "input_path": str(Path(config.input_path).resolve()), "fingerprint": fingerprint,
            "model": model_path, "config": config.model_dump_json(),
        })
    return ref


def record_engine(ref: RunRef, settings: EngineSettings) -> None:
    with open_run_db(ref) as con:
        run(con, "runs.set_engine", {"run_id": ref.run_id, "engine": json.dumps(settings.as_dict())})


def finish_run(ref: RunRef, status: str) -> None:
    with open_run_db(ref) as con:
        run(con, "runs.finish_run", {"run_id": ref.run_id, "status": status})


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
    """Fail early, with a message, on a missing file or an unknown format."""
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
        return "openai" if not parquet and is_openai_batch_file(config.input_path) else "batchbin"
    return config.output_format


def warm_up(config: JobConfig) -> None:
    """Do now the start-up work the stages would do first: prepare the model, load its tokenizer
    (tokenize) and import vLLM (generate). `batchbin run` does it while Prefect's API boots.
    A problem here is left for the flow to report (a missing model, say)."""
    try:
        load_tokenizer(resolve_model(config.model))
        import vllm  # noqa: F401
    except Exception:
        pass


@flow(name="batch-inference", log_prints=True)
def batch_inference(config: JobConfig) -> dict:
    """Run one batch job end to end and return its report.

    Problems with the user's input end the run as Failed with a one-line message (no traceback).
    """
    try:
        check_input(config)
        model_path = resolve_model(config.model)
        fingerprint = file_fingerprint(config.input_path)
        run_id = config.run_id(fingerprint)
        output_path = config.resolved_output_path(run_id)
        output_format = output_format_of(config, output_path)
    except BatchBinError as error:
        return Failed(message=str(error))
    ref = RunRef(db_path=str(Path(config.db_path).resolve()), run_id=run_id)
    with db.session(ref.db_path):  # one open of the file for the whole run
        return run_stages(ref, config, fingerprint, model_path, output_path, output_format)


def run_stages(ref: RunRef, config: JobConfig, fingerprint: str, model_path: str, output_path: Path,
               output_format: str) -> dict:
    clock = StageClock()
    with clock.stage("start"):
        start_run(ref, config, fingerprint, model_path)
    try:
        with clock.stage("load"):
            loaded = load(ref, config.input_path, fingerprint)
        if loaded.requests == 0:
            finish_run(ref, "failed")
            with open_run_db(ref) as con:
                rejects = run(con, "report.reject_examples", {"run_id": ref.run_id, "limit": 3}).fetchall()
            return Failed(message=no_valid_request_message(config.input_path, rejects))
        # chosen once the job's size is known (small jobs skip torch.compile's start-up)
        try:
            settings = choose_engine_settings(detect_machine(), config.engine, requests=loaded.requests)
        except BatchBinError as error:  # an engine option the engine would refuse
            finish_run(ref, "failed")
            return Failed(message=str(error))
        record_engine(ref, settings)
        block = settings.block_size or 16  # prefix-cache hits come in whole KV blocks
        with clock.stage("tokenize"):
            ref = tokenize(ref, model_path, config.max_model_len)
        with clock.stage("group_prefixes"):
            ref = group_prefixes(ref, min_shared_tokens=block)
        with clock.stage("predict_lengths"):
            ref = predict_lengths(ref, config.predictor, config.max_tokens)
        with clock.stage("schedule"):
            ref = schedule(ref, config.k_bins, config.order, min_shared_tokens=block,
                           max_num_seqs=settings.max_num_seqs or DEFAULT_MAX_NUM_SEQS)
        defaults = SamplingDefaults(config.max_tokens, config.temperature, config.top_p, config.seed, config.max_model_len)
        with clock.stage("generate"):
            generation = generate(ref, model_path, settings, defaults, config.checkpoint_every)
    except BaseException:
        finish_run(ref, "failed")
        raise
    finish_run(ref, "finished")
    return report(ref, str(output_path), generation, clock.seconds, output_format, model_path)


if __name__ == "__main__":
    from batchbin.prefect_runtime import in_process_flow_runs

    with in_process_flow_runs():
        result = batch_inference(JobConfig(input_path=sys.argv[1] if len(sys.argv) > 1 else "examples/sample_prompts.jsonl",
                                           max_tokens=32))
    print(json.dumps(result, indent=2, default=str))
