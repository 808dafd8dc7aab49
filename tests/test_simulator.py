"""The simulator (batchbin/sim/simulator.py), its step costs (batchbin/sim/step_costs.py) and the
Multi-Bin paper's model (batchbin/sim/multibin.py): pure logic, no engine."""

from __future__ import annotations

import random
import time

import pytest

from batchbin.sim import multibin as multibin
from batchbin.errors import BatchBinError
from batchbin.sim.stored_runs import block_hashes, gpu_setup
from batchbin.sim.simulator import EngineLimits, SimRequest, simulate
from batchbin.sim.step_costs import (GPUS, MODEL_SIZES, GpuStepCost, LinearStepCost, ModelShape, StepWork,
                                 fit_linear_step_cost)

PER_STEP = LinearStepCost(1.0, 0.0, 0.0, 0.0)  # every step costs 1 s: time = steps
AMPLE = EngineLimits(max_num_seqs=8, max_num_batched_tokens=4096, block_size=16, kv_blocks=10_000)


def limits(**changes) -> EngineLimits:
    return EngineLimits(**{**AMPLE.__dict__, **changes})


# --- closed-form cases ---------------------------------------------------------------------

def test_one_request_costs_one_prefill_step_and_a_decode_step_per_further_token():
    cost = LinearStepCost(0.01, 0.001, 0.002, 0.0001)
    result = simulate([SimRequest(100, 10)], AMPLE, cost, keep_trace=True)
    # step 1 computes the prompt and samples token 1; steps 2..10 decode with 100..108 tokens in the cache
    expected = (0.01 + 100 * 0.001) + 9 * (0.01 + 0.002) + 0.0001 * sum(range(100, 109))
    assert result.steps == 10
    assert result.seconds == pytest.approx(expected)
    assert result.output_tokens == 10 and result.prefill_tokens == 100
    assert [work.context_tokens for work, _ in result.trace] == [0, *range(100, 109)]


def test_a_prompt_beyond_the_token_budget_is_prefilled_in_chunks():
    result = simulate([SimRequest(1000, 3)], limits(max_num_batched_tokens=256), PER_STEP, keep_trace=True)
    assert [work.prefill_tokens for work, _ in result.trace] == [256, 256, 256, 232, 0, 0]
    assert result.seconds == 6  # ceil(1000 / 256) chunks, then 2 decode steps


def test_requests_that_all_fit_run_together_and_the_job_lasts_as_long_as_the_longest():
    requests = [SimRequest(10, n) for n in (5, 20, 7, 3)]
    result = simulate(requests, AMPLE, PER_STEP)
    assert result.seconds == 20
    assert result.finish_s == [5, 20, 7, 3]
    assert result.output_tokens == 35


# --- the mechanics -------------------------------------------------------------------------

def test_never_more_running_than_max_num_seqs_and_every_token_generated():
    rng = random.Random(1)
    requests = [SimRequest(rng.randint(5, 300), rng.randint(1, 200)) for _ in range(300)]
    result = simulate(requests, limits(max_num_seqs=16, max_num_batched_tokens=512), PER_STEP, keep_trace=True)
    assert max(work.running for work, _ in result.trace) == 16 == result.peak_running
    assert all(work.prefill_tokens + work.decode_tokens <= 512 for work, _ in result.trace)
    assert result.output_tokens == sum(r.output_tokens for r in requests)
    assert all(s > 0 for s in result.finish_s)


def test_prefix_hits_skip_prefill_and_a_request_admitted_in_the_same_step_reuses_them():
    shared = block_hashes(list(range(320)), 16)  # 20 full blocks, the same for every request
    with_prefix = [SimRequest(330, 4, shared) for _ in range(6)]
    without = [SimRequest(330, 4, block_hashes([i] + list(range(329)), 16)) for i in range(6)]
    hit = simulate(with_prefix, AMPLE, LinearStepCost(0, 0.001, 0, 0))
    miss = simulate(without, AMPLE, LinearStepCost(0, 0.001, 0, 0))
    assert miss.cached_tokens == 0 and miss.prefill_tokens == 6 * 330
    assert hit.cached_tokens == 5 * 320  # the first computes the blocks, the other five find them
    assert hit.prefill_tokens == 330 + 5 * 10
    assert hit.seconds < miss.seconds


def test_a_prefix_is_found_again_after_its_request_finished_until_its_blocks_are_needed():
    first = SimRequest(64, 1, block_hashes(list(range(64)), 16))
    again = SimRequest(64, 1, block_hashes(list(range(64)), 16))
    result = simulate([first, again], limits(max_num_seqs=1), PER_STEP)
    assert result.cached_tokens == 48  # 3 of 4 blocks: the last prompt token is always computed
    # the request between them needs the space: the last blocks of a prefix are evicted first
    tight = simulate([first, SimRequest(64, 1), again], limits(max_num_seqs=1, kv_blocks=5), PER_STEP)
    assert tight.cached_tokens == 16
    full = simulate([first, SimRequest(64, 1), again], limits(max_num_seqs=1, kv_blocks=4), PER_STEP)
    assert full.cached_tokens == 0


def test_preemption_happens_when_the_kv_cache_is_short_and_the_job_still_finishes():
    requests = [SimRequest(32, 200) for _ in range(8)]
    roomy = simulate(requests, AMPLE, PER_STEP)
    short = simulate(requests, limits(kv_blocks=60), PER_STEP, keep_trace=True)  # 8 x 15 blocks at full length > 60
    assert all(work.prefill_tokens >= 0 and 0 <= work.decode_tokens <= work.running for work, _ in short.trace)
    assert roomy.preemptions == 0
    assert short.preemptions > 0
    assert short.output_tokens == roomy.output_tokens == 1600
    assert short.prefill_tokens > roomy.prefill_tokens  # recompute of the preempted
    assert short.peak_kv_usage == 1.0
    assert short.seconds > roomy.seconds


def test_a_request_larger_than_the_cache_is_refused_up_front():
    with pytest.raises(BatchBinError, match="KV blocks"):
        simulate([SimRequest(1000, 100)], limits(kv_blocks=10), PER_STEP)
    with pytest.raises(BatchBinError, match="at least one token"):
        simulate([SimRequest(10, 0)], AMPLE, PER_STEP)


def test_longest_first_shortens_the_tail():
    # 4 slots; one long request among short ones: handed over last, it runs alone at the end
    requests = [SimRequest(8, 10) for _ in range(12)] + [SimRequest(8, 100)]
    long_last = simulate(requests, limits(max_num_seqs=4), PER_STEP)
    long_first = simulate(sorted(requests, key=lambda r: -r.output_tokens), limits(max_num_seqs=4), PER_STEP)
    assert long_first.seconds == 100
    assert long_last.seconds == 130  # three waves of 10 steps, then the long one
    assert long_first.tail_s < long_last.tail_s


def test_ten_thousand_requests_simulate_in_seconds():
    rng = random.Random(0)
    requests = [SimRequest(rng.randint(20, 600), rng.randint(1, 800)) for _ in range(10_000)]
    started = time.perf_counter()
    result = simulate(requests, EngineLimits(256, 4096, 32, 20_000), LinearStepCost(0.01, 1e-4, 5e-4, 1e-6))
    assert result.output_tokens == sum(r.output_tokens for r in requests)
    assert time.perf_counter() - started < 30


# --- step costs ----------------------------------------------------------------------------

def test_the_fit_recovers_known_coefficients():
    rng = random.Random(3)
    truth = LinearStepCost(0.02, 3e-4, 8e-4, 2e-6)
    steps = []
    for _ in range(400):
        work = StepWork(0, rng.choice([0, 0, rng.randint(1, 4096)]), rng.randint(0, 256), rng.randint(0, 200_000))
        steps.append({**work.__dict__, "duration_s": truth.seconds(work) * rng.uniform(0.98, 1.02)})
    fitted = fit_linear_step_cost(steps, {"cpu": "test"})
    assert fitted.intercept_s == pytest.approx(0.02, rel=0.1)
    assert fitted.per_prefill_token_s == pytest.approx(3e-4, rel=0.05)
    assert fitted.per_decode_token_s == pytest.approx(8e-4, rel=0.05)
    assert fitted.per_context_token_s == pytest.approx(2e-6, rel=0.1)
    assert abs(fitted.fitted_on["sum_error"]) < 0.01 and fitted.fitted_on["cpu"] == "test"


def test_a_fit_never_lets_more_work_cost_less():
    rng = random.Random(4)
    steps = []
    for n in range(1, 60):
        context = rng.randint(0, 50_000)  # made cheaper by context: a fit must not follow that
        steps.append({"prefill_tokens": 0, "decode_tokens": n, "context_tokens": context,
                      "duration_s": 0.01 + 0.001 * n - 1e-8 * context})
    fitted = fit_linear_step_cost(steps)
    assert fitted.per_context_token_s == 0 and fitted.per_prefill_token_s == 0  # dropped; prefill never varied
    assert fitted.per_decode_token_s == pytest.approx(0.001, rel=0.05)


def test_fits_are_kept_per_engine_kind(tmp_path):
    eager = LinearStepCost(0.1, 0.2, 0.3, 0.4, {"cpu": "x", "dtype": "bfloat16", "enforce_eager": True})
    compiled = LinearStepCost(0.05, 0.1, 0.2, 0.3, {"cpu": "x", "dtype": "bfloat16", "enforce_eager": False})
    path = tmp_path / "fit.json"
    eager.save(path)
    compiled.save(path)
    refit = LinearStepCost(0.2, 0.2, 0.3, 0.4, {**eager.fitted_on})
    refit.save(path)
    assert LinearStepCost.load(path, "bfloat16", True) == refit
    assert LinearStepCost.load(path, "bfloat16", False) == compiled
    assert LinearStepCost.load(path, "float32", True) == compiled  # none of that kind: the first kept
    with pytest.raises(BatchBinError, match="simulate fit"):
        LinearStepCost.load(tmp_path / "missing.json")


def test_model_shapes_match_their_published_sizes():
    assert MODEL_SIZES["8b"].params == pytest.approx(8.03e9, rel=0.01)
    assert MODEL_SIZES["70b"].params == pytest.approx(70.6e9, rel=0.01)
    assert MODEL_SIZES["135m"].params == pytest.approx(134.5e6, rel=0.01)
    assert MODEL_SIZES["8b"].kv_bytes_per_token(2) == 131072  # 2 x 32 layers x 8 heads x 128 x 2 bytes
    config = {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
              "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}
    assert ModelShape.from_config(config).kv_bytes_per_token(4) == 46080  # 1 GiB holds 23,301 tokens in float32


def test_gpu_roofline_arithmetic():
    cost = GpuStepCost(GPUS["h100"], MODEL_SIZES["8b"], bandwidth_efficiency=1.0, compute_efficiency=1.0,
                       overhead_s=0.0)
    weights = MODEL_SIZES["8b"].params * 2
    # one decode with an empty cache: memory-bound, the weights once over 3.35 TB/s
    decode = StepWork(1, 0, 1, 0, 1.0)
    assert cost.seconds(decode) == pytest.approx((weights + 131072) / 3.35e12)
    # a decode batch reading 1M cached tokens: their KV bytes too
    batch = StepWork(256, 0, 256, 1_000_000, 1_000_256.0)
    assert cost.seconds(batch) == pytest.approx((weights + 131072 * 1_000_256) / 3.35e12)
    # a big prefill: compute-bound, 2 FLOPs per parameter per token over 989 TFLOP/s
    prefill = StepWork(1, 8192, 0, 0, 0.0)
    assert cost.seconds(prefill) == pytest.approx(2 * MODEL_SIZES["8b"].params * 8192 / 989e12)
    assert cost.seconds(prefill) > cost.seconds(decode) * 10


def test_gpu_setup_sizes_the_kv_cache_from_memory_left_by_the_weights():
    cost, gpu_limits = gpu_setup("h100", "8b")
    kv_gb = gpu_limits.kv_blocks * 16 * 131072 / 1e9
    assert kv_gb == pytest.approx(80 * 0.9 - 16.06 - 2, abs=0.1)
    assert gpu_limits.max_num_seqs == 1024
    with pytest.raises(BatchBinError, match="does not fit"):
        gpu_setup("l4", "70b")
    with pytest.raises(BatchBinError, match="unknown GPU"):
        gpu_setup("tpu", "8b")


# --- the Multi-Bin paper's model -----------------------------------------------------------

def test_multibin_throughput_rises_with_k_toward_the_optimum_and_less_with_noise():
    lengths = multibin.uniform_lengths(4096, 1, 1000, seed=0)
    ks = [1, 2, 4, 8, 16, 32, 64]
    points = multibin.sweep(lengths, ks, [0.0, 1.0], batch_size=32)
    exact = [p.utilisation for p in points if p.sigma == 0]
    noisy = [p.utilisation for p in points if p.sigma == 1.0]
    best = multibin.optimum(lengths, 32)
    assert exact == sorted(exact)  # rising with k
    assert exact[0] == pytest.approx(500.5 / (1000 * 32 / 33), rel=0.03)  # E[length] / E[max of 32]
    assert exact[-1] > 0.95 * best
    assert exact[-1] / exact[0] > 1.7
    assert noisy[0] == exact[0]  # one bin: predictions do not matter
    assert all(n < e for n, e in zip(noisy[1:], exact[1:]))
    assert noisy[-1] / noisy[0] < 1.2


def test_multibin_rejects_bad_input():
    with pytest.raises(BatchBinError):
        multibin.uniform_lengths(10, 5, 1)
    with pytest.raises(BatchBinError):
        multibin.batch_steps([1, 2], [1.0, 2.0], bins=0, batch_size=2)


def test_output_lengths_real_predicted_or_the_requests_own_limit():
    from batchbin.sim.stored_runs import output_length

    row = {"real_tokens": 37, "predicted_tokens": 812.4, "max_tokens": 500}
    assert output_length(row, "real") == 37
    assert output_length(row, "predicted") == 500  # capped by max_tokens
    assert output_length({**row, "predicted_tokens": 0.2}, "predicted") == 1
    assert output_length(row, "max-tokens") == 500
    assert output_length({**row, "real_tokens": None}, "real") is None  # not generated: left out


def test_fit_from_databases_leaves_out_a_run_slowed_down_by_another_process(db_path):
    import json

    from batchbin.store import db
    from batchbin.sim.stored_runs import fit_from_db

    truth = LinearStepCost(0.03, 8e-4, 9e-4, 1.5e-6)
    rng = random.Random(5)
    con = db.connect(db_path)
    engine = json.dumps({"dtype": "bfloat16", "enforce_eager": True})
    for run_id, slowdown in (("a", 1.0), ("b", 1.0), ("c", 1.0), ("slowed", 1.4)):
        con.execute("insert into runs (run_id, engine, status) values (?, ?, 'finished')", [run_id, engine])
        for step in range(200):
            work = StepWork(0, rng.choice([0, 0, 0, rng.randint(1, 4096)]), rng.randint(1, 256), rng.randint(0, 150_000))
            con.execute("insert into engine_steps (run_id, attempt, step, duration_s, running, prefill_tokens, "
                        "decode_tokens, context_tokens) values (?, 1, ?, ?, ?, ?, ?, ?)",
                        [run_id, step, truth.seconds(work) * slowdown * rng.uniform(0.97, 1.03), work.decode_tokens,
                         work.prefill_tokens, work.decode_tokens, work.context_tokens])
    con.close()
    fitted = fit_from_db([db_path])
    assert list(fitted.fitted_on["runs_left_out"]) == ["slowed"]
    assert fitted.fitted_on["runs"] == ["a", "b", "c"]
    assert fitted.per_decode_token_s == pytest.approx(9e-4, rel=0.05)
    assert fitted.kind() == ("bfloat16", True)
