"""The benchmark harness on a tiny workload with every variant: bench.json's keys and ratios,
the chart, the DuckDB rows. Correctness of the harness only; timings are not asserted."""

from __future__ import annotations

import json

import duckdb
import pytest

from batchbin.bench import report
from batchbin.bench.harness import VARIANTS, run_benchmark
from batchbin.config import EngineOptions
from tests.conftest import TEST_ENGINE

VARIANT_KEYS = {"wall_s", "generate_s", "requests", "prompt_tokens", "output_tokens", "output_tps",
                "cached_prompt_tokens", "engine", "wall_s_runs"}


@pytest.fixture(scope="module")
def summary(tmp_path_factory, prefect_api, default_model_path):
    out = tmp_path_factory.mktemp("bench")
    result = run_benchmark("sharegpt", out, n_requests=6, default_max_tokens=8, variants=VARIANTS,
                           engine_options=EngineOptions(**TEST_ENGINE, enforce_eager=True),  # the tests' shared engine
                           baseline_options=EngineOptions(kv_cache_gib=1.0), max_tokens_override=8,
                           log=lambda *_: None)
    return out, result


@pytest.mark.engine
def test_every_variant_has_the_same_keys(summary):
    _, result = summary
    assert set(result["variants"]) == set(VARIANTS)
    for name, variant in result["variants"].items():
        assert VARIANT_KEYS <= set(variant), name
        assert variant["requests"] == 6, name
        assert variant["output_tokens"] > 0 and variant["wall_s"] > 0, name
        assert variant["output_tps"] == pytest.approx(variant["output_tokens"] / variant["wall_s"], rel=0.01)


@pytest.mark.engine
def test_ratios_and_machine_are_recorded(summary):
    _, result = summary
    tps = {name: v["output_tps"] for name, v in result["variants"].items()}
    assert result["speedup"] == pytest.approx(tps["batchbin"] / tps["vllm"], rel=0.01)
    assert result["oracle_speedup"] == pytest.approx(tps["oracle"] / tps["vllm"], rel=0.01)
    assert result["speedup_vs_tuned"] == pytest.approx(tps["batchbin"] / tps["vllm-tuned"], rel=0.01)
    assert result["speedup_vs_sorted"] == pytest.approx(tps["batchbin"] / tps["vllm-sorted"], rel=0.01)
    assert result["ideal_cached_tokens"] is not None and result["ideal_cached_tokens"] >= 0
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert result["variants"]["vllm-tuned"]["engine"]["max_num_seqs"] == TEST_ENGINE["max_num_seqs"]
    stages = result["variants"]["batchbin"]["stage_seconds"]  # where BatchBin's wall time went
    assert stages["generate"] >= result["variants"]["batchbin"]["generate_s"] - 0.01
    assert sum(stages.values()) <= result["variants"]["batchbin"]["wall_s"]


@pytest.mark.engine
def test_the_engine_steps_of_plain_vllm_and_batchbin_are_counted_alike(summary):
    """Step counts and preemptions: the measure that does not move run to run as wall times do."""
    _, result = summary
    for name in ("vllm-sorted", "batchbin", "batchbin-no-admission"):
        variant = result["variants"][name]
        trace = variant["engine_trace"]
        assert trace["steps"] > 0 and trace["preempted"] == 0 and 1 <= trace["mean_running"] <= 6, name
        # every output token but each request's first (sampled at the end of its prefill) is one decode
        assert trace["decode_tokens"] == variant["output_tokens"] - variant["requests"], name
        # the seconds in engine steps, for the time each side spends outside them
        assert 0 < trace["steps_s"] <= variant["wall_s"], name
    assert result["variants"]["vllm-run-batch"]["engine_trace"] is None  # its engine is in another process


@pytest.mark.engine
def test_greedy_variants_generate_the_same_work(summary):
    _, result = summary
    totals = [v["output_tokens"] for v in result["variants"].values()]
    assert result["output_tokens_agree"] == ((max(totals) - min(totals)) / max(totals) <= 0.05)
    assert result["output_tokens_agree"], totals


@pytest.mark.engine
def test_outputs_written_and_stored(summary, tmp_path):
    out, result = summary
    path = report.write(result, out)
    assert json.loads(path.read_text())["workload"] == "sharegpt"
    assert report.chart(result, out / "bench.png").stat().st_size > 1000
    db_path = str(tmp_path / "bench.duckdb")
    bench_id = report.store(result, db_path)
    con = duckdb.connect(db_path, read_only=True)
    rows = con.execute("select variant from bench_runs where bench_id = $b", {"b": bench_id}).fetchall()
    con.close()
    assert sorted(r[0] for r in rows) == sorted(VARIANTS)
    assert "speedup_vs_sorted" in report.table(result)
    markdown = report.markdown(result)
    assert "| batchbin |" in markdown and "speedup_vs_sorted **" in markdown
    assert "batchbin's time by stage (s): start" in markdown
    assert "batchbin's schedule: order sorted (auto: all" in markdown  # the small job runs at once


@pytest.mark.engine
def test_cold_start_comparison_times_every_command_on_the_same_job(tmp_path, monkeypatch, default_model_path):
    """bench/cold.py: `batchbin run`, the user's script and `vllm run-batch`, each a fresh process,
    same requests and engine settings; each writes every result, and the summary holds the wall
    times and their ratios."""
    from batchbin.bench.cold import run_cold

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    summary = run_cold("chat-mix", tmp_path / "cold", n_requests=3, repeats=1, max_tokens=4, with_run_batch=True,
                       log=lambda *_: None)
    assert summary["requests"] == 3 and summary["engine"]["enforce_eager"] is True  # a job far too small to compile
    walls = summary["wall_s"]
    assert set(walls) == {"batchbin", "user-script", "vllm-run-batch"} and min(walls.values()) > 0
    assert summary["speedup_vs_script"] == pytest.approx(walls["user-script"] / walls["batchbin"], rel=0.01)
    assert summary["speedup_vs_run_batch"] == pytest.approx(walls["vllm-run-batch"] / walls["batchbin"], rel=0.01)
    script_ids = [json.loads(line)["id"] for line in (tmp_path / "cold" / "user-script.out.jsonl").read_text().splitlines()]
    batchbin_ids = [json.loads(line)["id"] for line in
                    (tmp_path / "cold" / "batchbin-run" / "batchbin.out.jsonl").read_text().splitlines()]
    run_batch_ids = [json.loads(line)["custom_id"] for line in
                     (tmp_path / "cold" / "vllm-run-batch.out.jsonl").read_text().splitlines()]
    assert sorted(script_ids) == sorted(batchbin_ids) == sorted(run_batch_ids) and len(script_ids) == 3
    assert json.loads((tmp_path / "cold" / "cold.json").read_text()) == summary


def test_cold_start_comparison_can_pin_the_compile_choice_of_both_commands(tmp_path):
    from batchbin.bench.cold import batchbin_command, job_settings

    assert job_settings(3).enforce_eager is True  # BatchBin's own choice for a tiny job
    assert job_settings(3, enforce_eager=False).enforce_eager is False
    assert "--no-enforce-eager" in batchbin_command(tmp_path / "in.jsonl", tmp_path, 8, 2048, enforce_eager=False)
    assert not {"--enforce-eager", "--no-enforce-eager"} & set(batchbin_command(tmp_path / "in.jsonl", tmp_path, 8, 2048))
