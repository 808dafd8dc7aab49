"""Compare BatchBin's schedule orders on one workload with one engine, interleaved and repeated.

    python -m batchbin.bench.orders --workload sharegpt --repeats 2

Prints one line per run and the median wall time per order (plus plain vLLM with the same
engine, shuffled and sorted, as references). Used to choose the default `--order`.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from batchbin.bench.harness import batchbin_pipeline, load_rows, plain_vllm
from batchbin.bench.workloads import write_jsonl
from batchbin.config import EngineOptions
from batchbin.engine.pool import get_engine
from batchbin.engine.settings import choose_engine_settings
from batchbin.engine.machine import detect_machine
from batchbin.engine.models import resolve_model
from batchbin.flows.runtime import in_process_flow_runs
from batchbin.scheduling import ORDERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="sharegpt")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--orders", default=",".join(ORDERS))
    parser.add_argument("--out", default="bench-out/orders")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(args.workload, args.requests, 0)
    input_path = write_jsonl(rows, out / "requests.jsonl")
    model_path = resolve_model("default")
    settings = choose_engine_settings(detect_machine(), EngineOptions())  # a large job's (compiled on CPU)
    options = EngineOptions(enforce_eager=settings.enforce_eager)  # the small warm-up flow must not rebuild it
    engine = get_engine(model_path, settings, 2048)
    with in_process_flow_runs():
        compare_orders(args, rows, input_path, out, model_path, options, engine)


def compare_orders(args, rows, input_path, out, model_path, options, engine) -> None:
    plain_vllm("warm-up", engine, model_path, rows[:8], "shuffled", 0, 8, 2048)
    batchbin_pipeline("warm-up", write_jsonl(rows[:8], out / "warm.jsonl"), out / "warm.duckdb", options, 8, 2048,
                      "hybrid", 4, None)
    walls: dict[str, list[float]] = {}
    orders = [o for o in args.orders.split(",") if o]
    for _ in range(args.repeats):
        for name in ["vllm-shuffled", "vllm-sorted"] + orders:
            if name.startswith("vllm-"):
                result = plain_vllm(name, engine, model_path, rows, name.split("-")[1], 0, 64, 2048)
            else:
                result, _ = batchbin_pipeline(name, input_path, out / f"{name}.duckdb", options, 64, 2048, name, 4, None)
            walls.setdefault(name, []).append(result.wall_s)
            print(f"{name:14} {result.wall_s:7.1f} s  {result.output_tokens:6d} out  {result.output_tps:6.1f} tok/s"
                  f"  cached {result.cached_prompt_tokens}", flush=True)
    print(f"\n{args.workload}, {len(rows)} requests, median wall s over {args.repeats}:")
    for name, values in walls.items():
        print(f"  {name:14} {statistics.median(values):7.1f}  {values}")


if __name__ == "__main__":
    main()
