"""`batchbin plan` (flows/plan.py) and `batchbin simulate` on a planned run: the stages
before generation, no engine, a prediction of the job's time here and on a GPU."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from batchbin.cli.main import main
from batchbin.sim.stored_runs import open_run

SAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "sample_prompts.jsonl")


def query(db_path: str, text: str) -> list[tuple]:
    con = duckdb.connect(db_path, read_only=True)
    try:
        return con.execute(text).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def planned(tmp_path_factory, prefect_api, default_model_path):
    """The sample file planned into a kept database, and what the command printed."""
    db_path = str(tmp_path_factory.mktemp("plan") / "plan.duckdb")
    result = CliRunner().invoke(main, ["plan", SAMPLE, "--db", db_path, "--gpu", "h100", "--model-size", "8b"])
    assert result.exit_code == 0, result.output
    return db_path, result.output


def test_plan_prints_tokens_reuse_order_and_estimates_here_and_on_the_gpu(planned):
    _, output = planned
    assert "50 valid, 2 rejected" in output
    assert "predicted (mean" in output
    assert "prefix reuse" in output and "prefix groups" in output
    assert "order           sorted (auto: all 50 requests run at once" in output
    assert "this CPU" in output and "H100 SXM, Llama-3.1-8B" in output
    assert "tokens/s" in output
    # admission by memory is the default; the comparison is the capable user's run
    assert "admission       by predicted memory" in output
    assert "(this plan)" in output and "sorted (token order, vLLM admits)" in output


def test_plan_says_which_step_costs_it_used(planned):
    _, output = planned
    line = next(text for text in output.splitlines() if text.startswith("  step costs      "))
    # the session's runs may have fitted this machine's step costs already; if not, the shipped
    # fit stands in, with its warning and the offer of a calibration
    assert "this machine (" in line or "shipped fit from another CPU" in line
    if "shipped fit" in line:
        assert "may be off by 2-3x here" in output and "batchbin doctor --calibrate" in output


def test_plan_uses_this_machines_own_fit_once_one_exists(tmp_path, monkeypatch, prefect_api, default_model_path):
    from batchbin.engine.machine import detect_machine
    from batchbin.engine.settings import choose_engine_settings
    from batchbin.sim.machine_fits import STEP_COSTS_ENV, learn_from_run
    from tests.test_step_cost_fits import measured_run

    monkeypatch.setenv(STEP_COSTS_ENV, str(tmp_path / "step_costs.json"))
    earlier = str(tmp_path / "earlier.duckdb")  # a run of the engine kind the sample's 50 requests get
    measured_run(earlier, "earlier", settings=choose_engine_settings(detect_machine(), requests=50),
                 model=default_model_path)
    assert learn_from_run(earlier, "earlier") is not None
    result = CliRunner().invoke(main, ["plan", SAMPLE])
    assert result.exit_code == 0, result.output
    assert "step costs      this machine (" in result.output and "from 1 run, 120 steps" in result.output
    assert "shipped fit" not in result.output and "doctor --calibrate" not in result.output


def test_plan_generates_nothing_and_keeps_the_stages_for_a_run(planned):
    db_path, _ = planned
    assert query(db_path, "select count(*) from results") == [(0,)]
    assert query(db_path, "select count(*) from schedule") == [(50,)]
    assert query(db_path, "select status from runs") == [("planned",)]


def test_a_planned_run_simulates_in_every_order_on_its_predicted_lengths(planned):
    db_path, _ = planned
    (run_id,), = query(db_path, "select run_id from runs")
    result = CliRunner().invoke(main, ["simulate", "run", "--db", db_path, "--run-id", run_id, "--order", "all",
                                       "--lengths", "predicted"])
    assert result.exit_code == 0, result.output
    for order in ("sorted (run)", "hybrid", "group", "bin", "input"):
        assert order in result.output
    stored = open_run(db_path, run_id)
    assert stored.limits().block_size == 32
    assert len(stored.requests("predicted")) == 50
    stored.con.close()


def test_simulating_a_run_that_has_not_generated_on_real_lengths_says_what_to_do(planned):
    db_path, _ = planned
    (run_id,), = query(db_path, "select run_id from runs")
    result = CliRunner().invoke(main, ["simulate", "run", "--db", db_path, "--run-id", run_id])
    assert result.exit_code == 1
    assert "--lengths predicted" in result.output


def test_plan_refuses_a_gpu_without_a_model_size_and_unknown_names(tmp_path):
    half = CliRunner().invoke(main, ["plan", SAMPLE, "--gpu", "h100"])
    assert half.exit_code == 1 and "--model-size" in half.output
    unknown = CliRunner().invoke(main, ["simulate", "run", "--db", str(tmp_path / "x.duckdb"), "--order", "fastest"])
    assert unknown.exit_code == 1 and "unknown order fastest" in unknown.output


def test_simulate_multibin_prints_the_papers_curve(tmp_path):
    plot = tmp_path / "multibin.png"
    result = CliRunner().invoke(main, ["simulate", "multibin", "--requests", "512", "--bins", "1,4,16",
                                       "--noise", "0,1", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "optimum utilisation" in result.output
    assert plot.stat().st_size > 0
