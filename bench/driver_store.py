"""How many results per second the driver of a scaled-out run can store: the run's single
writer (tasks/generate_ray.py) inserting checkpoints into a database file through
`store_results`, as engines send them back.

    python -m batchbin.bench.driver_store --results 20000 --output-chars 800

Synthetic results (output text of --output-chars characters, as a chat answer of ~200 tokens)
go in checkpoints of each size in --checkpoints into a fresh database file that already holds
--existing results (a run's database grows as it goes). Prints one line per checkpoint size:
results/s and ms per checkpoint, with the CPU. An engine's result rate divided into this is how
many engines one driver can keep up with.
"""

from __future__ import annotations

import argparse
import platform
import random
import string
import tempfile
import time
from pathlib import Path

from batchbin.store import db
from batchbin.store.checkpoints import store_results

RUN_ID = "bench-driver-store"


def fake_results(count: int, output_chars: int, offset: int, rng: random.Random) -> list[dict]:
    text = "".join(rng.choice(string.ascii_letters + " ") for _ in range(output_chars))
    return [{"request_id": f"r{offset + i:09d}", "output_text": text, "prompt_tokens": 300, "output_tokens": 200,
             "cached_tokens": 128, "finish_reason": "stop", "error": None, "batch": 0, "latency_s": 1.5}
            for i in range(count)]


def measure(path: Path, results: int, checkpoint: int, output_chars: int, existing: int) -> tuple[float, float]:
    """(results/s, ms per checkpoint) of `results` results stored `checkpoint` at a time."""
    rng = random.Random(0)
    con = db.connect(path)
    try:
        for start in range(0, existing, 10_000):  # what the run stored before
            store_results(con, RUN_ID, fake_results(min(10_000, existing - start), output_chars, start, rng))
        batches = [fake_results(checkpoint, output_chars, existing + start, rng)
                   for start in range(0, results, checkpoint)]
        began = time.perf_counter()
        for batch in batches:
            store_results(con, RUN_ID, batch)
        elapsed = time.perf_counter() - began
    finally:
        con.close()
    return len(batches) * checkpoint / elapsed, 1000 * elapsed / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=20_000)
    parser.add_argument("--output-chars", type=int, default=800)
    parser.add_argument("--existing", type=int, default=100_000, help="results already in the database")
    parser.add_argument("--checkpoints", default="32,128,512", help="checkpoint sizes, comma-separated")
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    for size in (int(value) for value in args.checkpoints.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            rate, per_checkpoint = measure(Path(folder) / "store.duckdb", args.results, size, args.output_chars,
                                           args.existing)
        print(f"checkpoint {size:>4}: {rate:,.0f} results/s ({per_checkpoint:.1f} ms per checkpoint; "
              f"{args.results} results of {args.output_chars} chars over {args.existing:,} stored; {cpu})", flush=True)


if __name__ == "__main__":
    main()
