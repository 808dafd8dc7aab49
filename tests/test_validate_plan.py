"""`batchbin bench --validate-plan` (bench/validate_plan.py): a job planned, then run, and the
plan's estimate set against the measured generation. Correctness only; the estimate's accuracy
on this machine is measured in docs/simulator.md."""

from __future__ import annotations

import json

import pytest

from batchbin.bench.validate_plan import fixed_lengths, format_validation, validate_plan
from batchbin.config import EngineOptions
from tests.conftest import TEST_ENGINE


def test_fixed_lengths_make_every_request_generate_its_max_tokens():
    rows = fixed_lengths([{"id": "a", "prompt": "x", "max_tokens": 12}, {"id": "b", "prompt": "y"}], 40)
    assert [(r["max_tokens"], r["min_tokens"], r["ignore_eos"]) for r in rows] == [(12, 12, True), (40, 40, True)]


@pytest.mark.engine
def test_validate_plan_plans_runs_and_compares(tmp_path, prefect_api, default_model_path):
    result = validate_plan("prefix-heavy", tmp_path, n_requests=10, max_tokens=6, fixed=True,
                           engine_options=EngineOptions(**TEST_ENGINE, enforce_eager=True),  # the tests' shared engine
                           log=lambda *_: None)
    assert result["requests"] == 10 and result["fixed_lengths"]
    # fixed lengths: the plan knew every output length, and the run generated exactly those
    assert result["output_tokens"] == result["predicted_output_tokens"] == 60
    assert result["measured_s"] > 0 and result["estimate_s"] > 0 and result["real_lengths_estimate_s"] > 0
    assert result["error"] == pytest.approx(result["estimate_s"] / result["measured_s"] - 1, rel=0.02)  # of rounded seconds
    assert result["step_costs"].startswith("step costs: ")
    assert json.loads((tmp_path / "validate-plan.json").read_text()) == result
    text = format_validation(result)
    assert "plan estimate" in text and "measured" in text and result["step_costs"] in text
