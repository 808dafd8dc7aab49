"""Stage 6's pure parts: how many requests go into vLLM at once."""

from __future__ import annotations

from types import SimpleNamespace

from batchbin.engine.settings import EngineSettings
from batchbin.engine.step_loop import in_flight_limit


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


def test_a_sampled_request_without_a_seed_gets_one_from_the_job_seed_and_its_id():
    from batchbin.engine.step_loop import SamplingDefaults, request_seed, sampling_params_for

    def params(request_id, temperature=0.8, seed=None, job_seed=0):
        row = {"request_id": request_id, "token_ids": [1, 2, 3], "max_tokens": 4, "temperature": temperature,
               "top_p": None, "seed": seed, "stop": None}
        return sampling_params_for(row, SamplingDefaults(seed=job_seed))

    assert params("a").seed == params("a").seed == request_seed(0, "a")  # the same run to run
    assert params("a").seed != params("b").seed  # two identical prompts sample apart
    assert params("a", job_seed=1).seed != params("a").seed
    assert params("a", seed=7).seed == 7  # a request's own seed wins
    assert params("a", temperature=0).seed is None  # greedy needs none
    assert params("a", job_seed=None).seed is None  # a job without a seed: vLLM's own randomness
    assert 0 <= request_seed(0, "a") < 2**31
