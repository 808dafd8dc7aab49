"""Build vLLM engines, one per settings per process, and shut them down.

Tasks pass settings, never an LLM object (it cannot go into a cache key); `get_engine` keeps the
engine of the last settings alive, so the stages of several flow runs in one process (tests, the
benchmark) share one engine instead of paying the start-up (~26 s on CPU) again. What it
needs of vLLM beyond the public `vllm.LLM` goes through batchbin/engine/vllm_adapter.py.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from batchbin.engine import vllm_adapter
from batchbin.engine.settings import EngineSettings
from batchbin.engine.quiet import engine_noise_to_log

# Quieter vLLM, no usage reporting; must be set before vllm is imported.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_USER_LD_PRELOAD = os.environ.get("LD_PRELOAD")  # vLLM appends to it; each engine starts from this


@dataclass
class Engine:
    llm: object            # vllm.LLM
    key: tuple
    settings: EngineSettings
    start_s: float
    # requests a generation phase left running in vLLM for the next phase of the same run:
    # (run_id, {vLLM request id: request row}); see tasks/generate.py generate_run
    left_running: tuple[str, dict] | None = None


_lock = threading.Lock()
_current: Engine | None = None


def _key(model_path: str, settings: EngineSettings, max_model_len: int) -> tuple:
    return (model_path, max_model_len, tuple(sorted((k, str(v)) for k, v in settings.as_dict(reasons=False).items())))


def get_engine(model_path: str, settings: EngineSettings, max_model_len: int) -> Engine:
    """The engine for these settings, built if needed (replacing any other one)."""
    global _current
    key = _key(model_path, settings, max_model_len)
    with _lock:
        if _current is not None and _current.key == key:
            return _current
        shutdown_engine()
        _current = build_engine(model_path, settings, max_model_len)
        _current.key = key
        return _current


def apply_environment(settings: EngineSettings, user_preload: str | None = None) -> None:
    """Put the settings' environment into os.environ, replacing what an earlier engine set."""
    user_preload = _USER_LD_PRELOAD if user_preload is None else user_preload
    if user_preload:
        os.environ["LD_PRELOAD"] = user_preload
    else:
        os.environ.pop("LD_PRELOAD", None)
    for name, value in settings.environment().items():
        os.environ[name] = value
    if settings.preload and user_preload:
        os.environ["LD_PRELOAD"] = f"{settings.preload}:{user_preload}"
    if settings.device == "cpu" and not settings.threads:
        os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)  # vLLM's own default binding
    vllm_adapter.refresh_environment()  # an engine that ran in this process froze vLLM's view of os.environ


def executor_kwargs(settings: EngineSettings) -> dict:
    """vLLM's executor for an engine core in its own process whose model runs inside it.

    Passed as the class: vLLM's CPU platform turns the name "uni" into its multiprocess
    executor (a third process) whenever the engine core has a process of its own."""
    if settings.device != "cpu" or settings.in_process or not settings.worker_in_core:
        return {}
    return vllm_adapter.uniproc_executor_kwargs()


def build_engine(model_path: str, settings: EngineSettings, max_model_len: int) -> Engine:
    """A new vllm.LLM with prefix caching on and the given settings.

    The settings' environment (thread binding, LD_PRELOAD, ...) goes into os.environ, which the
    engine's processes inherit when vLLM spawns them."""
    apply_environment(settings)
    with engine_noise_to_log():
        llm, start_s = _start_llm(model_path, settings, max_model_len)
    vllm_adapter.raise_in_step_when_engine_dies(llm)
    return Engine(llm=llm, key=(), settings=settings, start_s=start_s)


def _start_llm(model_path: str, settings: EngineSettings, max_model_len: int):
    from vllm import LLM

    started = time.perf_counter()
    llm = LLM(
        model=model_path,
        max_model_len=max_model_len,
        enable_prefix_caching=True,
        seed=0,
        # vLLM's counters (prefill and output tokens, preemptions, KV-cache use) for the live
        # progress and the report, and each step's shape for the run's engine_steps; vllm.LLM
        # turns statistics off by default, `vllm serve` keeps them on
        **vllm_adapter.iteration_details_kwargs(),
        **settings.engine_kwargs(),
        **executor_kwargs(settings),
    )
    return llm, time.perf_counter() - started


def shutdown_engine() -> None:
    """Stop the current engine (its core process) and free its memory."""
    global _current
    if _current is None:
        return
    try:
        vllm_adapter.shutdown_engine_core(_current.llm)
    except Exception:
        pass
    _current = None
    gc.collect()


def reset_prefix_cache(engine: Engine) -> None:
    """Start the next job from a cold prefix cache (used between benchmark variants)."""
    vllm_adapter.reset_prefix_cache(engine.llm)


@contextmanager
def scheduler_held(engine: Engine) -> Iterator[None]:
    """Hold an engine core that runs in its own process from stepping while requests go in.

    Such a core starts stepping on the first requests that arrive, so how requests are batched,
    and with it bf16 rounding, would vary with timing: greedy outputs changed run to run (7 of
    16 prompts in one of three runs, never with the core held; docs/engine-settings.md). In
    process, every request is queued before the first step anyway."""
    if engine.settings.in_process:
        yield
        return
    with vllm_adapter.scheduler_held(engine.llm):  # without the hold where vLLM cannot hold it
        yield


def current_engine() -> Engine | None:
    """The engine kept alive in this process, if any."""
    return _current
