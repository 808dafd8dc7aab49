"""Stage 4, predict lengths: the predicted output tokens of every request of a run.

    predict_lengths(con, run_id, spec="auto", default_max_tokens=256)

spec chooses the predictor:
  "auto"              for the run's model: its newest registered predictor once it learnt enough
                      of the model's answers, else the shipped ShareGPT predictor, else the
                      fallback (registry.auto_choice; the reason is kept in `predictor_choices`);
  "fallback"          the fallback rule below;
  "oracle:<run_id>"   the real output tokens of the same request ids in a finished run (the
                      benchmark's perfect predictor); ids missing there get the fallback;
  "file:<path>"       the user's own predictions: a JSONL, Parquet or CSV file with the columns
                      `id` and `predicted_tokens`, used as given (ids missing there get the fallback);
  "<version>"         one registered predictor by its version.
Each row of `predictions` names the predictor that made it ('fallback', 'oracle:<run_id>',
'file:<path>' or the trained version). Re-running replaces the run's rows (idempotent).

A request's own limits bind every prediction but a file's: a request whose length is fixed
(`ignore_eos`, or `min_tokens` equal to `max_tokens`) is predicted at exactly `max_tokens`, and
no prediction is below the request's `min_tokens`.

THE FALLBACK (no predictor loads, or asked for by name): base = the median output tokens of the finished
requests of other runs, or max_tokens / 2 when there are none; per request:
  - an explicit length request ("in 100 words", "3 paragraphs") -> its token estimate
    (features.asked_length);
  - else a short-answer cue ("one word", "yes or no", "briefly", "one sentence", ...) -> base / 4;
  - else a long-answer cue ("list", "essay", "step by step", "detailed", code, ...) -> base * 2;
  - else base;
always clipped to [1, max_tokens]. Crude, but it orders obvious cases and needs no training.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from batchbin.store.db import CHUNK_ROWS, registered, scan_once, transaction
from batchbin.errors import BatchBinError
from batchbin.predictors.features import (FeatureSettings, asked_length, has_long_cue, has_short_cue,
                                          instruction_window, last_user_text)
from batchbin.predictors.registry import AutoChoice, PredictorNotFound, auto_choice, get_predictor, load_predictor
from batchbin.scheduling import EngineRoom, JobLoad, lengths_matter
from batchbin.store.queries import execute, fetch_one, row_batches

log = logging.getLogger(__name__)

FALLBACK = "fallback"
SHORT_FACTOR = 0.25
LONG_FACTOR = 2.0

PREDICTIONS_SCHEMA = pa.schema([("request_id", pa.string()), ("predicted_tokens", pa.float64()),
                                ("predictor", pa.string())])


class PredictorSpecError(BatchBinError):
    """A predictor spec that names nothing usable."""


def fallback_length(request: dict, base: float | None) -> float:
    """The fallback rule (module docstring) for one request with max_tokens set."""
    limit = max(1, int(request["max_tokens"]))
    text = instruction_window(last_user_text(request), FeatureSettings()).lower()
    base_tokens = min(limit, base) if base is not None and not math.isnan(base) else limit / 2
    asked = asked_length(text)
    if asked is not None:
        value = asked
    elif has_short_cue(text):
        value = base_tokens * SHORT_FACTOR
    elif has_long_cue(text):
        value = base_tokens * LONG_FACTOR
    else:
        value = base_tokens
    return float(min(max(value, 1.0), limit))


def fallback_lengths(requests: list[dict], base: float | None) -> np.ndarray:
    return np.array([fallback_length(request, base) for request in requests], dtype=np.float64)


def within_request_limits(values: np.ndarray, requests: list[dict]) -> np.ndarray:
    """Predictions bound by each request's own limits: exactly max_tokens where the length is
    fixed (ignore_eos, or min_tokens >= max_tokens), never below min_tokens."""
    limits = np.array([max(1, r["max_tokens"]) for r in requests], dtype=np.float64)
    floors = np.minimum(np.array([r.get("min_tokens") or 0 for r in requests], dtype=np.float64), limits)
    fixed = np.array([bool(r.get("ignore_eos")) for r in requests]) | (floors >= limits)
    return np.where(fixed, limits, np.maximum(values, floors))


def _from_file(spec: str) -> Predict:
    """The predictions of a file (`file:<path>`), used as given; ids it lacks get the fallback
    rule with max_tokens / 2 as its base."""
    path = spec.partition(":")[2].strip()
    known = read_length_file(path)

    def predict(requests: list[dict]) -> tuple[np.ndarray, list[str]]:
        values = [known.get(r["request_id"]) for r in requests]
        names = [spec if v is not None else FALLBACK for v in values]
        return np.array([v if v is not None else fallback_length(r, None) for v, r in zip(values, requests)],
                        dtype=np.float64), names

    return predict


def read_length_file(path: str) -> dict[str, float]:
    """id -> predicted tokens from a JSONL, Parquet or CSV file (columns `id`, `predicted_tokens`)."""
    import polars as pl

    if not path:
        raise PredictorSpecError("file needs a path: --predictor file:<lengths.jsonl|.parquet|.csv>")
    if not Path(path).is_file():
        raise PredictorSpecError(f"file:{path}: no such file")
    suffix = Path(path).suffix.lower()
    try:
        frame = (pl.read_parquet(path) if suffix == ".parquet" else pl.read_csv(path) if suffix == ".csv"
                 else pl.read_ndjson(path))
    except Exception as error:
        raise PredictorSpecError(f"file:{path}: cannot read it ({type(error).__name__}: {error})") from error
    missing = {"id", "predicted_tokens"} - set(frame.columns)
    if missing:
        raise PredictorSpecError(f"file:{path}: no column {', '.join(sorted(missing))} (it needs id and predicted_tokens)")
    frame = frame.select(pl.col("id").cast(pl.Utf8), pl.col("predicted_tokens").cast(pl.Float64, strict=False))
    bad = frame.filter(pl.col("predicted_tokens").is_null() | ~pl.col("predicted_tokens").is_finite()
                       | (pl.col("predicted_tokens") < 0))
    if bad.height:
        raise PredictorSpecError(f"file:{path}: predicted_tokens of id '{bad['id'][0]}' is not a number >= 0")
    return {key: max(1.0, value) for key, value in zip(frame["id"].to_list(), frame["predicted_tokens"].to_list())}


def run_request_batches(con, run_id: str, default_max_tokens: int,
                        rows_per_batch: int = CHUNK_ROWS) -> Iterator[list[dict]]:
    """The run's requests with what the predictors read, in input order, `rows_per_batch` at a
    time (a large run's prompts need not fit in memory)."""
    return row_batches(con, "predictors.run_requests", {"run_id": run_id, "default_max_tokens": default_max_tokens},
                       rows_per_batch)


def run_model(con, run_id: str) -> str | None:
    """The model of a run (None for a run without a row in `runs`)."""
    rows = execute(con, "predictors.run_model", {"run_id": run_id}).fetchall()
    return rows[0][0] if rows else None


def auto_entry(con, run_id: str) -> dict | None:
    """The predictor "auto" picks for a run (registry.auto_choice of its model), or None."""
    return auto_choice_of(con, run_id).entry


def auto_choice_of(con, run_id: str) -> AutoChoice:
    """The predictor "auto" picks for a run, with the reason."""
    return auto_choice(con, run_model(con, run_id))


def fallback_base(con, run_id: str) -> float | None:
    value = execute(con, "predictors.past_median_output", {"run_id": run_id}).fetchall()[0][0]
    return None if value is None else float(value)


Predict = Callable[[list[dict]], tuple[np.ndarray, list[str]]]


def _oracle(con, run_id: str, source_run_id: str) -> Predict:
    if not source_run_id:
        raise PredictorSpecError("oracle needs a run id: --predictor oracle:<run_id of a finished run>")
    if execute(con, "predictors.count_results", {"run_id": source_run_id}).fetchall()[0][0] == 0:
        raise PredictorSpecError(
            f"oracle:{source_run_id}: that run has no finished results; run the same input once first "
            "and pass its run id (see `batchbin sql \"select run_id, status from runs\"`)"
        )
    known = dict(execute(con, "predictors.oracle_lengths", {"run_id": run_id, "source_run_id": source_run_id}).fetchall())
    base = fallback_base(con, run_id)

    def predict(requests: list[dict]) -> tuple[np.ndarray, list[str]]:
        values, names = [], []
        for request in requests:
            if request["request_id"] in known:
                values.append(min(max(float(known[request["request_id"]]), 1.0), max(1, request["max_tokens"])))
                names.append(f"oracle:{source_run_id}")
            else:
                values.append(fallback_length(request, base))
                names.append(FALLBACK)
        return np.array(values, dtype=np.float64), names

    return predict


def choose_predictor(con, run_id: str, spec: str) -> tuple[str, Predict]:
    """The predictor a spec names (see the module's doc) and a function from requests to
    (predicted lengths, the predictor of each)."""
    name, predict, _ = choose_predictor_why(con, run_id, spec)
    return name, predict


def choose_predictor_why(con, run_id: str, spec: str) -> tuple[str, Predict, str]:
    """choose_predictor, and why that predictor, in words."""
    spec = (spec or "auto").strip()
    if spec.startswith("file:"):
        return spec, _from_file(spec), "set by the user: the lengths of a file"
    if spec.startswith("oracle:") or spec == "oracle":
        source = spec.partition(":")[2].strip()
        return f"oracle:{source}", _oracle(con, run_id, source), "set by the user: a finished run's real lengths"
    reason = "set by the user"
    if spec == "auto":
        choice = auto_choice_of(con, run_id)
        entry, reason = choice.entry, choice.reason
        if entry is not None:
            try:
                model = load_predictor(entry["path"])
            except PredictorNotFound as error:  # auto: any predictor that loads, else the fallback
                log.warning("auto: %s; using the fallback", error)
                entry, reason = None, f"auto: the fallback rule: {error}"
            else:
                return (entry["version"], lambda requests: (model.predict(requests), [entry["version"]] * len(requests)),
                        reason)
    elif spec == FALLBACK:
        entry = None
    else:
        entry = get_predictor(con, spec)
        if entry is None:
            raise PredictorSpecError(
                f"unknown predictor '{spec}': use 'auto', 'fallback', 'oracle:<run_id>', 'file:<path>' or a version "
                "from `batchbin sql \"select version, metrics from predictors\"`"
            )
    if entry is None:
        base = fallback_base(con, run_id)
        return FALLBACK, lambda requests: (fallback_lengths(requests, base), [FALLBACK] * len(requests)), reason
    model = load_predictor(entry["path"])
    return entry["version"], lambda requests: (model.predict(requests), [entry["version"]] * len(requests)), reason


def lengths_decide_nothing(con, run_id: str, engine_room: EngineRoom) -> str | None:
    """Why the run's output lengths cannot change what it costs (every request runs at once in
    an engine of `engine_room`: batchbin/scheduling.py `lengths_matter`, asked as the schedule
    will ask it), or None where they can."""
    requests, _, kv_tokens_needed = fetch_one(con, "schedule.prediction_spread", {"run_id": run_id})
    verdict = lengths_matter(JobLoad(requests, engine_room.max_num_seqs, kv_tokens_needed, engine_room.kv_cache_tokens))
    return None if verdict.matter else verdict.reason


def predict_lengths(con, run_id: str, spec: str = "auto", default_max_tokens: int = 256,
                    rows_per_batch: int = CHUNK_ROWS, engine_room: EngineRoom | None = None) -> dict:
    """Write `predictions` for every prompt of the run, `rows_per_batch` requests at a time, in
    place of the run's earlier ones (one transaction), and which predictor and why
    (`predictor_choices`); returns {"predictor", "reason", "rows", "fallback_rows"}.

    `engine_room`: the engine the run goes to (the batch flow gives it; `plan`, which estimates
    the run's time from its lengths, does not). Under "auto", a job whose lengths decide nothing
    there gets the fallback rule's quick estimates instead of the predictor's."""
    idle = lengths_decide_nothing(con, run_id, engine_room) if (spec or "auto") == "auto" and engine_room else None
    if idle is not None:
        base = fallback_base(con, run_id)
        name, reason = FALLBACK, f"auto: the fallback rule: lengths decide nothing here ({idle})"

        def predict(requests: list[dict]) -> tuple[np.ndarray, list[str]]:
            return fallback_lengths(requests, base), [FALLBACK] * len(requests)
    else:
        name, predict, reason = choose_predictor_why(con, run_id, spec)
    counts = {"predictor": name, "reason": reason, "rows": 0, "fallback_rows": 0}
    with transaction(con):
        execute(con, "predictors.clear_predictions", {"run_id": run_id})
        execute(con, "predictors.record_choice", {"run_id": run_id, "spec": spec or "auto", "predictor": name,
                                                  "reason": reason})
        for requests in run_request_batches(con, run_id, default_max_tokens, rows_per_batch):
            values, names = predict(requests)
            if not name.startswith("file:"):
                values = within_request_limits(values, requests)
            table = pa.Table.from_pydict({"request_id": [r["request_id"] for r in requests],
                                          "predicted_tokens": [float(v) for v in values], "predictor": names},
                                         schema=PREDICTIONS_SCHEMA)
            with registered(con, incoming_predictions=scan_once(table)):
                execute(con, "predictors.insert_predictions", {"run_id": run_id})
            counts["rows"] += len(requests)
            counts["fallback_rows"] += names.count(FALLBACK)
    return counts
