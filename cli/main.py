"""The `batchbin` command: a thin layer over the flows (every run is a Prefect flow run).

    batchbin run prompts.jsonl --k-bins 4
    batchbin sql "select * from run_summary"
    batchbin doctor
"""

from __future__ import annotations

import json
import signal
import warnings
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click

from batchbin.cli.options import engine_options, job_options, split_options
from batchbin.cli.plugins import PluginGroup, fail
from batchbin.cli.simulate import simulate_group
from batchbin.errors import BatchBinError
from batchbin.flows.runtime import api_started_meanwhile, in_process_flow_runs



# `batchbin bench` is a plugin command, imported only when used (cli/plugins.py)
@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """BatchBin: offline LLM batch inference on vLLM, faster, with results in DuckDB."""


@main.command("run")
@click.argument("input_path", type=click.Path(dir_okay=False), required=False)
@job_options
@engine_options
@click.option("--verbose", is_flag=True, help="Show every log line of the run and the engine's own output "
                                              "(default: a progress bar; the engine's output goes to DB.engine.log).")
@click.option("--retrain-after", type=click.IntRange(min=1), default=None,
              help="After the run, retrain the model's length predictor (quickly) when at least this many of its "
                   "results are new to it; `--predictor auto` takes it from 200 rows. Default: never.")
def run_command(input_path: str, verbose: bool, retrain_after: int | None, **options) -> None:
    """Run a batch job: every request of INPUT_PATH (JSONL, Parquet or CSV; a .sql file: a query)
    or of --query through the model.

    \b
    Examples:
      batchbin run examples/sample_prompts.jsonl --max-tokens 64 --db out/batchbin.duckdb
      batchbin run --query "from 'flights.parquet'" --template "Label it.\n{fields}" --field-order auto
    """
    from batchbin.config import EngineOptions, JobConfig

    job, engine = split_options(options)
    try:
        config = JobConfig(input_path=input_path, engine=EngineOptions(**engine), **job)
    except Exception as error:
        fail(str(error))
    try:
        with quiet_terminal(config, verbose), in_process_flow_runs(), progress_display(verbose):
            with api_started_meanwhile():  # ~3-4 s of booting, while this process loads its libraries
                from batchbin.flows.batch import batch_inference, warm_up

                warm_up(config)
            state = batch_inference(config, retrain_after=retrain_after, return_state=True)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (entry turns it into this)
        from batchbin.store.runs import stopped_message

        fail(stopped_message(config))
    if not state.is_completed():
        fail(state.message or "the run failed")
    print_summary(state.result())


@contextmanager
def quiet_terminal(config, verbose: bool) -> Iterator[None]:
    """Unless `verbose`: only warnings and errors of the run in the terminal (all of it still
    goes to Prefect's log), and the engine's start-up output into a file beside the database.
    Settings a user made in the environment are kept; the block's own are undone after it."""
    import os
    import warnings

    from batchbin.engine.quiet import ENGINE_LOG_VARIABLE

    if verbose:
        yield
        return
    quiet = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
             ENGINE_LOG_VARIABLE: str(Path(config.db_path).resolve().with_suffix(".engine.log"))}
    added = [name for name in quiet if name not in os.environ]
    os.environ.update({name: quiet[name] for name in added})
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextmanager
def progress_display(verbose: bool) -> Iterator[None]:
    """A progress bar of the generation (in a terminal), or a progress line every 30 s (in a
    log file, in CI); nothing with --verbose, whose log lines say it already."""
    if verbose:
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from batchbin.engine.progress import listening

    console = Console(stderr=True)
    if not console.is_terminal:
        last = [0.0]

        def print_line(progress) -> None:
            if progress.elapsed_s - last[0] >= 30 or progress.requests_done == progress.requests_total:
                last[0] = progress.elapsed_s
                console.print(f"generated {progress.line()}", highlight=False, soft_wrap=True)

        with listening(print_line):
            yield
        return
    bar = Progress(TextColumn("generating"), BarColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                   console=console, transient=True)
    task = bar.add_task("", total=None, start=False)

    def show(progress) -> None:
        if not bar.live.is_started:
            bar.start()
            bar.start_task(task)
        bar.update(task, completed=progress.requests_done, total=progress.requests_total, description=progress.line())

    try:
        with listening(show):
            yield
    finally:
        bar.stop()


def print_summary(report: dict) -> None:
    from batchbin.store.queries import sql

    tps = report.get("output_tps")
    reuse = report.get("reuse_ratio")
    lines = [
        "",
        f"BatchBin run {report['run_id']} {report['status'] or ''}".rstrip(),
        f"  requests        {report['requests']} valid, {report['rejects']} rejected"
        + (" (see: batchbin sql \"select * from rejects\")" if report["rejects"] else ""),
        f"  completions     {report['completed']} ok, {report['errors']} errors ({report['generated_now']} generated now"
        + (f", {report['retried_errors']} errors retried" if report.get("retried_errors") else "")
        + (f", {report['answered_from_earlier_runs']} answered from earlier runs"
           if report.get("answered_from_earlier_runs") else "")
        + (f", {report['duplicates']} identical requests answered once" if report.get("duplicates") else "") + ")",
        f"  output tokens   {report['output_tokens'] or 0}"
        + (f", {tps:.0f} tokens/s over {report['generate_s']:.1f} s of generation" if tps else ""),
        f"  engine          {report['preemptions']} preemptions, KV cache at most {report['peak_kv_cache_usage']:.0%} full"
        if report.get("peak_kv_cache_usage") is not None else None,
        f"  prefix cache    {report['cached_tokens'] or 0} prompt tokens reused"
        + (f" ({reuse:.0%} of the ideal {report['ideal_cached_tokens']})" if reuse is not None else ""),
        f"  schedule        {report['schedule_order']} ({report['schedule_reason']})" if report.get("schedule_order") else None,
        tail_line(report.get("schedule_trace")),
        *predictor_summary_lines(report),
        retrained_line(report.get("retrained")),
        f"  retraining      started: flow run {report['retraining_flow_run']}" if report.get("retraining_flow_run") else None,
        f"  agreement       {report['answer_agreement']:.0%} of {report['answer_agreement_rows']} sampled rows answered "
        f"the same with the fields in the query's order (greedy; {report.get('answer_first_word_agreement') or 0:.0%} "
        "the same first word)" if report.get("answer_agreement") is not None else None,
        scale_out_line(report.get("scale_out")),
        time_line(report),
        f"  database        {report['db_path']}",
        f"  output file     {report['output_path']} ({report['output_rows']} rows"
        + (", OpenAI batch output)" if report.get("output_format") == "openai" else ")"),
        "",
        "Try:",
        f"  batchbin sql --db {report['db_path']} \"{sql('report.example_query')}\"",
    ]
    click.echo("\n".join(line for line in lines if line is not None))


def retrained_line(retrained: dict | None) -> str | None:
    """The model's predictor retrained in this process after the run (--retrain-after)."""
    if not retrained:
        return None
    from batchbin.predictors.registry import AUTO_MIN_OWN_ROWS

    enough = (retrained.get("train_rows") or 0) >= AUTO_MIN_OWN_ROWS
    return (f"  retrained       {retrained['version']} learnt {retrained['train_rows']} answers of {retrained['model']}; "
            + ("the next --predictor auto run takes it" if enough
               else f"--predictor auto takes it from {AUTO_MIN_OWN_ROWS} answers"))


def predictor_summary_lines(report: dict) -> list[str]:
    """Which length predictor the run used, why, and how honest it was on this run."""
    from batchbin.tasks.report import predictor_lines

    return [f"  {label:<15} {text}".rstrip() for label, text in predictor_lines(report)]


def tail_line(trace: dict | None) -> str | None:
    """How much of the generation ran with the engine under half full (the schedule's tail)."""
    if not trace or not trace.get("step_s"):
        return None
    return (f"  tail            {trace['tail_s']:.1f} s of {trace['step_s']:.1f} s in steps with under half of "
            f"max_num_seqs running; {trace['mean_running']:.0f} sequences per step on average")


def scale_out_line(scale_out: dict | None) -> str | None:
    """The engines of a run spread over a Ray cluster, and what losing any of them cost."""
    if not scale_out:
        return None
    engines = scale_out["engines"]
    lost = sum(1 for engine in engines if engine.get("lost"))
    return (f"  engines         {len(engines)} on Ray, results per engine "
            f"{'/'.join(str(engine.get('results', 0)) for engine in engines)}"
            + (f", {lost} lost ({scale_out['requeued']} requests run again elsewhere)" if lost else "")
            + (f", {scale_out['duplicates']} duplicate results dropped" if scale_out["duplicates"] else ""))


def time_line(report: dict) -> str:
    stages = report.get("stage_seconds") or {}
    probe_generation = (report.get("length_probe") or {}).get("generate_s") or 0.0  # counted in generate_s
    other = max(0.0, sum(seconds for stage, seconds in stages.items() if stage != "generate") - probe_generation)
    return (f"  time            {report.get('engine_start_s') or 0:.1f} s engine start, "
            f"{report.get('generate_s') or 0:.1f} s generation, {other:.1f} s other stages "
            "(batchbin sql \"select report->'stage_seconds' from run_reports\")")


@main.command("sql")
@click.argument("query")
@click.option("--db", "db_path", default="batchbin.duckdb", show_default=True, help="BatchBin database file.")
@click.option("--max-rows", default=40, show_default=True, help="Rows to print.")
def sql_command(query: str, db_path: str, max_rows: int) -> None:
    """Run a read-only SQL QUERY on the database and print the result.

    Example: batchbin sql "select run_id, requests, output_tokens, reuse_ratio from run_summary"
    """
    import duckdb

    from batchbin.store import db

    try:
        con = db.connect(db_path, read_only=True)
        relation = con.sql(query)
        if relation is None:
            click.echo("ok")
            return
        relation.show(max_rows=max_rows, max_width=200)
    except FileNotFoundError as error:
        fail(str(error))
    except duckdb.Error as error:
        fail(str(error).strip())


@main.command("doctor")
@click.option("--requests", type=int, default=None,
              help="Settings for a job of this many requests (default: a large job).")
@click.option("--calibrate", is_flag=True,
              help="Fit this machine's step costs with a synthetic job of about a minute on the default model "
                   "(the engine kind a job of --requests gets; default: eager), for `batchbin plan`'s estimates.")
@engine_options
def doctor_command(requests: int | None, calibrate: bool, **options) -> None:
    """Print this machine and the vLLM engine settings BatchBin chooses for it, with reasons,
    and the step costs `batchbin plan` would estimate with; --calibrate fits this machine's.

    \b
    Examples:
      batchbin doctor --requests 50 --max-num-seqs 32
      batchbin doctor --calibrate
    """
    from batchbin.config import EngineOptions
    from batchbin.engine.settings import choose_engine_settings
    from batchbin.engine.machine import detect_machine

    _, engine = split_options(options)
    machine = detect_machine()
    try:
        settings = choose_engine_settings(machine, EngineOptions(**engine), requests=requests)
    except BatchBinError as error:
        fail(str(error))
    flags = sorted({"avx2", "avx512f", "avx512_bf16", "amx_bf16"} & machine.cpu_flags)
    click.echo(f"CPU        {machine.cpu_model} ({len(machine.cores)} cores; {', '.join(flags) or 'no AVX2'})")
    free = f", {machine.mem_available_gib:.1f} GiB free" if machine.mem_available_gib is not None else ""
    click.echo(f"memory     {machine.mem_total_gib:.1f} GiB total{free}")
    click.echo(f"GPU        {machine.gpu or 'none'}")
    click.echo(f"engine settings for {f'a job of {requests} requests' if requests else 'a large job'}:")
    for name, value in settings.as_dict().items():
        if name != "reasons":
            click.echo(f"  {name:24} {str(value):12} {settings.reasons.get(name, '')}")
    if calibrate:
        calibrate_step_costs(EngineOptions(**engine), requests)
        return
    from batchbin.engine.models import default_model_dir
    from batchbin.sim.machine_fits import choose_cost

    try:
        chosen = choose_cost(settings.as_dict(reasons=False), str(default_model_dir()))
    except BatchBinError as error:
        fail(str(error))
    click.echo(chosen.line + (f"\n  note: {chosen.warning}" if chosen.warning else ""))


def calibrate_step_costs(engine, requests: int | None) -> None:
    """`batchbin doctor --calibrate`: the calibration job (flows/calibrate.py), its fit printed."""
    import tempfile
    from types import SimpleNamespace

    from batchbin.flows.calibrate import calibrate, format_calibration

    click.echo("calibrating this machine's step costs (a synthetic job of about a minute) ...")
    with tempfile.TemporaryDirectory(prefix="batchbin-calibrate-") as folder:
        where = SimpleNamespace(db_path=str(Path(folder) / "calibration.duckdb"))
        try:
            with quiet_terminal(where, verbose=False), in_process_flow_runs():
                calibration = calibrate(engine, requests, folder=folder)
        except BatchBinError as error:
            fail(str(error))
    click.echo(format_calibration(calibration))


@main.command("prepare-model")
def prepare_model_command() -> None:
    """Convert the embedded default model (SmolLM2-135M-Instruct) once; print its folder."""
    from batchbin.engine.models import prepare_default_model

    try:
        click.echo(prepare_default_model(verbose=True))
    except BatchBinError as error:
        fail(str(error))


@main.command("train-predictor")
@click.option("--from", "source", type=click.Choice(["runs", "sharegpt"]), default="runs", show_default=True,
              help="runs: the finished runs of one model in --db; sharegpt: ShareGPT's real answers "
                   "(the shipped predictor; needs the bench extra).")
@click.option("--db", "db_path", default="batchbin.duckdb", show_default=True, help="BatchBin database file.")
@click.option("--model", default=None, help="Whose runs to learn from (default: the model of the newest run).")
@click.option("--max-tokens", default=256, show_default=True, help="Default max_tokens of requests without one.")
@click.option("--out", default=None, help="--from sharegpt: the checkpoint to write (default: the shipped one).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="--from sharegpt: read only the first N conversations (a quick check).")
def train_predictor_command(source: str, db_path: str, model: str | None, max_tokens: int, out: str | None,
                            limit: int | None) -> None:
    """(Re)train the output-length predictor on one model's finished runs, or on ShareGPT.

    \b
    Examples:
      batchbin train-predictor --db batchbin.duckdb
      batchbin train-predictor --from sharegpt
    """
    if source == "sharegpt":
        from batchbin.predictors.registry import SHIPPED_PATH
        from batchbin.predictors.train import train_from_sharegpt

        try:
            trained = train_from_sharegpt(out or SHIPPED_PATH, limit=limit)
        except BatchBinError as error:
            fail(str(error))
        click.echo(json.dumps(trained, indent=2))
        return
    from batchbin.flows.train import train_length_predictor

    if not Path(db_path).exists():
        fail(f"no BatchBin database at {db_path}; run `batchbin run` first")
    with in_process_flow_runs():
        state = train_length_predictor(db_path=db_path, default_max_tokens=max_tokens, model=model, return_state=True)
    if not state.is_completed():
        fail(state.message or "training failed")
    click.echo(json.dumps(state.result(), indent=2, default=str))


@main.command("plan")
@click.argument("input_path", type=click.Path(dir_okay=False), required=False)
@job_options
@engine_options
@click.option("--gpu", default=None, help="Also estimate the job on this GPU: h100, h200, a100 or l4.")
@click.option("--model-size", default=None, help="The model size for --gpu: 135m, 1b, 3b, 8b or 70b.")
@click.option("--verbose", is_flag=True, help="Show every log line of the stages.")
def plan_command(input_path: str, gpu: str | None, model_size: str | None, verbose: bool, **options) -> None:
    """Dry run: predicted output tokens, prefix reuse, the order chosen and why, and the
    estimated generation time on this machine (and on a GPU), without generating.

    The stages before generation run into a temporary database, or into --db when given (a
    later `batchbin run` of the same file with that --db reuses them).

    Example: batchbin plan examples/sample_prompts.jsonl --gpu h100 --model-size 8b
    """
    from batchbin.config import EngineOptions, JobConfig
    from batchbin.flows.plan import format_plan, make_plan, planning_database

    if (gpu is None) != (model_size is None):
        fail("--gpu and --model-size go together (e.g. --gpu h100 --model-size 8b)")
    job, engine = split_options(options)
    keep = "db_path" in job
    try:
        with planning_database(job.pop("db_path", None)) as db_path:
            config = JobConfig(input_path=input_path, db_path=db_path, engine=EngineOptions(**engine), **job)
            with quiet_terminal(config, verbose), in_process_flow_runs(), warnings.catch_warnings():
                # the stages run as tasks outside a flow: Prefect warns that their logs have no flow run
                warnings.filterwarnings("ignore", message=".*without a flow run id.*")
                plan = make_plan(config, gpu=(gpu, model_size) if gpu else None, keep_db=keep)
    except BatchBinError as error:
        fail(str(error))
    except ValueError as error:  # a setting pydantic refuses
        fail(str(error))
    click.echo(format_plan(plan))


main.add_command(simulate_group)

# the commands that build a vLLM engine, or show the settings one would get
ENGINE_COMMANDS = ("run", "bench", "doctor")


def entry() -> None:
    """The `batchbin` command. The engine commands restart once with tcmalloc and Intel OpenMP
    preloaded (where found, on CPU), so that vLLM's engine can run in this process with them
    (batchbin/engine/preload.py)."""
    from batchbin.engine.preload import restart_with_preload

    engine_command = len(sys.argv) > 1 and sys.argv[1] in ENGINE_COMMANDS
    if engine_command:
        restart_with_preload(sys.argv)
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        main(prog_name="batchbin")
    except SystemExit as done:
        if not engine_command:
            raise
        exit_without_teardown(done.code)


def stop_on_sigterm(signum, frame) -> None:
    """SIGTERM (a scheduler, `kill`, a container stop) stops a run as Ctrl-C does: the results
    finished so far are stored, and the message says how to resume."""
    raise KeyboardInterrupt("SIGTERM")


def exit_without_teardown(code: int | str | None) -> None:
    """End an engine command the quick way, with everything that must run at exit done.

    Python's own teardown of vLLM, torch and an engine's memory took 2-4 s after every `batchbin
    run` and saves nothing: the database and the output file are closed by then. So: stop an
    engine core that has a process of its own, run the exit handlers (Prefect stops its API
    server and sends its last logs and events; logging flushes), flush the output, and leave."""
    import atexit
    import os

    from batchbin.engine.pool import current_engine, shutdown_engine

    engine = current_engine()
    if engine is not None and not engine.settings.in_process:
        shutdown_engine()
    if isinstance(code, str):  # sys.exit("message"): print it, as Python would
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    entry()
