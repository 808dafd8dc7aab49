"""The in-job probe: its calibration (pure), when it runs, and a whole run with one (real
engine, real Prefect, real DuckDB)."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest

from batchbin.config import EngineOptions, JobConfig
from batchbin.predictors.calibrate import MIN_PROBE
from batchbin.predictors.probe import MAX_PROBE, fit_probe, probe_size
from batchbin.tasks.probe import plan_probe
from tests.conftest import TEST_ENGINE


def test_probe_size_is_the_fraction_within_its_limits():
    assert probe_size(10_000, 0.02) == 200
    assert probe_size(100, 0.02) == 0                   # 2 requests: too few to fit anything
    assert probe_size(400, 0.02) == MIN_PROBE
    assert probe_size(10_000_000, 0.02) == MAX_PROBE
    assert probe_size(10, 0.9) == 9
    assert probe_size(8, 1.0) == 0                      # the probe would be the whole job
    assert probe_size(10_000, 0.0) == 0
    assert probe_size(1_200, 0.02, templates=54) == 54   # one request a template ...
    assert probe_size(1_200, 0.02, templates=500) == 120  # ... within a tenth of the job
    assert probe_size(100_000, 0.02, templates=54) == 2_000


def test_a_scale_the_predictor_missed_is_learnt_and_the_ranking_kept():
    rng = np.random.default_rng(0)
    predicted = rng.uniform(20, 500, 60)
    real = predicted / 4  # the served model answers in a quarter of the tokens
    calibration = fit_probe(predicted, real, np.zeros(60, dtype=int))
    others = np.array([40.0, 400.0])
    out = calibration.apply(others, [0, 0], [1024, 1024])
    assert out == pytest.approx(others / 4, rel=0.05)
    assert out[0] < out[1]


def test_a_templates_offset_moves_its_own_requests_and_is_shrunk_when_it_has_few():
    predicted = np.full(20, 100.0)
    groups = np.array([1] * 10 + [2] * 10)
    real = np.array([20.0] * 10 + [300.0] * 10)  # same prediction, two templates answering apart
    calibration = fit_probe(predicted, real, groups)
    short, long, unseen = calibration.apply([100.0, 100.0, 100.0], [1, 2, 3], [1024] * 3)
    assert short < unseen < long
    assert 20 < short < 40 and 200 < long < 300   # pulled towards the template's real lengths, not all the way
    one_each = fit_probe(np.array([100.0, 100.0] + [100.0] * 10), np.array([20.0, 300.0] + [100.0] * 10),
                         np.array([1, 2] + [3] * 10))
    few_short, few_long = one_each.apply([100.0, 100.0], [1, 2], [1024, 1024])
    assert abs(np.log(few_long / few_short)) < abs(np.log(long / short))  # one row moves a template less


def test_calibrated_lengths_stay_within_each_requests_limit():
    calibration = fit_probe(np.full(10, 10.0), np.full(10, 1000.0), np.zeros(10, dtype=int))
    assert calibration.apply([10.0, 10.0], [0, 0], [64, 2048]).tolist() == pytest.approx([64.0, 1000.0], rel=0.05)


def test_templates_are_runs_sharing_tokens_beyond_the_jobs_common_prefix_and_the_study_spreads_its_probe(fresh_db):
    from batchbin.bench.probe_study import draw_probe
    from batchbin.store.queries import fetch_arrow

    # token order: two templates sharing 30 tokens inside, 4 tokens (the common prefix) across
    for rank, lcp in enumerate([0, 30, 30, 30, 4, 30, 30, 30]):
        fresh_db.execute("insert into prompt_groups (run_id, request_id, group_id, sort_rank, lcp_prev) "
                         "values ('r', $id, 0, $rank, $lcp)", {"id": f"q{rank}", "rank": rank, "lcp": lcp})
    table = fetch_arrow(fresh_db, "probe.template_groups", {"run_id": "r", "template_tokens": 8}).to_pydict()
    group_of = dict(zip(table["request_id"], table["template_group"]))
    groups = np.array([group_of[f"q{rank}"] for rank in range(8)])
    assert groups.tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    predicted = np.array([10, 20, 30, 40, 50, 60, 70, 80], dtype=float)
    probe = draw_probe(np.random.default_rng(0), predicted, groups, 4)
    assert len(probe) == 4 and set(groups[probe]) == {1, 2}


@pytest.mark.parametrize("fraction,order,spec,requests,own_rows,expected", [
    (0.02, "auto", "auto", 10_000, None, 200),
    (0.0, "auto", "auto", 10_000, None, 0),
    (0.02, "sorted", "auto", 10_000, None, 0),
    (0.02, "input", "auto", 10_000, None, 0),
    (0.02, "hybrid", "file:lengths.jsonl", 10_000, None, 0),
    (0.02, "hybrid", "oracle:abc", 10_000, None, 0),
    (0.5, "hybrid", "auto", 200, None, 0),    # every request runs at once: nothing to order
    (0.02, "hybrid", "auto", 300, None, 0),   # 6 requests: too few
    (None, "auto", "auto", 4 * 256, None, 21),  # auto: 2% of a job of 4 waves
    (0.02, "auto", "auto", 600, None, 12),      # asked for: runs in a job of 2.3 waves too
    # auto with a predictor that never learnt the served model's answers (the shipped one, the
    # fallback): in any job whose requests queue, at least MIN_PROBE requests, within the first wave
    (None, "auto", "auto", 4 * 256 - 1, None, 21),
    (None, "auto", "auto", 300, None, MIN_PROBE),
    (None, "auto", "fallback", 300, None, MIN_PROBE),
    (None, "auto", "auto", 257, None, MIN_PROBE),
    (None, "auto", "auto", 256, None, 0),       # all run at once
    # auto with the served model's own predictor: only where much is left to reorder after the probe
    (None, "auto", "auto", 4 * 256 - 1, 500, 0),
    (None, "auto", "auto", 4 * 256, 500, 21),
    (None, "hybrid", "mlp-x", 10_000, 500, 200),
])
def test_the_probe_runs_only_where_lengths_decide_something(fraction, order, spec, requests, own_rows, expected):
    plan = plan_probe(fraction, requests, order, spec, max_num_seqs=256, own_rows=own_rows)
    assert plan.size == expected
    assert plan.reason


def test_the_probe_stays_inside_the_first_wave_and_follows_kv_pressure():
    # 7.6 waves of 32 with 10 templates: one request a template, never more than a wave
    assert plan_probe(None, 244, "auto", "auto", max_num_seqs=32, templates=10).size == 10
    assert plan_probe(None, 2_000, "auto", "auto", max_num_seqs=32, templates=150).size == 32
    # every request fits in max_num_seqs, but not in the KV cache at their limits: they queue
    squeezed = plan_probe(None, 200, "auto", "auto", max_num_seqs=256, kv_tokens_needed=200 * 700,
                          kv_cache_tokens=46_592)
    assert squeezed.size == MIN_PROBE and "KV cache holds 46,592" in squeezed.reason
    roomy = plan_probe(None, 200, "auto", "auto", max_num_seqs=256, kv_tokens_needed=200 * 100,
                       kv_cache_tokens=46_592)
    assert roomy.size == 0 and "all 200 requests run at once" in roomy.reason



def test_no_probe_where_every_request_fixes_its_own_length():
    """ignore_eos or min_tokens at max_tokens: every length is known, a probe would learn nothing."""
    fixed = plan_probe(None, 500, "auto", "auto", max_num_seqs=32, templates=10, fixed_lengths=500)
    assert fixed.size == 0 and "all 500 requests fix their own length" in fixed.reason
    assert plan_probe(None, 500, "auto", "auto", max_num_seqs=32, templates=10, fixed_lengths=499).size == 10
    assert plan_probe(0.1, 500, "hybrid", "auto", max_num_seqs=32, fixed_lengths=500).size == 0


def test_the_probe_counts_requests_that_fix_their_length(fresh_db):
    """probe.count_predictions: ignore_eos, or min_tokens at the request's max_tokens (or the run's
    default where it sets none), and not a request answered from an earlier run."""
    from batchbin.store.queries import execute

    rows = [("a", None, None, None), ("b", 8, 8, None), ("c", None, None, True), ("d", 8, 4, None),
            ("e", None, 16, False), ("f", 8, 8, None)]
    for request_id, max_tokens, min_tokens, ignore_eos in rows:
        fresh_db.execute("insert into prompts (run_id, request_id, max_tokens, min_tokens, ignore_eos) "
                         "values ('r', ?, ?, ?, ?)", [request_id, max_tokens, min_tokens, ignore_eos])
        fresh_db.execute("insert into tokens (run_id, request_id, prompt_tokens) values ('r', ?, 10)", [request_id])
        fresh_db.execute("insert into predictions (run_id, request_id, predicted_tokens) values ('r', ?, 5)",
                         [request_id])
    fresh_db.execute("insert into results (run_id, request_id, reused_from) values ('r', 'f', 'old')")
    requests, kv_needed, fixed = execute(fresh_db, "probe.count_predictions",
                                         {"run_id": "r", "default_max_tokens": 16}).fetchone()
    assert (requests, fixed) == (5, 3)  # b, c, e; f was answered before
    assert kv_needed == 5 * 10 + 16 + 8 + 16 + 8 + 16


SHORT_SYSTEM = ("You label fruit. Reply with exactly one word, the colour of the fruit named by the user, "
                "and nothing else: no sentence, no punctuation, no explanation, no greeting.")
LONG_SYSTEM = ("You are a storyteller. Whatever the user names, write a long, detailed story about it, with many "
               "characters, places and events, several paragraphs long, and never stop early.")
FRUITS = ["apple", "banana", "cherry", "lemon", "lime", "plum", "grape", "kiwi", "mango", "peach",
          "pear", "fig", "melon", "orange", "papaya", "apricot", "date", "guava", "olive", "quince"]


@pytest.fixture(scope="module")
def probed_job(tmp_path_factory, prefect_api, default_model_path):
    from batchbin.flows.batch import batch_inference

    folder = tmp_path_factory.mktemp("probe")
    rows = []
    for i, fruit in enumerate(FRUITS):
        # a stop string ends these early: the predictor cannot know, the probe sees it
        rows.append({"id": f"short-{i}", "messages": [{"role": "system", "content": SHORT_SYSTEM},
                                                      {"role": "user", "content": fruit}], "stop": [" ", ".", "\n"]})
        rows.append({"id": f"long-{i}", "messages": [{"role": "system", "content": LONG_SYSTEM},
                                                     {"role": "user", "content": fruit}]})
    path = folder / "requests.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # 40 requests queue for 16 sequences; a quarter of them (10) probe
    config = JobConfig(input_path=str(path), db_path=str(folder / "bb.duckdb"), max_tokens=24, probe=0.25,
                       order="hybrid", output_path=str(folder / "out.jsonl"), engine=EngineOptions(**TEST_ENGINE))
    return config, batch_inference(config)


@pytest.mark.engine
def test_a_probed_run_generates_every_request_once_and_calibrates_the_rest(probed_job):
    config, report = probed_job
    con = duckdb.connect(config.db_path, read_only=True)
    try:
        assert con.execute("select count(*), count(distinct request_id) from results").fetchone() == (40, 40)
        # the engine was kept full while the probe ran: more than the probe finished in that phase
        in_phase, after = con.execute("select count(*) filter (where attempt = 1), count(*) filter (where attempt = 2) "
                                      "from results").fetchone()
        assert in_phase > 10 and in_phase + after == 40
        # what still ran when the probe had finished was finished once, not handed to vLLM again;
        # the run's summary counts both phases (the probe's requests are the job's own)
        assert report["generated_now"] == in_phase + after == 40
        probe_rows, templates, generate_s = con.execute("select requests, templates, generate_s from probes").fetchone()
        assert probe_rows == 10 and templates == 2 and generate_s > 0
        probed = {r[0] for r in con.execute("select request_id from probe_requests").fetchall()}
        assert {p.split("-")[0] for p in probed} == {"short", "long"}  # spread over both templates
        calibrated = dict(con.execute("select request_id, calibrated_tokens from predictions").fetchall())
        assert all(calibrated[r] is None for r in probed)
        assert all(calibrated[r] is not None for r in calibrated if r not in probed)
        short = np.mean([v for r, v in calibrated.items() if r.startswith("short") and v is not None])
        long = np.mean([v for r, v in calibrated.items() if r.startswith("long") and v is not None])
        real_short, real_long = con.execute(
            "select avg(output_tokens) filter (where request_id like 'short%'), "
            "avg(output_tokens) filter (where request_id like 'long%') from results").fetchone()
        assert real_short < real_long and short < long  # the probe learnt which template answers longer
        # the schedule was made on the calibrated lengths: the long template's requests go first
        first = con.execute("select request_id from schedule s join predictions p using (run_id, request_id) "
                            "where p.calibrated_tokens is not null order by position limit 10").fetchall()
        assert sum(r[0].startswith("long") for r in first) >= 8
    finally:
        con.close()
    quality = report["predictor_quality"]
    assert quality["n"] == 30 and quality["predictor"].endswith("+ probe")
    assert set(quality["without_probe"]) == {"kendall_tau", "spearman", "bin_accuracy_k4", "mae"}
    # the report's honesty: the shipped predictor, not trained on the served model, with its
    # held-out scores; the probe's 10 left out of this run's scores, with and without it
    honesty = quality["honesty"]
    (origin,) = honesty["origins"]
    assert origin["trained_on"].startswith("ShareGPT") and not origin["own"] and origin["train_rows"] > 1000
    assert origin["held_out"]["kendall_tau"] is not None and "shipped predictor" in honesty["why"]
    assert honesty["probe_requests"] == 10 and honesty["scored_requests"] == 30
    assert honesty["probe_why"].startswith("10 of 40 requests")
    assert honesty["raw"] == quality["without_probe"]
    assert honesty["planned"] == {key: quality[key] for key in ("kendall_tau", "spearman", "bin_accuracy_k4", "mae")}


@pytest.mark.engine
def test_a_resumed_probed_run_runs_no_probe_again(probed_job):
    from batchbin.flows.batch import batch_inference

    config, _ = probed_job
    con = duckdb.connect(config.db_path, read_only=True)
    try:
        before = con.execute("select created_at from probes").fetchone()
    finally:
        con.close()
    again = batch_inference(config)
    assert again["generated_now"] == 0
    con = duckdb.connect(config.db_path, read_only=True)
    try:
        assert con.execute("select created_at from probes").fetchone() == before
        assert con.execute("select count(*) from results").fetchone()[0] == 40
    finally:
        con.close()
