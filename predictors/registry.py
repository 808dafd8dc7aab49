"""The registry of length predictors: the `predictors` table, per model, and the shipped one.

    model_key(model)            # the name predictors are keyed by ('SmolLM2-135M-Instruct', 'org/name')
    auto_predictor(con, model)  # what --predictor auto uses for a run of that model, or None
    load_predictor(path)        # a checkpoint file -> LengthPredictor (needs nothing else)

    auto_choice(con, model)     # the same with the reason, in words
    predictor_origin(con, version, model)  # which predictor: trained on what, how many rows, held-out metrics

Output lengths depend on the model, so each trained predictor is registered for the model whose
runs it learnt from. "auto" picks, for a run's model:
  1. the newest registered predictor of that model whose checkpoint exists (it learnt that
     model's own answers), once it learnt at least AUTO_MIN_OWN_ROWS of them; for a run of
     unknown model (no `runs` row), the newest of any model;
  2. else the shipped ShareGPT predictor (predictors/default/, trained on real ChatGPT answer
     lengths counted in the default model's tokenizer: its ranking carries over to other chat
     models only roughly, which is why a job whose lengths matter probes it, tasks/probe.py);
  3. else (no checkpoint loads) None: the fallback rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from batchbin.errors import BatchBinError
from batchbin.predictors.model import LengthPredictor
from batchbin.store.queries import execute

log = logging.getLogger(__name__)

COLUMNS = ("version", "kind", "path", "train_rows", "metrics", "created_at", "model")
# "auto" takes the served model's own predictor from this many of its answers learnt: one small
# job's worth. Below it the shipped predictor, which learnt 34k ShareGPT rows, is the better
# start (and the in-job probe calibrates either on the job itself).
AUTO_MIN_OWN_ROWS = 200
SHIPPED_DATA = "ShareGPT (ChatGPT's answers)"
# the held-out metrics a report shows of a predictor (of its validation or test rows)
HELD_OUT_KEYS = ("n_test", "kendall_tau", "spearman", "bin_accuracy_k4", "mae")
SHIPPED_PATH = Path(__file__).resolve().parent / "default" / "sharegpt-smollm2.pt"


class PredictorNotFound(BatchBinError):
    """A registered predictor whose checkpoint cannot be loaded."""


def model_key(model: str | None) -> str | None:
    """The key a model's predictors are registered under: a local folder's name, else the name
    as given (a hub id). None stays None."""
    if not model:
        return None
    text = str(model).rstrip("/")
    return Path(text).name if text.startswith(("/", "~", ".")) or Path(text).is_dir() else text


def _row_dict(rows: list) -> dict | None:
    # fetchall, not fetchone: DuckDB 2.0 refuses register() on a connection with a half-read result
    if not rows:
        return None
    entry = dict(zip(COLUMNS, rows[0]))
    entry["metrics"] = json.loads(entry["metrics"]) if entry["metrics"] else {}
    return entry


def latest_predictor(con) -> dict | None:
    """The most recently trained predictor of any model."""
    return _row_dict(execute(con, "predictors.latest_predictor").fetchall())


def get_predictor(con, version: str) -> dict | None:
    """One registered predictor by version."""
    return _row_dict(execute(con, "predictors.get_predictor", {"version": version}).fetchall())


def model_predictors(con, model: str | None) -> list[dict]:
    """The registered predictors of a model, newest first."""
    cursor = execute(con, "predictors.model_predictors", {"model": model_key(model)})
    return [_row_dict([row]) for row in cursor.fetchall()]


@lru_cache(maxsize=4)
def _shipped_version(path: str, size: int, mtime: float) -> str:
    return "sharegpt-" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]


@lru_cache(maxsize=4)
def _shipped_checkpoint(path: str, size: int, mtime: float) -> tuple[int | None, dict]:
    try:
        loaded = LengthPredictor.load(path)
    except Exception:  # noqa: BLE001 - a broken file is reported where it is loaded to predict
        return None, {}
    return loaded.train_rows, dict(loaded.metrics or {})


def _shipped_train_rows(path: str, size: int, mtime: float) -> int | None:
    return _shipped_checkpoint(path, size, mtime)[0]


def train_rows_of(con, version: str) -> int | None:
    """How many rows a predictor learnt from (registered or shipped), None if unknown."""
    entry = get_predictor(con, version)
    if entry is not None:
        return entry["train_rows"]
    shipped = shipped_predictor()
    if shipped is not None and shipped["version"] == version:
        stat = SHIPPED_PATH.stat()
        return _shipped_train_rows(str(SHIPPED_PATH), stat.st_size, stat.st_mtime)
    return None


def shipped_predictor() -> dict | None:
    """The predictor BatchBin ships (a registry-like dict), or None when its file is missing."""
    if not SHIPPED_PATH.is_file():
        return None
    stat = SHIPPED_PATH.stat()
    return {"version": _shipped_version(str(SHIPPED_PATH), stat.st_size, stat.st_mtime), "kind": "mlp",
            "path": str(SHIPPED_PATH), "model": None, "metrics": {}, "train_rows": None, "created_at": None}


@dataclass(frozen=True)
class AutoChoice:
    entry: dict | None  # None: the fallback rule
    reason: str


def auto_choice(con, model: str | None, min_own_rows: int = AUTO_MIN_OWN_ROWS) -> AutoChoice:
    """What --predictor auto uses for a run of `model` (module doc) and why, in words."""
    candidates = model_predictors(con, model) if model else [e for e in [latest_predictor(con)] if e]
    own = None
    for entry in candidates:
        if Path(entry["path"]).is_file():
            own = entry
            break
        log.warning("predictor %s of %s: checkpoint %s is missing, skipped", entry["version"], entry["model"], entry["path"])
    name = model_key(model) or "this model"
    if own is not None and (not model or (own["train_rows"] or 0) >= min_own_rows):
        return AutoChoice(own, f"auto: {own['version']}, {own['model'] or 'a model'}'s own predictor, learnt "
                               f"{own['train_rows']} of its answers")
    why = (f"{name}'s own predictor {own['version']} has learnt only {own['train_rows']} of its answers "
           f"(auto takes it from {min_own_rows})" if own is not None
           else f"no predictor of {name} yet (a finished run with --retrain-after, or `batchbin train-predictor`, "
                "trains one)")
    shipped = shipped_predictor()
    if shipped is None:
        return AutoChoice(None, f"auto: the fallback rule: {why}, and the shipped predictor is missing")
    return AutoChoice(shipped, f"auto: the shipped predictor, trained on {SHIPPED_DATA}: {why}")


def auto_predictor(con, model: str | None) -> dict | None:
    """What --predictor auto uses for a run of `model` (module doc); None means the fallback."""
    return auto_choice(con, model).entry


def predictor_origin(con, version: str | None, served_model: str | None) -> dict | None:
    """What a report says of the predictor `version`: its kind, what it was trained on (a
    model's own answers, or ShareGPT's), how many rows, its held-out metrics, and whether it
    learnt the served model's answers (`own`). None for an unknown version; the fallback rule
    and the `oracle:`/`file:` specs are described as what they are."""
    if not version:
        return None
    if version == "fallback":
        return {"version": version, "kind": "rule", "trained_on": "nothing (cue words and past medians)",
                "train_rows": 0, "held_out": {}, "own": False}
    if version.startswith(("oracle:", "file:")):
        return {"version": version, "kind": version.split(":", 1)[0], "trained_on": "given lengths", "train_rows": None,
                "held_out": {}, "own": False}
    entry = get_predictor(con, version)
    if entry is not None:
        held_out = {key: entry["metrics"].get(key) for key in HELD_OUT_KEYS if key in entry["metrics"]}
        return {"version": version, "kind": entry["kind"], "trained_on": f"{entry['model']}'s answers",
                "model": entry["model"], "train_rows": entry["train_rows"], "held_out": held_out,
                "own": bool(served_model) and entry["model"] == model_key(served_model)}
    shipped = shipped_predictor()
    if shipped is not None and shipped["version"] == version:
        stat = SHIPPED_PATH.stat()
        rows, metrics = _shipped_checkpoint(str(SHIPPED_PATH), stat.st_size, stat.st_mtime)
        return {"version": version, "kind": "mlp (shipped)", "trained_on": SHIPPED_DATA, "model": None,
                "train_rows": rows, "held_out": {key: metrics.get(key) for key in HELD_OUT_KEYS if key in metrics},
                "own": False}
    return None


def register_predictor(con, version: str, kind: str, path: str, train_rows: int, metrics: dict,
                       model: str | None = None) -> dict:
    """Add (or replace) a registry row for `model` and return it."""
    execute(con, "predictors.register_predictor", {
        "version": version, "kind": kind, "path": str(path), "train_rows": int(train_rows),
        "metrics": json.dumps(metrics, sort_keys=True), "model": model_key(model),
    })
    return get_predictor(con, version)


def load_predictor(path: str | Path) -> LengthPredictor:
    """Load a checkpoint written by the trainer."""
    path = Path(path)
    if not path.is_file():
        raise PredictorNotFound(
            f"predictor checkpoint {path} is missing; retrain with `batchbin train-predictor` "
            "or run with --predictor fallback"
        )
    try:
        return LengthPredictor.load(path)
    except (ValueError, RuntimeError, KeyError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise PredictorNotFound(f"{path}: {error}; retrain with `batchbin train-predictor`") from error
