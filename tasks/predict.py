"""Stage 4, predict lengths: the Prefect wiring of batchbin.predictors.predict."""

from __future__ import annotations

from prefect import task

from batchbin.predictors.predict import predict_lengths as predict_lengths_for_run
from batchbin.tasks.common import RunRef, Stage, open_run_db


def latest_predictor_version(ref: RunRef) -> str:
    """The version "auto" would pick now for the run's model ("" for the fallback): a newly
    registered predictor must not be answered from the cache of the old one's predictions."""
    from batchbin.predictors.predict import auto_entry

    with open_run_db(ref) as con:
        entry = auto_entry(con, ref.run_id)
    return "" if entry is None else entry["version"]


STAGE = Stage("predict_lengths", sql_file="predictors", modules=(__name__, "batchbin.predictors.predict"))


@task(**STAGE.task_options(extra_key=latest_predictor_version))
def predict_lengths(ref: RunRef, spec: str, default_max_tokens: int, after: str = "") -> RunRef:
    """Predicted output length of every request (trained predictor, fallback or oracle);
    `after`: the stamp of the stage before it."""
    params = {"spec": spec, "default_max_tokens": default_max_tokens, "after": after,
              "predictor": latest_predictor_version(ref) or None if spec == "auto" else None}
    with open_run_db(ref) as con:
        if not STAGE.is_done(con, ref.run_id, params):
            counts = predict_lengths_for_run(con, ref.run_id, spec, default_max_tokens)
            STAGE.mark_done(con, ref.run_id, params, counts["rows"])
    return ref
