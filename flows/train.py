"""The predictor-training flow: learn one model's output lengths from its finished runs.

    python flows/train.py out/batchbin.duckdb
    batchbin train-predictor --db out/batchbin.duckdb [--model NAME]

The new version goes into the `predictors` registry under that model; `--predictor auto` runs
of the model use its newest one (batchbin/predictors/registry.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from batchbin.store import db
from batchbin.errors import BatchBinError


@task(name="train predictor", cache_policy=NO_CACHE, retries=0)
def train(db_path: str, default_max_tokens: int, seed: int, model: str | None = None, quick: bool = False) -> dict:
    """Train, evaluate and register a new predictor version ({"error": ...} when it cannot);
    `quick`: the newest QUICK_MAX_ROWS rows and QUICK_TRAIN_CONFIG's few epochs."""
    from batchbin.predictors.train import QUICK_MAX_ROWS, QUICK_TRAIN_CONFIG, train_predictor

    con = db.connect(db_path)
    try:
        return train_predictor(con, str(Path(db_path).resolve().parent / "predictors"), default_max_tokens, seed,
                               model=model, **({"train_config": QUICK_TRAIN_CONFIG, "max_rows": QUICK_MAX_ROWS}
                                               if quick else {}))
    except BatchBinError as error:  # e.g. too few finished requests: a message, not a traceback
        return {"error": str(error)}
    finally:
        con.close()


@flow(name="train-length-predictor", log_prints=True)
def train_length_predictor(db_path: str = "batchbin.duckdb", default_max_tokens: int = 256, seed: int = 0,
                           model: str | None = None, quick: bool = False, min_new_rows: int = 0) -> dict:
    """(Re)train the output-length predictor of `model` (default: the newest run's) on the real
    lengths of its finished runs.

    Args:
        quick: Learn from the newest 20,000 rows in few epochs (seconds, not minutes).
        min_new_rows: Train only when the model has at least this many finished results its newest
            predictor has not learnt from (0: always); the weekly schedule sets it.
    """
    if not Path(db_path).exists():
        return Failed(message=f"no BatchBin database at {db_path}; run `batchbin run` first")
    if min_new_rows > 0:
        from batchbin.flows.retrain import unused_results
        from batchbin.predictors.train import newest_run_model

        if model is None:
            con = db.connect(db_path, read_only=True)
            try:
                model = newest_run_model(con)
            finally:
                con.close()
        new_rows = unused_results(db_path, model) if model else 0
        if new_rows < min_new_rows:
            from batchbin.predictors.registry import model_key

            return {"trained": False, "reason": f"not due: {new_rows} results of {model_key(model)} not yet learnt "
                                                f"from (min_new_rows {min_new_rows})"}
    registered = train(db_path, default_max_tokens, seed, model, quick)
    if "error" in registered:
        return Failed(message=registered["error"])
    metrics = registered.get("metrics") or {}
    if isinstance(metrics, str):
        metrics = json.loads(metrics)
    rows = "\n".join(f"| {key} | {value} |" for key, value in metrics.items())
    create_markdown_artifact(key="batchbin-predictor", description="Latest length predictor",
                             markdown=f"# Predictor {registered['version']}\n\n| metric | value |\n|---|---|\n{rows}\n")
    return registered


if __name__ == "__main__":
    print(json.dumps(train_length_predictor(sys.argv[1] if len(sys.argv) > 1 else "batchbin.duckdb"), indent=2, default=str))
