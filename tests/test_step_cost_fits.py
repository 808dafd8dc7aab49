"""This machine's step costs (batchbin/sim/machine_fits.py, tasks/step_costs.py): the fit's key,
kept in a real DuckDB file and a cache file, refitted when a run's engine steps come in, and the
line that says which fit an estimate uses (or the warning where it is another CPU's)."""

from __future__ import annotations

import json
import random

import pytest

from batchbin.config import JobConfig
from batchbin.engine.machine import MachineInfo
from batchbin.errors import BatchBinError
from batchbin.sim import machine_fits
from batchbin.sim.machine_fits import (KEEP_RUNS, KEEP_STEPS_PER_RUN, FitKey, choose_cost, find_fit, learn_from_run,
                                       read_cache)
from batchbin.sim.step_costs import LinearStepCost, StepWork
from batchbin.store import db
from batchbin.store.checkpoints import store_steps
from batchbin.store.runs import RunRef, record_engine, start_run
from batchbin.engine.settings import EngineSettings

XEON = MachineInfo("Intel(R) Xeon(R) Processor", frozenset({"avx512_bf16", "amx_bf16", "avx2"}), (0, 1), 24.0)
EPYC = MachineInfo("AMD EPYC 7B13", frozenset({"avx2"}), (0, 1, 2, 3), 16.0)
MODEL = "/somewhere/models/SmolLM2-135M-Instruct"
TRUTH = LinearStepCost(0.02, 2e-4, 6e-4, 1e-6)


def engine_settings(eager: bool = True, dtype: str = "bfloat16") -> EngineSettings:
    return EngineSettings(device="cpu", dtype=dtype, threads="0-1", kv_cache_gib=1.0, gpu_memory_utilization=None,
                          max_num_seqs=32, max_num_batched_tokens=4096, block_size=32, enforce_eager=eager)


def measured_run(db_path: str, run_id: str, steps: int = 120, eager: bool = True, seed: int = 0,
                 slowdown: float = 1.0, context: bool = True, settings: EngineSettings | None = None,
                 model: str = MODEL, erratic: bool = False) -> None:
    """A run's row and engine steps, written through the product's own store functions; the
    steps' times follow TRUTH (with a little noise; `erratic`: each step slowed by 0-150%, at
    random, as another process's work on the machine did to a calibration)."""
    rng = random.Random(seed)
    ref = RunRef(db_path=db_path, run_id=run_id)
    start_run(ref, JobConfig(input_path="requests.jsonl", db_path=db_path), f"fingerprint-{run_id}", model)
    record_engine(ref, settings or engine_settings(eager))
    rows = []
    for step in range(steps):
        work = StepWork(0, rng.choice([0, 0, rng.randint(1, 4096)]), rng.randint(1, 32), rng.randint(0, 40_000))
        slowed = rng.uniform(1.0, 2.5) if erratic else 1.0
        rows.append({"step": step, "started_s": float(step),
                     "duration_s": TRUTH.seconds(work) * slowdown * slowed * rng.uniform(0.98, 1.02),
                     "running": work.decode_tokens, "waiting": 0, "prefill_tokens": work.prefill_tokens,
                     "decode_tokens": work.decode_tokens, "context_tokens": work.context_tokens if context else None,
                     "kv_cache_usage": 0.5, "preempted": 0})
    con = db.connect(db_path)
    try:
        store_steps(con, run_id, 1, rows)
    finally:
        con.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "step_costs.json"
    monkeypatch.setenv(machine_fits.STEP_COSTS_ENV, str(path))
    return path


def test_the_key_names_the_machine_the_dtype_compiled_or_eager_and_the_model():
    key = FitKey.for_engine({"dtype": "bfloat16", "enforce_eager": True}, MODEL, XEON)
    assert key.text == ("Intel(R) Xeon(R) Processor (amx_bf16, avx512_bf16, 2 cores) | bfloat16 | eager | "
                        "SmolLM2-135M-Instruct")
    assert FitKey.for_engine({"dtype": "bfloat16", "enforce_eager": False}, MODEL, XEON) == key.other_mode()
    assert key.other_mode().text.split(" | ")[2] == "torch.compile"
    # another CPU, another dtype, another model, a GPU: each its own key
    others = {FitKey.for_engine({"dtype": "bfloat16", "enforce_eager": True}, MODEL, EPYC).text,
              FitKey.for_engine({"dtype": "float32", "enforce_eager": True}, MODEL, XEON).text,
              FitKey.for_engine({"dtype": "bfloat16", "enforce_eager": True}, "HuggingFaceTB/SmolLM2-360M", XEON).text,
              FitKey.for_engine({"dtype": "auto", "enforce_eager": False}, MODEL, MachineInfo("x", frozenset(), (0,), 8.0,
                                                                                             gpu="NVIDIA L4")).text}
    assert len(others) == 4 and key.text not in others
    assert any(text.startswith("GPU NVIDIA L4 | auto | torch.compile") for text in others)
    assert "AMD EPYC 7B13 (no bf16, 4 cores)" in " ".join(others)


def test_a_runs_steps_make_the_fit_kept_in_the_database_and_the_cache(db_path, cache):
    measured_run(db_path, "first")
    fit = learn_from_run(db_path, "first", machine=XEON)
    assert fit.run_ids == ["first"] and fit.steps == 120
    assert fit.cost.per_prefill_token_s == pytest.approx(TRUTH.per_prefill_token_s, rel=0.1)
    assert fit.cost.per_decode_token_s == pytest.approx(TRUTH.per_decode_token_s, rel=0.2)
    assert abs(fit.cost.fitted_on["sum_error"]) < 0.01
    # the cache file holds it, with the steps it was made from
    cached = read_cache(cache)[fit.key.text]
    assert cached.cost == fit.cost and len(cached.kept_steps["first"]) == 120
    # the database holds it too: found there when the cache is gone
    cache.unlink()
    in_db = find_fit(fit.key, db_path)
    assert in_db.run_ids == ["first"] and in_db.steps == 120
    assert in_db.cost.per_prefill_token_s == pytest.approx(fit.cost.per_prefill_token_s)
    con = db.connect(db_path, read_only=True)
    try:
        assert con.execute("select machine, dtype, enforce_eager, model from step_cost_fits").fetchall() == [
            ("Intel(R) Xeon(R) Processor (amx_bf16, avx512_bf16, 2 cores)", "bfloat16", True, "SmolLM2-135M-Instruct")]
    finally:
        con.close()


def test_each_run_refits_with_the_earlier_runs_steps_capped(db_path, cache):
    measured_run(db_path, "a", steps=40, seed=1)
    learn_from_run(db_path, "a", machine=XEON)
    measured_run(db_path, "b", steps=KEEP_STEPS_PER_RUN * 3, seed=2)  # a long run adds a capped sample
    fit = learn_from_run(db_path, "b", machine=XEON)
    assert fit.run_ids == ["a", "b"] and fit.steps == 40 + KEEP_STEPS_PER_RUN
    again = learn_from_run(db_path, "b", machine=XEON)  # a run fed twice (a resumed run) counts once
    assert again.run_ids == ["a", "b"] and again.steps == fit.steps
    # a compiled run of the same machine and model is a fit of its own
    measured_run(db_path, "compiled", eager=False, seed=3)
    compiled = learn_from_run(db_path, "compiled", machine=XEON)
    assert compiled.run_ids == ["compiled"] and compiled.key == fit.key.other_mode()
    assert set(read_cache(cache)) == {fit.key.text, compiled.key.text}
    # the oldest runs make room for new ones
    for index in range(KEEP_RUNS):
        measured_run(db_path, f"later-{index}", steps=10, seed=10 + index)
        newest = learn_from_run(db_path, f"later-{index}", machine=XEON)
    assert len(newest.run_ids) == KEEP_RUNS and "a" not in newest.run_ids


def test_a_run_without_usable_steps_makes_no_fit_and_names_a_missing_run(db_path, cache):
    measured_run(db_path, "own-process", context=False)  # the engine core in its own process: no context counts
    assert learn_from_run(db_path, "own-process", machine=XEON) is None
    measured_run(db_path, "short", steps=3)
    assert learn_from_run(db_path, "short", machine=XEON) is None  # 3 steps: too few to fit yet
    assert not cache.exists()
    with pytest.raises(BatchBinError, match="no run 'nope'"):
        learn_from_run(db_path, "nope", machine=XEON)


def test_a_broken_cache_file_is_a_clear_error_and_never_fails_the_run(db_path, cache):
    from batchbin.tasks.step_costs import learn_step_costs

    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    with pytest.raises(BatchBinError, match="delete it"):
        read_cache(cache)
    measured_run(db_path, "run")
    assert learn_step_costs.fn(db_path, "run") is None  # a warning in the run's log, no exception


def test_the_estimate_says_this_machines_fit_with_its_runs_and_steps(db_path, cache):
    engine = {"dtype": "bfloat16", "enforce_eager": True}
    measured_run(db_path, "a", seed=1)
    measured_run(db_path, "b", seed=2)
    learn_from_run(db_path, "a", machine=XEON)
    learn_from_run(db_path, "b", machine=XEON)
    chosen = choose_cost(engine, MODEL, machine=XEON)
    assert chosen.own and chosen.warning is None
    assert chosen.line == ("step costs: this machine (Intel(R) Xeon(R) Processor (amx_bf16, avx512_bf16, 2 cores), "
                           "bfloat16, eager), from 2 runs, 240 steps")
    # a compiled job on a machine with an eager fit only: that fit stands in, said so
    stand_in = choose_cost({**engine, "enforce_eager": False}, MODEL, machine=XEON)
    assert not stand_in.own and stand_in.cost == chosen.cost
    assert "standing in for torch.compile" in stand_in.line
    assert "batchbin doctor --calibrate --requests 500" in stand_in.warning


def test_without_a_fit_of_this_machine_the_shipped_one_comes_with_a_warning(cache):
    chosen = choose_cost({"dtype": "bfloat16", "enforce_eager": True}, MODEL, machine=EPYC)
    assert not chosen.own
    assert chosen.line.startswith("step costs: shipped fit from another CPU (AMD EPYC")
    assert "may be off by 2-3x here" in chosen.warning and "batchbin doctor --calibrate" in chosen.warning
    # another machine's fit in the cache is not this one's
    assert find_fit(FitKey.for_engine({"dtype": "bfloat16", "enforce_eager": True}, MODEL, XEON)) is None


def test_the_cache_folder_follows_batchbin_cache_then_xdg(monkeypatch, tmp_path):
    from batchbin.engine.models import cache_dir

    monkeypatch.delenv(machine_fits.STEP_COSTS_ENV, raising=False)
    monkeypatch.delenv("BATCHBIN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert machine_fits.step_costs_path() == tmp_path / "xdg" / "batchbin" / "step_costs.json"
    monkeypatch.setenv("BATCHBIN_CACHE", str(tmp_path / "own"))
    assert cache_dir() == tmp_path / "own"
    assert machine_fits.step_costs_path() == tmp_path / "own" / "step_costs.json"


def test_the_calibration_job_varies_prompt_and_output_lengths_and_sharing_independently():
    from batchbin.flows.calibrate import calibration_rows

    rows = calibration_rows()
    assert len({row["id"] for row in rows}) == len(rows) == 128
    assert all(row["min_tokens"] == row["max_tokens"] and row["ignore_eos"] for row in rows)
    shared = [row for row in rows if row["prompt"].startswith("Document ")]
    alone = [row for row in rows if not row["prompt"].startswith("Document ")]
    assert 0.15 < len(shared) / len(rows) < 0.35 and len({row["prompt"][:60] for row in shared}) == 4
    prompts = [len(row["prompt"].split()) for row in alone]
    outputs = [row["max_tokens"] for row in rows]
    assert min(prompts) < 20 and max(prompts) > 400 and min(outputs) < 20 and max(outputs) > 140
    # independent: long prompts come with short and long outputs alike
    long_prompts = [row["max_tokens"] for row in alone if len(row["prompt"].split()) > 150]
    assert min(long_prompts) < 60 and max(long_prompts) > 110
    assert len({row["prompt"].split(":")[1][:40] for row in alone}) == len(alone)  # no shared prefix among these
    json.dumps(rows)  # what the calibration writes as its input file


def test_a_fit_tells_context_read_by_many_sequences_from_tokens_held_once():
    """Where the steps vary both, the fit separates context tokens (read per sequence) from the
    distinct tokens held in the KV cache (a shared prefix counts once)."""
    from batchbin.sim.step_costs import fit_linear_step_cost, step_work

    truth = LinearStepCost(0.03, 3e-4, 2e-4, 5e-7, per_kv_token_s=3e-6)
    rng = random.Random(4)
    steps = []
    for _ in range(300):
        held = rng.randint(1000, 60_000)
        work = StepWork(0, rng.choice([0, rng.randint(1, 4096)]), rng.randint(1, 200), held * rng.randint(1, 6),
                        kv_tokens=held)
        steps.append({"prefill_tokens": work.prefill_tokens, "decode_tokens": work.decode_tokens,
                      "context_tokens": work.context_tokens, "kv_tokens": work.kv_tokens, "duration_s": truth.seconds(work)})
    fit = fit_linear_step_cost(steps)
    assert fit.per_kv_token_s == pytest.approx(3e-6, rel=0.02)
    assert fit.per_context_token_s == pytest.approx(5e-7, rel=0.05)
    assert step_work({**steps[0], "running": 1}).kv_tokens == steps[0]["kv_tokens"]


def test_simulate_fit_keeps_one_fit_per_key_in_the_cache_from_the_stored_runs(db_path, cache):
    from batchbin.sim.machine_fits import fit_stored_runs

    measured_run(db_path, "eager-a", seed=1)
    measured_run(db_path, "eager-b", seed=2)
    measured_run(db_path, "compiled", eager=False, seed=3)
    measured_run(db_path, "own-process", context=False, seed=4)  # no context counts: nothing to fit
    fits = {fit.key.enforce_eager: fit for fit in fit_stored_runs([db_path], machine=XEON)}
    assert fits[True].run_ids == ["eager-a", "eager-b"] and fits[True].steps == 240
    assert fits[False].run_ids == ["compiled"] and fits[False].key == fits[True].key.other_mode()
    assert fits[True].cost.per_prefill_token_s == pytest.approx(TRUTH.per_prefill_token_s, rel=0.1)
    # the cache holds them with their steps: the next run refits from them
    assert {text: fit.run_ids for text, fit in read_cache(cache).items()} == {
        fits[True].key.text: ["eager-a", "eager-b"], fits[False].key.text: ["compiled"]}
    measured_run(db_path, "eager-c", seed=5)
    assert learn_from_run(db_path, "eager-c", machine=XEON).run_ids == ["eager-a", "eager-b", "eager-c"]
    # only the runs named; a fit of another key already in the cache stays
    only = fit_stored_runs([db_path], ["eager-c"], machine=XEON)
    assert [fit.run_ids for fit in only] == [["eager-c"]]
    assert read_cache(cache)[fits[False].key.text].run_ids == ["compiled"]
    with pytest.raises(BatchBinError, match="the runs own-process in .*no engine steps with their context counts"):
        fit_stored_runs([db_path], ["own-process"], machine=XEON)
    with pytest.raises(BatchBinError, match="no database at"):
        fit_stored_runs([db_path + ".missing"], machine=XEON)


def test_simulate_fit_writes_the_cache_never_the_shipped_file_unless_told_where(db_path, cache, tmp_path):
    from click.testing import CliRunner

    from batchbin.cli.main import main
    from batchbin.sim.step_costs import FITTED_PATH, read_fits

    shipped = FITTED_PATH.read_bytes()
    measured_run(db_path, "a", seed=1)
    measured_run(db_path, "b", seed=2)
    measured_run(db_path, "c", seed=3)
    result = CliRunner().invoke(main, ["simulate", "fit", "--db", db_path])
    assert result.exit_code == 0, result.output
    assert FITTED_PATH.read_bytes() == shipped
    assert f"kept in {cache}" in result.output and "from 3 runs, 360 steps" in result.output
    assert [fit.run_ids for fit in read_cache(cache).values()] == [["a", "b", "c"]]
    # a developer refreshing the shipped fit names the file: the package's format, four terms
    out = tmp_path / "cpu_step_costs.json"
    result = CliRunner().invoke(main, ["simulate", "fit", "--db", db_path, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [fit.kind() for fit in read_fits(out)] == [("bfloat16", True)]
    assert FITTED_PATH.read_bytes() == shipped
    missing = CliRunner().invoke(main, ["simulate", "fit", "--db", str(tmp_path / "none.duckdb")])
    assert missing.exit_code != 0 and "no database at" in missing.output


def test_a_calibration_slowed_erratically_by_another_process_is_not_kept(db_path, cache):
    from batchbin.sim.machine_fits import ERRATIC_STEP_SHARE, keep_if_steady, run_error_share

    measured_run(db_path, "earlier", seed=1)
    learn_from_run(db_path, "earlier", machine=XEON)
    measured_run(db_path, "steady", seed=2)
    steady = learn_from_run(db_path, "steady", machine=XEON)
    share = keep_if_steady(steady, "steady", cache)
    assert share < 0.05 and read_cache(cache)[steady.key.text].run_ids == ["earlier", "steady"]
    measured_run(db_path, "erratic", seed=3, erratic=True)
    erratic = learn_from_run(db_path, "erratic", machine=XEON)
    assert run_error_share(erratic, "erratic") > ERRATIC_STEP_SHARE
    with pytest.raises(BatchBinError, match=r"ran erratically \(the fit misses its typical step by \d+%.*not kept"):
        keep_if_steady(erratic, "erratic", cache)
    # the cache's fit is the one before it again: made from the other runs alone
    kept = read_cache(cache)[steady.key.text]
    assert kept.run_ids == ["earlier", "steady"]
    assert kept.cost.per_decode_token_s == pytest.approx(steady.cost.per_decode_token_s, rel=1e-6)
    assert run_error_share(kept, "erratic") is None


def test_a_calibration_that_was_the_keys_only_run_leaves_no_fit_when_forgotten(db_path, cache):
    from batchbin.sim.machine_fits import keep_if_steady

    measured_run(db_path, "erratic", seed=3, erratic=True)
    fit = learn_from_run(db_path, "erratic", machine=XEON)
    with pytest.raises(BatchBinError, match="Calibrate again when the machine is quieter"):
        keep_if_steady(fit, "erratic", cache)
    assert read_cache(cache) == {} and find_fit(fit.key, path=cache) is None


def test_the_database_keeps_every_term_of_a_fit(fresh_db):
    """step_cost_fits keeps the KV-cache term too: a fit read back costs a step as the fit made."""
    key = FitKey.for_engine({"dtype": "bfloat16", "enforce_eager": True}, MODEL, XEON)
    cost = LinearStepCost(0.01, 2e-5, 3e-4, 1e-7, per_kv_token_s=4e-8, fitted_on={"steps": 9})
    machine_fits.store_fit(fresh_db, machine_fits.MachineFit(key, cost, ["r1", "r2"], 9, ""))
    kept = machine_fits.stored_fit(fresh_db, key)
    work = StepWork(running=64, prefill_tokens=512, decode_tokens=64, context_tokens=40_000, kv_tokens=30_000)
    assert kept.cost.per_kv_token_s == cost.per_kv_token_s and kept.run_ids == ["r1", "r2"] and kept.steps == 9
    assert kept.cost.seconds(work) == pytest.approx(cost.seconds(work))
