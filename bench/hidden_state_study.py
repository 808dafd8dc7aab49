"""Does the served model's own view of a prompt predict its answer's length better than
BatchBin's prompt features? Measured on finished runs, before anything is adopted.

TRAIL and EGTP report that the serving model's hidden states predict its output length better
than a separate prompt encoder. Here, for every finished request of a database: the served
model's last-layer hidden states over the chat-templated prompt (transformers on the CPU: what a
prefill computes, mean-pooled and at the last token), and BatchBin's own features
(predictors/features.py). The same ridge regression on log1p(tokens) is fitted on one run and
scored on another (prompts of other tasks), and on a split by request id (the same tasks on
both sides); the model's registered MLP predictor, trained on the --train run, is scored beside
them on the --test run.

    python -m batchbin.bench.hidden_state_study --db runs.duckdb --train RUN_ID --test RUN_ID
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from batchbin.predictors.evaluate import prediction_metrics
from batchbin.predictors.features import FeatureSettings, feature_matrix
from batchbin.predictors.train import split_mask, training_rows
from batchbin.store import db

METRICS = ("kendall_tau", "spearman", "bin_accuracy_k4", "mae")
RIDGE = 1.0


def chat_text(tokenizer, row: dict) -> str:
    if row.get("messages"):
        return tokenizer.apply_chat_template(json.loads(row["messages"]), tokenize=False, add_generation_prompt=True)
    return row["prompt"]


def hidden_states(model_path: str, rows: list[dict], max_tokens: int = 1024) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean-pooled, last-token) last-layer hidden states of each row's prompt, and seconds taken."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval()
    mean, last, started = [], [], time.perf_counter()
    with torch.no_grad():
        for row in rows:
            ids = tokenizer(chat_text(tokenizer, row), return_tensors="pt", truncation=True, max_length=max_tokens)
            out = model(**ids, output_hidden_states=True)
            states = out.hidden_states[-1][0].float()
            mean.append(states.mean(dim=0).numpy())
            last.append(states[-1].numpy())
    return np.stack(mean), np.stack(last), time.perf_counter() - started


def ridge_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Ridge regression on standardised features (closed form), predicted log1p tokens."""
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    w = np.linalg.solve(a.T @ a + RIDGE * len(a) * np.eye(a.shape[1]), a.T @ (y_train - y_train.mean()))
    return b @ w + y_train.mean()


def score(true: np.ndarray, predicted_log: np.ndarray) -> dict:
    metrics = prediction_metrics(true, np.expm1(predicted_log))
    return {key: metrics[key] for key in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--train", required=True, help="run id to fit on")
    parser.add_argument("--test", required=True, help="run id to score on (other prompts)")
    parser.add_argument("--model", default="default")
    args = parser.parse_args()

    from batchbin.engine.models import resolve_model
    from batchbin.predictors.registry import auto_predictor, load_predictor

    model_path = resolve_model(args.model)
    con = db.connect(args.db, read_only=True)
    try:
        rows = [r for r in training_rows(con, 256) if r["run_id"] in (args.train, args.test)]
        entry = auto_predictor(con, model_path)
    finally:
        con.close()
    mean, last, seconds = hidden_states(model_path, rows)
    features = feature_matrix(rows, FeatureSettings())
    y = np.log1p(np.array([r["output_tokens"] for r in rows], dtype=np.float64))
    true = np.expm1(y)
    representations = {"batchbin features": features, "hidden mean": mean, "hidden last": last,
                       "hidden mean + features": np.hstack([mean, features])}
    runs = np.array([r["run_id"] for r in rows])
    held = split_mask([f"{r['run_id']}/{r['request_id']}" for r in rows], 0.3)
    splits = {f"fit {args.train}, score {args.test}": (runs == args.train, runs == args.test),
              f"fit {args.test}, score {args.train}": (runs == args.test, runs == args.train),
              "split by id (same tasks)": (~held, held)}
    print(f"{len(rows)} requests; hidden states of {len(rows)} prompts in {seconds:.1f} s")
    for split, (fit_rows, test_rows) in splits.items():
        for name, x in representations.items():
            result = score(true[test_rows], ridge_scores(x[fit_rows], y[fit_rows], x[test_rows]))
            print(json.dumps({"split": split, "representation": name, **result}))
        # the registered predictor learnt the --train run (retrained after it): scored on the other only
        if entry is not None and entry.get("model") and split.startswith(f"fit {args.train}"):
            predicted = load_predictor(entry["path"]).predict([rows[i] for i in np.flatnonzero(test_rows)])
            result = prediction_metrics(true[test_rows], predicted)
            print(json.dumps({"split": split, "representation": f"registered {entry['version']}",
                              **{key: result[key] for key in METRICS}}))


if __name__ == "__main__":
    main()
