"""The registry of trained length predictors: the `predictors` table and the checkpoint files.

    latest_predictor(con)   # the newest registered predictor as a dict, or None
    load_predictor(path)    # a checkpoint file -> LengthPredictor (needs nothing else)
"""

from __future__ import annotations

import json
from pathlib import Path

from batchbin.errors import BatchBinError
from batchbin.predictors.model import LengthPredictor
from batchbin.sqlfiles import run

COLUMNS = ("version", "kind", "path", "train_rows", "metrics", "created_at")


class PredictorNotFound(BatchBinError):
    """A registered predictor whose checkpoint cannot be loaded."""


def _row_dict(rows: list) -> dict | None:
    # fetchall, not fetchone: DuckDB 2.0 refuses register() on a connection with a half-read result
    if not rows:
        return None
    entry = dict(zip(COLUMNS, rows[0]))
    entry["metrics"] = json.loads(entry["metrics"]) if entry["metrics"] else {}
    return entry


def latest_predictor(con) -> dict | None:
    """The most recently trained predictor (version, kind, path, train_rows, metrics, created_at)."""
    return _row_dict(run(con, "predictors.latest_predictor").fetchall())


def get_predictor(con, version: str) -> dict | None:
    """One registered predictor by version."""
    return _row_dict(run(con, "predictors.get_predictor", {"version": version}).fetchall())


def register_predictor(con, version: str, kind: str, path: str, train_rows: int, metrics: dict) -> dict:
    """Add (or replace) a registry row and return it."""
    run(con, "predictors.register_predictor", {
        "version": version, "kind": kind, "path": str(path), "train_rows": int(train_rows),
        "metrics": json.dumps(metrics, sort_keys=True),
    })
    return get_predictor(con, version)


def load_predictor(path: str | Path) -> LengthPredictor:
    """Load a checkpoint written by train_predictor."""
    path = Path(path)
    if not path.is_file():
        raise PredictorNotFound(
            f"predictor checkpoint {path} is missing; retrain with `batchbin train-predictor` "
            "or run with --predictor fallback"
        )
    try:
        return LengthPredictor.load(path)
    except ValueError as error:
        raise PredictorNotFound(str(error)) from error
