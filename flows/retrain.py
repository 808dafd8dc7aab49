"""Retraining after a batch run: the batch flow's `retrain_after` parameter.

When a batch run has finished and its database holds at least `retrain_after` results of the
served model that its predictor has not learnt from yet (finished after that model's newest
predictor was registered, sql/retrain.sql), the model's own predictor is retrained, quickly
(the newest QUICK_MAX_ROWS rows, QUICK_TRAIN_CONFIG's few epochs: seconds for a few thousand
rows), for the next run's `--predictor auto` (predictors/registry.py takes it from
AUTO_MIN_OWN_ROWS rows):
- where the Prefect server the run reports to has the retraining deployment
  (`train-length-predictor/retrain-predictor`, `prefect deploy --all`), the run starts it on the
  same database and returns at once (`run_deployment(timeout=0)`): a flow run of its own on the
  work pool (its own state, logs and artifact, tagged `retrain-after`);
- else it trains in this process, at the end of the batch flow (`batchbin run --retrain-after N`
  without a server).
Either way the batch run's state is the batch job's alone: a training that fails (too few
results yet) does not fail it, and its log says what happened.
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

from batchbin.store import db
from batchbin.errors import BatchBinError
from batchbin.store.queries import execute, fetch_one

RETRAIN_DEPLOYMENT = "train-length-predictor/retrain-predictor"
TRIGGER_TAG = "retrain-after"  # on the flow runs it starts, to tell them from the scheduled ones


def unused_results(db_path: str, model: str | None = None) -> int:
    """Finished results of the database that no registered predictor has learnt from yet; with
    `model` (a name or path), those of that model's runs that its newest predictor has not."""
    from batchbin.predictors.registry import model_key

    con = db.connect(db_path, read_only=True)
    try:
        if model is None:
            return int(fetch_one(con, "retrain.unused_results")[0])
        key = model_key(model)
        rows = execute(con, "retrain.unused_results_by_model", {"model_key": key}).fetchall()
        return sum(int(count) for name, count in rows if model_key(name) == key)
    finally:
        con.close()


def retrain_if_due(db_path: str, threshold: int, default_max_tokens: int,
                   logger: logging.Logger | logging.LoggerAdapter, model: str | None = None,
                   in_process: bool = True) -> UUID | dict | None:
    """Retrain `model`'s predictor (module doc) when `db_path` holds `threshold` of its results
    or more that it has not learnt from: the deployment's new flow run id, or the registered
    predictor where it trained here (`in_process`, when the server has no such deployment); None
    when not due or not possible, saying why."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        unused = unused_results(db_path, model)
    except BatchBinError as error:
        logger.warning(f"retraining not started: cannot count the results ({error})")
        return None
    whose = f" of {model_key_of(model)}" if model else ""
    if unused < threshold:
        logger.info(f"retraining not due: {unused} results{whose} not yet learnt from, retrain_after is {threshold}")
        return None
    parameters = {"db_path": db_path, "default_max_tokens": default_max_tokens, "quick": True,
                  **({"model": model} if model else {})}
    try:
        flow_run = run_deployment(RETRAIN_DEPLOYMENT, parameters=parameters, timeout=0, tags=[TRIGGER_TAG],
                                  as_subflow=False)
    except ObjectNotFound:
        if not in_process:
            logger.warning(f"retraining not started: the Prefect server has no deployment {RETRAIN_DEPLOYMENT}; "
                           f"register it (`prefect deploy --all` in the repository) or run "
                           f"`batchbin train-predictor --db {db_path}`")
            return None
        return train_here(db_path, default_max_tokens, model, unused, threshold, logger)
    logger.info(f"retraining started: {unused} results{whose} not yet learnt from (retrain_after {threshold}); "
        f"flow run {flow_run.name} ({flow_run.id}) of {RETRAIN_DEPLOYMENT}")
    return flow_run.id


def model_key_of(model: str | None) -> str | None:
    from batchbin.predictors.registry import model_key

    return model_key(model)


def train_here(db_path: str, default_max_tokens: int, model: str | None, unused: int, threshold: int,
               logger: logging.Logger | logging.LoggerAdapter) -> dict | None:
    """The quick retraining in this process (no retraining deployment on the server)."""
    from batchbin.flows.train import train

    started = time.perf_counter()
    registered = train(db_path, default_max_tokens, 0, model, quick=True)
    if "error" in registered:
        logger.warning(f"retraining here did not train: {registered['error']}")
        return None
    logger.info(f"retrained here: {registered['version']} learnt {registered['train_rows']} answers of "
                f"{registered['model']} in {time.perf_counter() - started:.1f} s ({unused} new, retrain_after "
                f"{threshold}; no deployment {RETRAIN_DEPLOYMENT} on the server)")
    return registered
