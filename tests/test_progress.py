"""What a user sees while generation runs: the progress snapshot, its line and its listeners."""

from __future__ import annotations

import pytest

from batchbin.engine.progress import GenerationProgress, format_seconds, listening, publish


def test_time_left_follows_the_pace_of_finished_requests():
    halfway = GenerationProgress(requests_done=50, requests_total=200, prompt_tokens=9000, output_tokens=4000,
                                 elapsed_s=100.0)
    assert halfway.fraction == 0.25
    assert halfway.seconds_left == pytest.approx(300.0)
    assert halfway.tokens_per_s == pytest.approx(40.0)
    assert GenerationProgress(0, 200, 5000, 0, 30.0).seconds_left is None  # still in prefill: no pace yet


def test_the_line_says_prefill_and_output_so_far():
    line = GenerationProgress(0, 260, 48_000, 0, 120.0, preemptions=3).line()
    assert line == "0/260 requests, 48,000 prompt tokens prefilled, 0 output tokens, 0 tokens/s, 3 preemptions"
    assert "3 min 0 s left" in GenerationProgress(10, 20, 100, 100, 180.0).line()


def test_format_seconds():
    assert [format_seconds(s) for s in (4.4, 65, 3599, 8040)] == ["4 s", "1 min 5 s", "59 min 59 s", "2 h 14 min"]


def test_listeners_hear_snapshots_only_while_listening():
    heard = []
    snapshot = GenerationProgress(1, 2, 3, 4, 5.0)
    with listening(heard.append):
        publish(snapshot)
    publish(snapshot)
    assert heard == [snapshot]
