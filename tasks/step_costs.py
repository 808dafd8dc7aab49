"""The learn_step_costs stage: after a finished run, its engine steps refit this machine's step
costs of the run's engine kind (batchbin/sim/machine_fits.py), which `batchbin plan` and
`batchbin simulate` then use.

    learn_step_costs.fn("batchbin.duckdb", run_id)   # outside a flow

It takes milliseconds (a capped sample of steps per run, least squares on four columns), and
it never fails the run: a fit that cannot be made is a warning in the run's log.
"""

from __future__ import annotations

import logging

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The task run's logger; outside a run (`.fn()`), this module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@task(name="learn-step-costs", cache_policy=NO_CACHE, persist_result=False, retries=0)
def learn_step_costs(db_path: str, run_id: str) -> dict | None:
    """Refit this machine's step costs with the run's steps; the fit's summary, or None."""
    logger = run_logger()
    try:
        from batchbin.sim.machine_fits import learn_from_run

        fit = learn_from_run(db_path, run_id)
    except Exception as error:  # a fit is a by-product: the run has finished whatever happens here
        logger.warning(f"step costs of this machine not refitted: {type(error).__name__}: {error}")
        return None
    if fit is None:
        logger.info("step costs of this machine not refitted: the run recorded too few engine steps with their context "
                    "(none where the engine core runs in its own process, or on a Ray cluster)")
        return None
    logger.info(f"step costs: {fit.describe()} (median error per step {fit.cost.fitted_on.get('median_abs_error_ms')} ms)")
    return {"key": fit.key.text, "runs": len(fit.run_ids), "steps": fit.steps}
