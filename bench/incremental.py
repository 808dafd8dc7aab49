"""The `incremental` benchmark: a job, then the same job again as a new file with 10% new rows
and 5% changed rows, the way a nightly job's inbox grows. BatchBin answers the unchanged rows
from the first run's results (tasks/reuse.py) and generates only the new and changed ones; the
capable user (plain vLLM with BatchBin's engine settings, prompts sorted by token ids) runs the
whole second file again.

    batchbin bench --workload incremental --requests 480         # base workload: mixed-length
    python -m batchbin.bench.incremental bench-out/incremental 480 [base-workload]

Checks, printed and in incremental.json: the second run generated only new and changed rows,
and every one of those it did not generate was answered with an identical earlier request's
answer (a new row can repeat an old prompt); its generation time against the first run's, the
probe's phase included in both (target: at most 15%); every unchanged row answered from the
first run, its output byte-identical to the first run's. Greedy decoding throughout. Engines are built and
warmed up outside the timed regions; each timed region runs from the input file to its results file.
"""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path

from batchbin.bench.harness import machine_record, plain_vllm
from batchbin.bench.workloads import make_workload, write_jsonl
from batchbin.config import EngineOptions, JobConfig
from batchbin.engine.machine import detect_machine
from batchbin.engine.pool import get_engine, reset_prefix_cache
from batchbin.engine.settings import choose_engine_settings
from batchbin.flows.runtime import in_process_flow_runs

BASE_WORKLOAD = "mixed-length"
DEFAULT_REQUESTS = 480
NEW_SHARE = 0.10      # rows added to the second file
CHANGED_SHARE = 0.05  # rows of the first file whose prompt changes in the second
TARGET_GENERATION_SHARE = 0.15


def changed_request(row: dict) -> dict:
    """The row with its last message (or prompt) reworded: another prompt, the same id."""
    row = copy.deepcopy(row)
    if row.get("messages"):
        row["messages"][-1]["content"] = "Please answer this one: " + row["messages"][-1]["content"]
    else:
        row["prompt"] = "Please answer this one: " + row["prompt"]
    return row


def two_jobs(n_requests: int, seed: int = 0, workload: str = BASE_WORKLOAD) -> tuple[list[dict], list[dict], set, set]:
    """(first file's rows, second file's rows, ids of the new rows, ids of the changed rows)."""
    new_count, changed_count = round(n_requests * NEW_SHARE), round(n_requests * CHANGED_SHARE)
    rows = make_workload(workload, n_requests + new_count, seed)
    first, new = rows[:n_requests], rows[n_requests:]
    changed = set(random.Random(f"incremental:{seed}").sample([row["id"] for row in first], changed_count))
    second = [changed_request(row) if row["id"] in changed else row for row in first] + new
    return first, second, {row["id"] for row in new}, changed


def read_outputs(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8") as handle:
        return {str(row["id"]): row["output"] for row in map(json.loads, handle)}


def answered_how(db_path: Path, run_id: str) -> dict[str, str]:
    """How each request of the run got its answer: generated, copied (an identical request of
    the run) or reused (an earlier run's)."""
    from batchbin.store import db
    from batchbin.store.queries import execute

    con = db.connect(db_path, read_only=True)
    try:
        return dict(execute(con, "bench.answered_how", {"run_id": run_id}).fetchall())
    finally:
        con.close()


def run_job(input_path: Path, db_path: Path, output_path: Path, engine_options: EngineOptions, max_tokens: int,
            max_model_len: int) -> tuple[dict, float]:
    """One BatchBin run (the flow, in this process); returns its report and its wall seconds."""
    from batchbin.engine.pool import current_engine
    from batchbin.flows.batch import batch_inference

    if current_engine() is not None:
        reset_prefix_cache(current_engine())
    config = JobConfig(input_path=str(input_path), db_path=str(db_path), output_path=str(output_path),
                       max_tokens=max_tokens, max_model_len=max_model_len, temperature=0.0, engine=engine_options)
    started = time.perf_counter()
    report = batch_inference(config)
    return report, time.perf_counter() - started


def run_incremental(out_dir: Path, n_requests: int | None = None, seed: int = 0, workload: str = BASE_WORKLOAD,
                    engine_options: EngineOptions | None = None, default_max_tokens: int = 64,
                    max_model_len: int = 2048, log=print) -> dict:
    """Run the benchmark (module doc); returns incremental.json's content (also written to out_dir)."""
    from batchbin.engine.models import resolve_model

    out_dir.mkdir(parents=True, exist_ok=True)
    n = n_requests or DEFAULT_REQUESTS
    first, second, new_ids, changed_ids = two_jobs(n, seed, workload)
    first_path, second_path = write_jsonl(first, out_dir / "first.jsonl"), write_jsonl(second, out_dir / "second.jsonl")
    db_path = out_dir / "incremental.duckdb"
    for stale in (db_path, db_path.with_suffix(".duckdb.wal"), out_dir / "warmup.duckdb"):
        stale.unlink(missing_ok=True)
    machine = detect_machine()
    model_path = resolve_model("default")
    engine_options = engine_options or EngineOptions()
    tuned = choose_engine_settings(machine, engine_options)  # the settings of a large job, on both sides
    engine_options = engine_options.model_copy(update={"enforce_eager": tuned.enforce_eager})
    log(f"bench incremental ({workload}): {len(first)} requests, then {len(second)} ({len(new_ids)} new, "
        f"{len(changed_ids)} changed)")
    with in_process_flow_runs():
        engine = get_engine(model_path, tuned, max_model_len)
        warmup = first[:8]
        plain_vllm("warm-up", engine, model_path, warmup, "shuffled", seed, 8, max_model_len)
        run_job(write_jsonl(warmup, out_dir / "warmup.jsonl"), out_dir / "warmup.duckdb", out_dir / "warmup.out.jsonl",
                engine_options, 8, max_model_len)
        one, one_wall = run_job(first_path, db_path, out_dir / "first.out.jsonl", engine_options, default_max_tokens,
                                max_model_len)
        log(f"  batchbin first   {one_wall:8.1f} s wall, {one['generate_s']:7.1f} s generation, "
            f"{one['generated_now']} generated")
        two, two_wall = run_job(second_path, db_path, out_dir / "second.out.jsonl", engine_options,
                                default_max_tokens, max_model_len)
        log(f"  batchbin second  {two_wall:8.1f} s wall, {two['generate_s']:7.1f} s generation, "
            f"{two['generated_now']} generated, {two['answered_from_earlier_runs']} answered from the first run")
        sorted_run = plain_vllm("vllm-sorted", engine, model_path, second_path, "sorted", seed, default_max_tokens,
                                max_model_len, out_dir / "vllm-sorted.out.jsonl")
        log(f"  vllm-sorted      {sorted_run.wall_s:8.1f} s wall (every row of the second file generated again)")
    how = answered_how(db_path, two["run_id"])
    generated = {rid for rid, way in how.items() if way == "generated"}
    new_or_changed = new_ids | changed_ids
    before, after = read_outputs(out_dir / "first.out.jsonl"), read_outputs(out_dir / "second.out.jsonl")
    regenerated = read_outputs(out_dir / "vllm-sorted.out.jsonl")
    unchanged = [row["id"] for row in first if row["id"] not in changed_ids]
    identical = sum(after[rid] == before[rid] for rid in unchanged)
    share = two["generate_s"] / one["generate_s"] if one["generate_s"] else None
    summary = {
        "workload": f"incremental ({workload})",
        "machine": machine_record(machine),
        "engine": engine.settings.as_dict(),
        "settings": {"requests": len(first), "second_requests": len(second), "new": len(new_ids),
                     "changed": len(changed_ids), "seed": seed, "default_max_tokens": default_max_tokens},
        "first": {"wall_s": round(one_wall, 2), "generate_s": one["generate_s"], "generated": one["generated_now"],
                  "output_tokens": one["output_tokens_now"]},
        "second": {"wall_s": round(two_wall, 2), "generate_s": two["generate_s"], "generated": two["generated_now"],
                   "answered_from_earlier_runs": two["answered_from_earlier_runs"],
                   "output_tokens": two["output_tokens_now"], "stage_seconds": two.get("stage_seconds")},
        "vllm_sorted_second": {"wall_s": round(sorted_run.wall_s, 2), "generated": sorted_run.requests,
                               "output_tokens": sorted_run.output_tokens},
        "generated_only_new_and_changed": generated <= new_or_changed,
        "new_or_changed_answered_as_identical_requests": len(new_or_changed - generated),
        "unchanged_answered_from_first_run": sum(how.get(rid) == "reused" for rid in unchanged),
        "generation_share": round(share, 3) if share is not None else None,
        "generation_share_within_target": share is not None and share <= TARGET_GENERATION_SHARE,
        "unchanged_rows": len(unchanged),
        "unchanged_identical": identical,
        # what regenerating costs besides time: greedy output on CPU can follow the batch it ran in
        "vllm_sorted_identical_to_first": sum(regenerated.get(rid) == before[rid] for rid in unchanged),
        "speedup_second_vs_vllm_sorted": round(sorted_run.wall_s / two_wall, 2) if two_wall else None,
    }
    (out_dir / "incremental.json").write_text(json.dumps(summary, indent=2))
    log(table(summary))
    return summary


def table(summary: dict) -> str:
    s, one, two, plain = summary["settings"], summary["first"], summary["second"], summary["vllm_sorted_second"]
    machine = summary["machine"]
    return "\n".join([
        f"{summary['workload']} on {machine['cpu']} ({machine['cores']} cores, {', '.join(machine['cpu_flags'])}): "
        f"{s['requests']} requests, then {s['second_requests']} ({s['new']} new, {s['changed']} changed)",
        f"  first run           {one['wall_s']:8.1f} s wall  {one['generate_s']:8.1f} s generation  {one['generated']} generated",
        f"  second run          {two['wall_s']:8.1f} s wall  {two['generate_s']:8.1f} s generation  {two['generated']} generated, "
        f"{two['answered_from_earlier_runs']} answered from the first",
        f"  vllm-sorted second  {plain['wall_s']:8.1f} s wall  (all {plain['generated']} generated)",
        f"  generated only new and changed rows: {summary['generated_only_new_and_changed']} "
        f"({summary['new_or_changed_answered_as_identical_requests']} of them repeat an earlier prompt: answered, "
        f"not generated); unchanged rows answered from the first run: "
        f"{summary['unchanged_answered_from_first_run']} of {summary['unchanged_rows']}",
        f"  second run's generation time: {summary['generation_share']:.1%} of the first's "
        f"(target <= {TARGET_GENERATION_SHARE:.0%}: {summary['generation_share_within_target']})",
        f"  unchanged rows byte-identical: {summary['unchanged_identical']} of {summary['unchanged_rows']} "
        f"(vLLM regenerating them: {summary['vllm_sorted_identical_to_first']} identical)",
        f"  second run against the capable user: {summary['speedup_second_vs_vllm_sorted']}x faster (wall)",
    ])


if __name__ == "__main__":
    run_incremental(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out/incremental"),
                    int(sys.argv[2]) if len(sys.argv) > 2 else None, workload=sys.argv[3] if len(sys.argv) > 3 else BASE_WORKLOAD)
