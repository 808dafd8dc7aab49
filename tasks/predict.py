"""Stage 4, predict lengths: the Prefect wiring of batchbin.predictors.predict."""

from __future__ import annotations

from prefect import task

from batchbin.predictors.predict import predict_lengths as predict_lengths_for_run
from batchbin.tasks.common import RunRef, clear_stages, mark_stage_done, open_run_db, stage_is_done, stage_task_options


@task(**stage_task_options("predict_lengths"))
def predict_lengths(ref: RunRef, spec: str, default_max_tokens: int) -> RunRef:
    """Predicted output length of every request (trained predictor, fallback or oracle)."""
    with open_run_db(ref) as con:
        params = {"spec": spec, "default_max_tokens": default_max_tokens,
                  "predictor": _latest_version(con) if spec == "auto" else None}
        if not stage_is_done(con, ref.run_id, "predict_lengths", params):
            counts = predict_lengths_for_run(con, ref.run_id, spec, default_max_tokens)
            clear_stages(con, ref.run_id, ["schedule"])
            mark_stage_done(con, ref.run_id, "predict_lengths", params, counts["rows"])
    return ref


def _latest_version(con) -> str | None:
    from batchbin.predictors.registry import latest_predictor

    latest = latest_predictor(con)
    return None if latest is None else latest["version"]
