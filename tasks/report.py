"""Stage 7, report: the run's numbers (throughput, prefix-cache reuse against the ideal,
predictor quality) as a JSON row in `run_reports`, a Prefect artifact under a fixed key, SQL
views for users, and the output file (JSONL or Parquet, keyed by the user's ids, input order).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import duckdb
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from batchbin.io import charts
from batchbin.errors import BatchBinError
from batchbin.io.openai_batch import output_line
from batchbin.io.readers import file_format
from batchbin.store.queries import execute, fetch_arrow, fetch_one, row_batches
from batchbin.store.runs import RunRef, open_run_db
from batchbin.tasks.common import stage_task_options

ARTIFACT_KEY = "batchbin-run-report"
TABLE_ARTIFACT_KEY = "batchbin-run-report-table"


def served_model_name(model_path: str) -> str:
    """The model's name in OpenAI output: a local folder's name, else the Hugging Face id."""
    path = Path(model_path)
    return path.name if path.is_dir() else model_path


def export_results(con: duckdb.DuckDBPyConnection, run_id: str, path: str | Path, output_format: str = "batchbin",
                   model_path: str = "") -> int:
    """Write the run's results to .jsonl (default) or .parquet, or as an OpenAI batch output
    file (`output_format` "openai"); return the row count.

    The file is written under a temporary name beside it and renamed when complete, so a reader
    (the nightly consumer) sees the old file or the whole new one, never half of one."""
    path = Path(path)
    check_output_folder(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        if output_format == "openai":
            written = write_openai_output(con, run_id, partial, model_path)
        else:
            copy_format = "parquet" if file_format(path) == "parquet" else "json"
            written = execute(con, "report.export_results", {"run_id": run_id, "path": str(partial), "format": copy_format}
                          ).fetchone()[0]  # COPY returns its row count
        os.replace(partial, path)
    except BaseException as error:
        partial.unlink(missing_ok=True)
        if isinstance(error, (OSError, duckdb.IOException)):
            raise BatchBinError(f"cannot write the output file {path} ({error}); every result is in the database: "
                                "run the same command again to write it") from error
        raise
    return written


def check_output_folder(path: str | Path) -> None:
    """The output file's folder exists or can be made, and is a folder: checked before a run
    starts, so a job does not generate for hours and then fail to write its file."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BatchBinError(f"cannot write the output file {path}: its folder {folder} cannot be made "
                            f"({error.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BatchBinError(f"cannot write the output file {path}: its folder {folder} is not writable")


def write_openai_output(con: duckdb.DuckDBPyConnection, run_id: str, path: Path, model_path: str) -> int:
    """The run as OpenAI batch output lines, one per input line, in input order."""
    model, created, written = served_model_name(model_path), int(time.time()), 0
    with open(path, "w", encoding="utf-8") as handle:
        for rows in row_batches(con, "report.export_openai_rows", {"run_id": run_id}):
            handle.writelines(json.dumps(output_line(row, model, created), ensure_ascii=False) + "\n" for row in rows)
            written += len(rows)
    return written


def build_report(con: duckdb.DuckDBPyConnection, run_id: str, generation: dict, predictor_quality: dict | None) -> dict:
    """One dict with everything a user wants to know about the run."""
    summary = fetch_arrow(con, "report.summary_of_run", {"run_id": run_id}).to_pylist()[0]
    for key in ("started_at", "finished_at"):
        summary[key] = None if summary[key] is None else str(summary[key])
    generate_s = generation.get("generate_s") or 0.0
    order, order_reason = fetch_one(con, "report.schedule_choice", {"run_id": run_id}) or (None, None)
    report = {
        **summary,
        "generated_now": generation.get("generated", 0),
        "retried_errors": generation.get("retried_errors", 0),
        "duplicates": fetch_one(con, "report.duplicate_count", {"run_id": run_id})[0],
        "preemptions": generation.get("preemptions", 0),
        "peak_kv_cache_usage": generation.get("peak_kv_cache_usage"),
        "kv_admission": generation.get("kv_admission"),
        "generate_s": round(generate_s, 2),
        "engine_start_s": round(generation.get("engine_start_s") or 0.0, 1),
        "output_tokens_now": generation.get("output_tokens", 0),
        "output_tps": round(generation.get("output_tokens", 0) / generate_s, 1) if generate_s else None,
        "schedule_order": order,
        "schedule_reason": order_reason,
        "predictor_quality": predictor_quality,
        "length_probe": next(iter(fetch_arrow(con, "report.probe_of_run", {"run_id": run_id}).to_pylist()), None),
        "schedule_trace": schedule_trace(con, run_id, generation.get("max_num_seqs")),
        "bins": fetch_arrow(con, "report.bins_of_run", {"run_id": run_id}).to_pylist(),
        # a table job with --check-agreement: the share of sampled rows answered the same in the user's field order
        **{key: generation[key] for key in ("answer_agreement", "answer_agreement_rows", "answer_first_word_agreement")
           if key in generation},
    }
    if report.get("reuse_ratio") is not None:
        report["reuse_ratio"] = round(float(report["reuse_ratio"]), 3)
    return report


def schedule_trace(con: duckdb.DuckDBPyConnection, run_id: str, max_num_seqs: int | None) -> dict | None:
    """What the schedule did, from the run's engine steps (report.schedule_trace); None without
    steps. The tail counts steps with fewer than half of `max_num_seqs` sequences running."""
    rows = fetch_arrow(con, "report.schedule_trace", {"run_id": run_id, "half_seqs": (max_num_seqs or 0) / 2}).to_pylist()
    return rows[0] if rows else None


def report_table(report: dict) -> list[dict]:
    """The report's plain values as rows of a Prefect table artifact (metric, value)."""
    return [{"metric": key, "value": str(value)} for key, value in report.items()
            if not isinstance(value, (dict, list))] + [
        {"metric": f"schedule {key}", "value": str(value)} for key, value in (report.get("schedule_trace") or {}).items()]


def scores_text(scores: dict) -> str:
    """Kendall tau, Spearman, k=4 bin accuracy and mean absolute error, in one line."""
    def number(key: str, digits: int = 2) -> str:
        value = scores.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"

    return (f"Kendall tau {number('kendall_tau')}, Spearman {number('spearman')}, "
            f"k=4 bin accuracy {number('bin_accuracy_k4')}, mean absolute error {number('mae', 1)} tokens")


def predictor_lines(report: dict) -> list[tuple[str, str]]:
    """The predictor's honesty in plain words, as (label, text) lines: which predictor, trained on
    what and how many rows, its held-out scores, why it was chosen, whether the probe ran and why,
    and how the lengths the schedule used and the predictor's own did on this run."""
    quality = report.get("predictor_quality") or {}
    honesty = quality.get("honesty")
    if not honesty:
        return []
    lines = []
    for origin in honesty.get("origins") or []:
        rows = origin.get("train_rows")
        held = origin.get("held_out") or {}
        lines.append(("predictor", f"{origin['version']} ({origin['kind']}), trained on {origin['trained_on']}"
                      + (f", {rows:,} rows" if rows else "")
                      + ("; the served model's own" if origin.get("own") else "; not the served model's answers")))
        if held:
            lines.append(("", f"held out ({held.get('n_test') or '?'} rows): {scores_text(held)}"))
    if honesty.get("why"):
        lines.append(("", f"chosen: {honesty['why']}"))
    if honesty.get("probe_why"):
        lines.append(("in-job probe", (f"{honesty['probe_requests']} requests ran first: " if honesty.get("probe_requests")
                                else "none: ") + honesty["probe_why"]))
    left_out = f" (the probe's {honesty['probe_requests']} left out)" if honesty.get("probe_requests") else ""
    lines.append(("lengths", f"on {honesty['scored_requests']} finished requests{left_out}:"))
    lines.append(("", f"as scheduled: {scores_text(honesty['planned'])}"))
    if honesty.get("probe_requests"):
        lines.append(("", f"predictor alone (without the probe): {scores_text(honesty['raw'])}"))
    return lines


def report_markdown(report: dict) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in report.items() if not isinstance(value, (dict, list)))
    quality = report.get("predictor_quality") or {}
    quality_rows = "\n".join(f"| {key} | {value} |" for key, value in quality.items() if not isinstance(value, dict))
    honesty_rows = "\n".join(f"| {label} | {text} |" for label, text in predictor_lines(report))
    probe_rows = "\n".join(f"| {key} | {value} |" for key, value in (report.get("length_probe") or {}).items())
    stage_rows = "\n".join(f"| {stage} | {seconds:.2f} |" for stage, seconds in (report.get("stage_seconds") or {}).items())
    trace_rows = "\n".join(f"| {key} | {value} |" for key, value in (report.get("schedule_trace") or {}).items())
    bin_rows = "\n".join(f"| {b['bin']} | {b['requests']} | {b['predicted_tokens']} | {b['output_tokens']} | "
                         f"{b['first_finished_s']} | {b['last_finished_s']} |" for b in report.get("bins") or [])
    return (f"# BatchBin run {report['run_id']}\n\n| metric | value |\n|---|---|\n{rows}\n\n"
            + (f"## What the schedule did\n\n| metric | value |\n|---|---|\n{trace_rows}\n\n" if trace_rows else "")
            + (f"## Bins (0 = longest predicted)\n\n| bin | requests | predicted tokens | output tokens | first finished s "
               f"| last finished s |\n|---|---|---|---|---|---|\n{bin_rows}\n\n" if bin_rows else "")
            + (f"## The length predictor on this run\n\n| | |\n|---|---|\n{honesty_rows}\n\n" if honesty_rows else "")
            + (f"## Predictor quality\n\n| metric | value |\n|---|---|\n{quality_rows}\n\n" if quality_rows else "")
            + (f"## In-job probe\n\n| metric | value |\n|---|---|\n{probe_rows}\n\n" if probe_rows else "")
            + (f"## Time by stage\n\n| stage | seconds |\n|---|---|\n{stage_rows}\n" if stage_rows else ""))


@task(**{**stage_task_options("report"), "persist_result": False})
def report(ref: RunRef, output_path: str, generation: dict, stage_seconds: dict[str, float] | None = None,
           output_format: str = "batchbin", model_path: str = "") -> dict:
    """Store the run report, publish it as an artifact and export the output file.

    `stage_seconds`: wall seconds per stage so far; this stage adds its own ("report").
    `output_format`: "batchbin" or "openai" (an OpenAI batch output file, for `model_path`)."""
    from batchbin.predictors.evaluate import run_prediction_quality

    started = time.perf_counter()
    with open_run_db(ref) as con:
        quality = run_prediction_quality(con, ref.run_id)
        summary = build_report(con, ref.run_id, generation, quality)
        summary["output_rows"] = export_results(con, ref.run_id, output_path, output_format, model_path)
        summary["output_path"] = str(output_path)
        summary["output_format"] = output_format
        summary["db_path"] = ref.db_path
        summary["stage_seconds"] = {**(stage_seconds or {}), "report": round(time.perf_counter() - started, 3)}
        # the flow marks the run finished as soon as this report and the output file are written
        summary["status"] = "finished"
        summary["finished_at"] = str(fetch_one(con, "report.finished_now")[0])
        execute(con, "report.store_report", {"run_id": ref.run_id, "report": json.dumps(summary, default=str)})
        chart_data = charts.read_chart_data(con, ref.run_id)
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=report_markdown(summary), description="BatchBin run report")
    create_table_artifact(key=TABLE_ARTIFACT_KEY, table=report_table(summary), description="BatchBin run report, as a table")
    charts.publish_charts(chart_data)  # drawn after the database is closed: its lock is not held for it
    return summary
