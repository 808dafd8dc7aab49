"""Memory-centric admission (batchbin/engine/admission.py) and the simulator's replay of it: pure
logic, no engine."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from batchbin.engine.admission import KvAdmission, predicted_peak
from batchbin.sim.simulator import Admission, EngineLimits, SimRequest, simulate
from batchbin.sim.step_costs import LinearStepCost

PER_STEP = LinearStepCost(1.0, 0.0, 0.0, 0.0)  # every step costs 1 s: time = steps


def peak_by_walking(requests: list[tuple[int, int]]) -> int:
    """The peak of KV(t) = sum over requests with left > t of (now + t), step by step."""
    horizon = max((left for _, left in requests), default=0)
    return max((sum(now + t for now, left in requests if left > t) for t in range(horizon)), default=0)


def test_the_peak_of_one_request_is_its_length_before_the_last_token():
    # 10 tokens held, 5 to generate: it holds 10..14 (the last sampled token never needs KV)
    assert predicted_peak(np.array([10]), np.array([5])) == 14
    assert predicted_peak(np.array([], dtype=int), np.array([], dtype=int)) == 0


def test_the_peak_is_where_the_sum_is_largest_not_the_sum_of_final_lengths():
    # a short request holding much now and a long one holding little: peak at the start (110), not 100 + 14
    assert predicted_peak(np.array([10, 100]), np.array([5, 1])) == 110
    # a long one that grows past what the short one frees
    assert predicted_peak(np.array([10, 0]), np.array([5, 10])) == 18


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 60)), min_size=1, max_size=12))
def test_the_peak_matches_walking_the_steps(requests):
    now, left = (np.array(column) for column in zip(*requests))
    assert predicted_peak(now, left) == peak_by_walking(requests)


def test_the_gate_admits_while_the_peak_fits_and_counts_what_it_held_back():
    gate = KvAdmission(budget_tokens=300)
    assert gate.admits(200, 100)  # an empty engine takes any request
    gate.handed_over("a", 200, 100)  # peaks at 299, just before its last token
    assert gate.admits(10, 5)  # a short one is gone before that: the peak stays 299
    assert not gate.admits(10, 200)  # a long one is still there then: 299 + 109 > 300
    assert gate.held_back == 1
    gate.finished("a")
    assert gate.admits(10, 200)


def test_steps_move_tokens_from_left_to_now():
    gate = KvAdmission(budget_tokens=1000)
    gate.handed_over("a", 50, 20)
    gate.stepped(5)
    now, left = gate.tokens()
    assert now.tolist() == [55] and left.tolist() == [15]
    gate.stepped(30)  # past its prediction: it keeps growing, with one token left at least
    now, left = gate.tokens()
    assert now.tolist() == [85] and left.tolist() == [1]


def test_a_request_larger_than_the_budget_still_runs_alone():
    gate = KvAdmission(budget_tokens=10)
    assert gate.admits(500, 500)


# --- the simulator with the gate -------------------------------------------------------------

def limits(kv_blocks: int, max_num_seqs: int = 8) -> EngineLimits:
    return EngineLimits(max_num_seqs=max_num_seqs, max_num_batched_tokens=4096, block_size=16, kv_blocks=kv_blocks)


def test_with_exact_lengths_the_gate_avoids_every_preemption_and_the_work_thrown_away():
    requests = [SimRequest(32, 200) for _ in range(8)]  # 8 x 15 blocks at full length, 60 in the cache
    fcfs = simulate(requests, limits(60), PER_STEP)
    gated = simulate(requests, limits(60), PER_STEP, admission=Admission(60 * 16, [200] * 8))
    assert fcfs.preemptions > 0 and gated.preemptions == 0
    assert gated.output_tokens == fcfs.output_tokens == 1600
    assert gated.prefill_tokens == 8 * 32 < fcfs.prefill_tokens  # nothing computed twice
    assert gated.peak_running == 4  # 4 x 232 tokens fit in 960; a 5th would not
    assert gated.seconds == 2 * 200  # two waves of four


def test_without_memory_pressure_the_gate_changes_nothing():
    requests = [SimRequest(20 + i, 5 + 7 * i % 40) for i in range(30)]
    fcfs = simulate(requests, limits(10_000), PER_STEP)
    gated = simulate(requests, limits(10_000), PER_STEP,
                     admission=Admission(10_000 * 16, [r.output_tokens for r in requests]))
    assert (gated.seconds, gated.steps, gated.preemptions) == (fcfs.seconds, fcfs.steps, fcfs.preemptions)


def test_underpredicted_lengths_fall_back_on_vllms_preemption_and_still_finish():
    requests = [SimRequest(32, 200) for _ in range(8)]
    gated = simulate(requests, limits(60), PER_STEP, admission=Admission(60 * 16, [20] * 8))  # 10x too short
    assert gated.output_tokens == 1600 and gated.preemptions > 0
