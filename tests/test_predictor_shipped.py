"""The predictor BatchBin ships: its checkpoint, the ShareGPT split it keeps from the benchmark,
its training command on a tiny config, and calibration to a served model (predictors/sharegpt.py,
predictors/train.py train_from_sharegpt, predictors/calibrate.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from batchbin.predictors import sharegpt
from batchbin.predictors.calibrate import MIN_PROBE, fit_log_linear
from batchbin.predictors.model import TINY_CONFIG
from batchbin.predictors.registry import SHIPPED_PATH, load_predictor, shipped_predictor
from batchbin.predictors.train import TINY_TRAIN_CONFIG, train_from_sharegpt

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample_prompts.jsonl"


def sample_requests() -> list[dict]:
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    return [{"prompt": r.get("prompt"), "messages": r.get("messages"), "max_tokens": r.get("max_tokens") or 256}
            for r in rows]


def test_shipped_checkpoint_is_small_and_loads():
    assert SHIPPED_PATH.is_file() and SHIPPED_PATH.stat().st_size < 2_000_000
    predictor = load_predictor(SHIPPED_PATH)
    metrics = predictor.metrics
    for key in ("mae", "kendall_tau", "spearman", "bin_accuracy_k2", "bin_accuracy_k4", "bin_accuracy_k8",
                "n_train", "n_test"):
        assert metrics[key] is not None, key
    # better than both baselines on its held-out conversations
    assert metrics["kendall_tau"] > max(0.0, metrics["baseline_prompt_len_kendall_tau"])
    assert metrics["bin_accuracy_k4"] > max(0.25, metrics["baseline_prompt_len_bin_accuracy_k4"])
    assert shipped_predictor()["version"].startswith("sharegpt-")


def test_shipped_predictor_predicts_the_sample_file():
    requests = sample_requests()
    predictor = load_predictor(SHIPPED_PATH)
    started = time.perf_counter()
    tokens = predictor.predict(requests)
    assert time.perf_counter() - started < 5
    assert len(tokens) == len(requests) and np.isfinite(tokens).all()
    assert all(1 <= t <= r["max_tokens"] for t, r in zip(tokens, requests))
    assert len(set(np.round(tokens, 3))) > len(requests) // 2  # it tells prompts apart
    short, long = predictor.predict([
        {"prompt": "Answer with one word: what colour is the sky?", "max_tokens": 4096},
        {"prompt": "Write a detailed, step by step guide to building a web app in Python, with code.", "max_tokens": 4096},
    ])
    assert short < long


def test_training_and_benchmark_conversations_are_disjoint():
    from batchbin.bench.sharegpt import benchmark_conversations, sharegpt_requests
    from batchbin.bench.workloads import make_workload

    ids = [str(c.get("id")) for c in sharegpt.conversations(limit=2000)]
    training = [i for i in ids if sharegpt.is_training_conversation(i)]
    assert 0.7 < len(training) / len(ids) < 0.8  # TRAIN_SHARE
    assert {sharegpt.part_of(i) for i in training} == {"train", "val", "test"}
    assert all(sharegpt.part_of(i) == "bench" for i in ids if i not in set(training))
    bench = {row["id"].removeprefix("sharegpt-").rsplit("-t", 1)[0] for row in sharegpt_requests(300, seed=0)}
    bench |= {row["metadata"]["conversation"].removeprefix("sharegpt-") for row in make_workload("sharegpt", 120, 7)}
    assert bench and not any(sharegpt.is_training_conversation(i) for i in bench)
    assert not any(sharegpt.is_training_conversation(str(c.get("id"))) for c in benchmark_conversations())


def test_length_rows_count_answers_in_the_tokenizer():
    tokenizer = sharegpt.default_tokenizer()
    rows = sharegpt.length_rows(tokenizer, limit=60)
    assert rows and all(sharegpt.is_training_conversation(r["conversation"]) for r in rows)
    row = next(r for r in rows if r["messages"][-1]["role"] == "user" and len(r["messages"]) >= 3)
    assert row["messages"][-2]["role"] == "assistant"
    assert all(0 < r["prompt_tokens"] <= sharegpt.MAX_PROMPT_TOKENS and r["output_tokens"] >= 1 for r in rows)


def test_train_from_sharegpt_tiny(tmp_path):
    out = tmp_path / "tiny.pt"
    trained = train_from_sharegpt(out, limit=400, model_config=TINY_CONFIG,
                                  train_config={**TINY_TRAIN_CONFIG, "max_epochs": 5})
    metrics = trained["metrics"]
    assert out.is_file() and trained["version"].startswith("sharegpt-")
    assert metrics["n_train"] > metrics["n_test"] > 0 and metrics["kendall_tau"] is not None
    assert load_predictor(out).predict([{"prompt": "Hi", "max_tokens": 16}])[0] <= 16


def test_calibration_on_a_tiny_or_inverted_probe_only_shifts():
    scale, shift = fit_log_linear([10, 20], [5, 10])
    assert len([10, 20]) < MIN_PROBE and scale == 1.0 and shift < 0
    scale, shift = fit_log_linear(np.arange(1, 20), np.arange(20, 1, -1))  # inverted: keep the order
    assert scale == 1.0
    assert fit_log_linear([], []) == (1.0, 0.0)
    with pytest.raises(ValueError):
        fit_log_linear([1, 2], [1])


def test_train_predictor_command_from_sharegpt(tmp_path):
    from click.testing import CliRunner

    from batchbin.cli.main import main

    out = tmp_path / "cli.pt"
    result = CliRunner().invoke(main, ["train-predictor", "--from", "sharegpt", "--limit", "150", "--out", str(out)])
    assert result.exit_code == 0, result.output
    trained = json.loads(result.output[result.output.index("{"):])
    assert trained["path"] == str(out) and trained["metrics"]["n_train"] > 0
    assert load_predictor(out).version == trained["version"]
