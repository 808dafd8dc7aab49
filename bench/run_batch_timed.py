"""vLLM's own OpenAI batch runner (`vllm run-batch`), timed the way the other variants are.

    python -m batchbin.bench.run_batch_timed --warmup-file W.jsonl -i IN.jsonl -o OUT.jsonl --model M ...

It runs vLLM's unchanged `run_batch` coroutine twice on the engine the command builds: first on
a small warm-up file, then, after a prefix-cache reset, on the real input, and prints the wall
time of the second alone (reading the input file to writing the output file) as the last line:
`run_batch_s=<seconds>`. The engine's start-up stays outside the timed region, as it does for
every variant (subtracting the time of a separate one-request run was unreliable: torch.compile's
cache makes one start much shorter than another).
"""

from __future__ import annotations

import copy
import sys
import time


def main() -> None:
    from batchbin.bench.vllm_run_batch import reset_prefix_cache_async, run_openai_batch

    argv = sys.argv[1:]
    warmup_file = argv[argv.index("--warmup-file") + 1]
    del argv[argv.index("--warmup-file"):argv.index("--warmup-file") + 2]

    def warmed_then_timed(original):
        async def run(engine_client, run_args) -> None:
            warmup = copy.copy(run_args)
            warmup.input_file, warmup.output_file = warmup_file, run_args.output_file + ".warmup"
            await original(engine_client, warmup)
            await reset_prefix_cache_async(engine_client)
            started = time.perf_counter()
            await original(engine_client, run_args)
            print(f"run_batch_s={time.perf_counter() - started:.4f}", flush=True)

        return run

    run_openai_batch(argv, warmed_then_timed)


if __name__ == "__main__":
    main()
