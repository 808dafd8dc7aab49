"""Print, plot and store a benchmark summary (bench.json).

    python -m batchbin.bench.report bench-out/*/bench.json   # Markdown for docs/benchmarks.md
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

RATIOS = ("speedup", "oracle_speedup", "speedup_vs_tuned", "speedup_vs_sorted", "speedup_vs_sorted_without_probe",
          "speedup_vs_run_batch", "reuse_ratio")


def table(summary: dict) -> str:
    """The terminal table: one line per variant, then the ratios."""
    lines = [f"workload {summary['workload']} on {summary['machine']['cpu']} "
             f"({summary['machine']['cores']} cores, {', '.join(summary['machine']['cpu_flags']) or '-'}), "
             f"{summary['settings']['requests']} requests, median of {summary['repeats']}",
             f"{'variant':16}{'wall s':>9}{'gen s':>9}{'out tok':>9}{'tok/s':>9}{'cached':>9}  runs (wall s)"]
    for name, v in summary["variants"].items():
        cached = "-" if v["cached_prompt_tokens"] is None else v["cached_prompt_tokens"]
        lines.append(f"{name:16}{v['wall_s']:9.1f}{v['generate_s']:9.1f}{v['output_tokens']:9d}{v['output_tps']:9.1f}"
                     f"{cached:>9}  {v['wall_s_runs']}")
    for key in RATIOS:
        if summary.get(key) is not None:
            lines.append(f"{key:22} {summary[key]}")
    lines.append(f"ideal_cached_tokens    {summary['ideal_cached_tokens']}")
    if not summary["output_tokens_agree"]:
        lines.append("WARNING: output token totals differ by more than 5% between variants")
    return "\n".join(lines)


def chart(summary: dict, path: Path) -> Path:
    """A bar chart of output tokens/s per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    values = [summary["variants"][n]["output_tps"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.bar(names, values, color=["#8a8a8a" if n.startswith("vllm") else "#2b7bb9" for n in names])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("output tokens/s")
    ax.set_title(f"{summary['workload']}: {summary['settings']['requests']} requests, {summary['machine']['cpu']}", fontsize=9)
    plt.xticks(rotation=15, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def store(summary: dict, db_path: str) -> str:
    """Keep the run in DuckDB (table bench_runs, created here), one row per variant; return the bench id."""
    from batchbin.store import db
    from batchbin.store.queries import execute

    bench_id = uuid.uuid4().hex[:12]
    con = db.connect(db_path)
    try:
        execute(con, "bench.create_tables")
        for variant, metrics in summary["variants"].items():
            execute(con, "bench.store_bench_run", {"bench_id": bench_id, "workload": summary["workload"], "variant": variant,
                                               "metrics": json.dumps({**metrics, "machine": summary["machine"]})})
    finally:
        con.close()
    return bench_id


def write(summary: dict, out_dir: Path) -> Path:
    path = out_dir / "bench.json"
    path.write_text(json.dumps(summary, indent=2))
    return path


def markdown(summary: dict) -> str:
    """docs/benchmarks.md's block for one workload: the variants, the ratios, BatchBin's time by stage."""
    lines = [f"**{summary['workload']}**: {summary['settings']['requests']} requests, median of {summary['repeats']} "
             f"(by wall time); ideal cached tokens {summary['ideal_cached_tokens']}", "",
             "| variant | wall s | generate s | output tokens | output tok/s | cached prompt tokens | runs (wall s) |",
             "|---|---|---|---|---|---|---|"]
    for name, v in summary["variants"].items():
        cached = "n/a" if v["cached_prompt_tokens"] is None else v["cached_prompt_tokens"]
        lines.append(f"| {name} | {v['wall_s']:.1f} | {v['generate_s']:.1f} | {v['output_tokens']} | "
                     f"{v['output_tps']:.0f} | {cached} | {v['wall_s_runs']} |")
    ratios = ", ".join(f"{key} **{summary[key]}**" for key in RATIOS if summary.get(key) is not None)
    lines += ["", f"{ratios}; output tokens agree within 5%: {summary['output_tokens_agree']}"]
    stages = (summary["variants"].get("batchbin") or {}).get("stage_seconds")
    if stages:
        wall = summary["variants"]["batchbin"]["wall_s"]
        outside = wall - sum(stages.values())
        lines += ["", "batchbin's time by stage (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
                  + f"; outside the stages (Prefect's flow run, opening the database) {outside:.2f}"]
    outside_steps = [f"{name} {v['wall_s'] - v['engine_trace']['steps_s']:.2f}" for name, v in summary["variants"].items()
                     if (v.get("engine_trace") or {}).get("steps_s") is not None]
    if outside_steps:
        lines += ["", "time outside the engine's steps (s; wall time less the steps' own): " + ", ".join(outside_steps)]
    notes = (summary["variants"].get("batchbin") or {}).get("notes")
    if notes:
        lines += ["", f"batchbin's schedule: {notes}"]
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(markdown(json.loads(Path(path).read_text())) for path in sys.argv[1:]))
