"""Retraining after a batch run: the batch flow's `retrain_after` parameter.

When a batch run has finished and its database holds at least `retrain_after` results that no
predictor has learnt from yet (finished after the newest predictor was registered, sql/retrain.sql),
the run starts the retraining deployment (`train-length-predictor/retrain-predictor`, the one the
weekly schedule runs) on the same database and returns at once (`run_deployment(timeout=0)`).
The training is a flow run of its own on the work pool (not a subflow: its own state, logs and
artifact, tagged `retrain-after`); the batch run's state is the batch job's alone, and a training
that fails (too few results yet) does not fail it. The batch run's log names the training run.

It needs the deployments registered on the Prefect server the run reports to (`prefect deploy
--all`); without them the batch run says so and finishes as it would have.
"""

from __future__ import annotations

import logging
from uuid import UUID

from batchbin.store import db
from batchbin.errors import BatchBinError
from batchbin.store.queries import fetch_one

RETRAIN_DEPLOYMENT = "train-length-predictor/retrain-predictor"
TRIGGER_TAG = "retrain-after"  # on the flow runs it starts, to tell them from the scheduled ones


def unused_results(db_path: str) -> int:
    """Finished results of the database that no registered predictor has learnt from yet."""
    con = db.connect(db_path, read_only=True)
    try:
        return int(fetch_one(con, "retrain.unused_results")[0])
    finally:
        con.close()


def retrain_if_due(db_path: str, threshold: int, default_max_tokens: int,
                   logger: logging.Logger | logging.LoggerAdapter) -> UUID | None:
    """Start the retraining deployment on `db_path` when it holds `threshold` unused results or
    more; return the new flow run's id (None when not due or not possible, saying why)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        unused = unused_results(db_path)
    except BatchBinError as error:
        logger.warning(f"retraining not started: cannot count the results ({error})")
        return None
    if unused < threshold:
        logger.info(f"retraining not due: {unused} results not yet learnt from, retrain_after is {threshold}")
        return None
    try:
        flow_run = run_deployment(RETRAIN_DEPLOYMENT, parameters={"db_path": db_path,
                                                                  "default_max_tokens": default_max_tokens},
                                  timeout=0, tags=[TRIGGER_TAG], as_subflow=False)
    except ObjectNotFound:
        logger.warning(f"retraining not started: the Prefect server has no deployment {RETRAIN_DEPLOYMENT}; register it "
            f"(`prefect deploy --all` in the repository) or run `batchbin train-predictor --db {db_path}`")
        return None
    logger.info(f"retraining started: {unused} results not yet learnt from (retrain_after {threshold}); "
        f"flow run {flow_run.name} ({flow_run.id}) of {RETRAIN_DEPLOYMENT}")
    return flow_run.id
