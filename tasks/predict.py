"""Stage 4, predict lengths: the Prefect wiring of batchbin.predictors.predict."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task

from batchbin.config import file_fingerprint

from batchbin.predictors.predict import predict_lengths as predict_lengths_for_run
from batchbin.scheduling import EngineRoom
from batchbin.store.runs import RunRef, open_run_db
from batchbin.tasks.common import Stage


def latest_predictor_version(ref: RunRef) -> str:
    """The version "auto" would pick now for the run's model ("" for the fallback): a newly
    registered predictor must not be answered from the cache of the old one's predictions."""
    from batchbin.predictors.predict import auto_entry

    with open_run_db(ref) as con:
        entry = auto_entry(con, ref.run_id)
    return "" if entry is None else entry["version"]


def predictor_identity(ref: RunRef, spec: str) -> str:
    """What besides the stage's inputs decides its predictions: the predictor "auto" picks now,
    or the contents of a `file:` spec's file (the same path may hold new numbers)."""
    if spec.startswith("file:"):
        path = Path(spec.partition(":")[2].strip())
        return file_fingerprint(path) if path.is_file() else ""
    return latest_predictor_version(ref) if spec == "auto" else ""


STAGE = Stage("predict_lengths", sql_file="predictors", modules=(__name__, "batchbin.predictors.predict"))


@task(**STAGE.task_options(extra_key=lambda ref, inputs: predictor_identity(ref, str(inputs.get("spec") or "auto"))))
def predict_lengths(ref: RunRef, spec: str, default_max_tokens: int, after: str = "",
                    engine_room: EngineRoom | None = None) -> RunRef:
    """Predicted output length of every request (trained predictor, fallback or oracle);
    `after`: the stamp of the stage before it; `engine_room`: the engine the run goes to, where
    "auto" skips the predictor for a job whose lengths decide nothing (predictors/predict.py)."""
    params = {"spec": spec, "default_max_tokens": default_max_tokens, "after": after,
              "predictor": predictor_identity(ref, spec) or None,
              "engine_room": asdict(engine_room) if engine_room else None}
    with open_run_db(ref) as con:
        if not STAGE.is_done(con, ref.run_id, params):
            counts = predict_lengths_for_run(con, ref.run_id, spec, default_max_tokens, engine_room=engine_room)
            STAGE.mark_done(con, ref.run_id, params, counts["rows"])
    return ref
