"""Stage 6's pure parts: how many requests go into vLLM at once."""

from __future__ import annotations

from types import SimpleNamespace

from batchbin.engine_settings import EngineSettings
from batchbin.tasks.generate import in_flight_limit


def engine_running(max_num_seqs: int | None, settings_max: int | None = None):
    llm_engine = SimpleNamespace()
    if max_num_seqs is not None:
        llm_engine.vllm_config = SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs))
    settings = EngineSettings(device="cpu", dtype="float32", threads=None, kv_cache_gib=None, gpu_memory_utilization=None,
                              max_num_seqs=settings_max, max_num_batched_tokens=None, block_size=None, enforce_eager=True)
    return SimpleNamespace(llm=SimpleNamespace(llm_engine=llm_engine), settings=settings)


def test_in_flight_limit_is_four_times_what_vllm_runs_and_at_least_1024():
    assert in_flight_limit(engine_running(16)) == 1024
    assert in_flight_limit(engine_running(256)) == 1024
    assert in_flight_limit(engine_running(1024)) == 4096  # vLLM's own default on a large GPU


def test_in_flight_limit_falls_back_to_the_settings():
    assert in_flight_limit(engine_running(None, settings_max=512)) == 2048
    assert in_flight_limit(engine_running(None)) == 1024
