"""Stage 4b, probe: a few of the job's own requests run first, in the engine that will run the
rest, and their real lengths calibrate the predicted lengths of the rest
(batchbin/predictors/probe.py) before the schedule is made. The logic is there and in
sql/probe.sql; this module runs it in two tasks, around the generate stage that the flow runs
between them (a stage does not know another): `start_probe` picks the probe and makes the
run's schedule the probe first, then the rest in token order; the generate stage runs that
only until the probe has finished, the engine kept full with the first of the rest meanwhile
(what still runs then goes on into the next phase); `finish_probe` calibrates on the probe's
results and marks the stage done, and the schedule stage orders what is left.

The probe runs only where lengths decide something: an order that uses them (not `sorted` or
`input`), a job whose requests queue (more than the engine runs at once, or more than its KV
cache holds at their limits: batchbin/scheduling.py `lengths_matter`), and a predictor that
guesses (not `oracle:` or `file:`, whose lengths are taken as given), for requests whose length
is not fixed by the request itself (ignore_eos, or min_tokens at max_tokens). Whether lengths matter
is decided from the job, never from the spread of the predictions: a predictor out of its
distribution predicts alike what the served model answers very differently. With the fraction
left to "auto" (None): where the predictor has not learnt the served model's answers (the
shipped one, the fallback, another model's), in every such job, at least MIN_PROBE requests
and never more than one engine wave (so it runs inside the first wave and costs no engine step
of its own); where it has, only in jobs of PROBE_MIN_WAVES engine waves or more (a new job's
templates are still new to it). Its results are the job's own: they are stored as any other and
the generate stage does not run them again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from batchbin.store.db import registered, scan_once, transaction
from batchbin.predictors.calibrate import MIN_PROBE
from batchbin.predictors.predict import run_model, within_request_limits
from batchbin.scheduling import JobLoad, lengths_matter, mark_duplicates
from batchbin.predictors.probe import (PROBE_FRACTION, PROBE_MIN_WAVES, TEMPLATE_TOKENS, ProbeCalibration, fit_probe,
                                       probe_size)
from batchbin.predictors.registry import predictor_origin
from batchbin.store.queries import execute, fetch_arrow
from batchbin.store.runs import RunRef, open_run_db
from batchbin.tasks.common import Stage, stage_task_options

CALIBRATED_SCHEMA = pa.schema([("request_id", pa.string()), ("calibrated_tokens", pa.float64())])
PAGE_ROWS = 65536


@dataclass(frozen=True)
class ProbePlan:
    size: int
    reason: str


def plan_probe(fraction: float | None, requests: int, order: str, spec: str, max_num_seqs: int,
               templates: int = 0, own_rows: int | None = None, kv_tokens_needed: int | None = None,
               kv_cache_tokens: int | None = None, fixed_lengths: int = 0) -> ProbePlan:
    """How many requests probe the job (0: none) and why (module doc). `fraction` None is
    "auto". `own_rows`: how many of the served model's answers the predictor learnt (None: it
    learnt none, it was trained elsewhere); `kv_tokens_needed`, `kv_cache_tokens`: the job's KV
    tokens at its limits and what the cache holds (None: unknown); `fixed_lengths`: how many of
    the requests fix their own length (ignore_eos, or min_tokens at max_tokens)."""
    if fraction is not None and fraction <= 0:
        return ProbePlan(0, "off (probe fraction 0)")
    if order in ("sorted", "input"):
        return ProbePlan(0, f"not needed: order '{order}' does not use lengths")
    if spec.startswith(("oracle", "file:")):
        return ProbePlan(0, f"not needed: predictor '{spec}' is used as given")
    if requests and fixed_lengths >= requests:
        return ProbePlan(0, f"not needed: all {requests} requests fix their own length (ignore_eos, or min_tokens "
                            "at max_tokens), so every length is known")
    verdict = lengths_matter(JobLoad(requests, max_num_seqs, kv_tokens_needed, kv_cache_tokens))
    if not verdict.matter:
        return ProbePlan(0, f"not needed: {verdict.reason}")
    waves = requests / max_num_seqs
    if fraction is None:
        if own_rows is not None:
            if waves < PROBE_MIN_WAVES:
                return ProbePlan(0, f"auto: not needed: the predictor learnt {own_rows} answers of the served model, "
                                    f"and a job of {waves:.1f} waves of {max_num_seqs} sequences leaves little to "
                                    f"reorder once a probe has run in the first; it runs from {PROBE_MIN_WAVES} "
                                    "(--probe FRACTION runs one anyway)")
            why = f"the predictor learnt {own_rows} answers of the served model, but not this job's templates"
            size = probe_size(requests, PROBE_FRACTION, templates, at_most=max_num_seqs)
        else:
            why = "the predictor has not learnt the served model's answers"
            size = probe_size(requests, PROBE_FRACTION, templates, at_least=MIN_PROBE, at_most=max_num_seqs)
        if size == 0:
            return ProbePlan(0, f"auto: job too small: {verdict.reason}, but a probe of at least {MIN_PROBE} requests "
                                f"would be more than {PROBE_FRACTION:g} of it")
        return ProbePlan(size, f"auto: {verdict.reason} and {why}: {size} of {requests} requests "
                               f"({size / requests:.1%}; {templates} prompt templates) run first, inside the first "
                               "wave, to calibrate it")
    size = probe_size(requests, fraction, templates)
    if size == 0:
        return ProbePlan(0, f"job too small: {fraction:g} of {requests} requests is too few to calibrate on")
    return ProbePlan(size, f"{size} of {requests} requests ({size / requests:.1%}; {templates} prompt templates) run "
                           "first to calibrate the predictor")


def own_rows_of(con, run_id: str) -> int | None:
    """How many of the served model's answers the run's predictor learnt (None: it learnt none,
    or the run mixes predictors: one of them was trained elsewhere)."""
    names = [row[0] for row in execute(con, "probe.run_predictors", {"run_id": run_id}).fetchall()]
    if len(names) != 1:
        return None
    origin = predictor_origin(con, names[0], run_model(con, run_id))
    return origin["train_rows"] if origin and origin["own"] else None


def template_table(con, run_id: str) -> pa.Table:
    return fetch_arrow(con, "probe.template_groups", {"run_id": run_id, "template_tokens": TEMPLATE_TOKENS})


def choose_probe(con, run_id: str, size: int, default_max_tokens: int, templates: pa.Table) -> int:
    """Pick the probe among the requests of `templates` (template_table) and make the run's
    schedule (for now) the probe first, then the rest in token order; returns the probe's size."""
    with transaction(con):
        with registered(con, probe_templates=templates):
            execute(con, "probe.choose_probe", {"run_id": run_id, "size": size, "default_max_tokens": default_max_tokens})
        execute(con, "probe.schedule_probe", {"run_id": run_id})
        mark_duplicates(con, run_id)  # identical requests run once in the probe's phase too
    return execute(con, "probe.count_probe", {"run_id": run_id}).fetchall()[0][0]


def calibrate_rest(con, run_id: str, default_max_tokens: int, generate_s: float) -> ProbeCalibration:
    """Fit the calibration on the probe's outcomes and write the calibrated predictions of
    every other request (one transaction)."""
    outcomes = fetch_arrow(con, "probe.probe_outcomes", {"run_id": run_id}).to_pydict()
    calibration = fit_probe(outcomes["predicted_tokens"], outcomes["output_tokens"], outcomes["template_group"])
    with transaction(con), registered(con, probe_templates=template_table(con, run_id)):
        after = ""
        while True:
            page = fetch_arrow(con, "probe.rest_of_job", {"run_id": run_id, "default_max_tokens": default_max_tokens,
                                                   "after": after, "limit": PAGE_ROWS}).to_pylist()
            if not page:
                break
            values = calibration.apply([r["predicted_tokens"] for r in page], [r["template_group"] for r in page],
                                       [r["max_tokens"] for r in page])
            values = within_request_limits(values, page)
            table = pa.Table.from_pydict({"request_id": [r["request_id"] for r in page],
                                          "calibrated_tokens": np.asarray(values, dtype=np.float64)},
                                         schema=CALIBRATED_SCHEMA)
            with registered(con, calibrated_rows=scan_once(table)):
                execute(con, "probe.write_calibration", {"run_id": run_id})
            after = page[-1]["request_id"]
        execute(con, "probe.record_probe", {"run_id": run_id, "requests": calibration.probe_rows,
                                        "templates": len(calibration.offsets), "scale": calibration.scale,
                                        "shift": calibration.shift, "generate_s": round(generate_s, 3)})
    return calibration


STAGE = Stage("probe", sql_file="probe", modules=(__name__, "batchbin.predictors.probe", "batchbin.predictors.calibrate"))


def probe_params(fraction: float | None, order: str, spec: str, default_max_tokens: int, max_num_seqs: int,
                 after: str, kv_cache_tokens: int | None = None) -> dict:
    return {"fraction": fraction, "order": order, "spec": spec, "default_max_tokens": default_max_tokens,
            "max_num_seqs": max_num_seqs, "template_tokens": TEMPLATE_TOKENS, "after": after,
            "kv_cache_tokens": kv_cache_tokens}


# The stage's own stamp (`stages`) says whether it is done; nothing is cached by Prefect.
@task(**{**stage_task_options("probe"), "cache_policy": NO_CACHE})
def start_probe(ref: RunRef, fraction: float | None, order: str, spec: str, default_max_tokens: int, max_num_seqs: int,
                after: str = "", kv_cache_tokens: int | None = None) -> int:
    """Choose the job's probe and make it the run's schedule; return its size, for the flow to
    generate it and then `finish_probe`. 0: no probe to run (none wanted, or done before).
    `kv_cache_tokens`: what the engine's KV cache holds, where known before it is built."""
    logger = get_run_logger()
    params = probe_params(fraction, order, spec, default_max_tokens, max_num_seqs, after, kv_cache_tokens)
    with open_run_db(ref) as con:
        if STAGE.is_done(con, ref.run_id, params):
            return 0
        requests, kv_needed, fixed = execute(con, "probe.count_predictions", {"run_id": ref.run_id,
                                                                              "default_max_tokens": default_max_tokens}
                                             ).fetchall()[0]
        templates = template_table(con, ref.run_id)
        plan = plan_probe(fraction, requests, order, spec, max_num_seqs,
                          pc.count_distinct(templates["template_group"]).as_py(), own_rows_of(con, ref.run_id),
                          kv_needed, kv_cache_tokens, fixed)
        logger.info("probe: %s", plan.reason)
        execute(con, "probe.record_choice", {"run_id": ref.run_id, "size": plan.size, "reason": plan.reason})
        execute(con, "probe.clear_calibration", {"run_id": ref.run_id})
        if plan.size == 0:
            execute(con, "probe.clear_probe", {"run_id": ref.run_id})
            STAGE.mark_done(con, ref.run_id, params, 0)
            return 0
        return choose_probe(con, ref.run_id, plan.size, default_max_tokens, templates)


@task(**{**stage_task_options("probe-calibrate"), "cache_policy": NO_CACHE})
def finish_probe(ref: RunRef, fraction: float | None, order: str, spec: str, default_max_tokens: int, max_num_seqs: int,
                 generate_s: float, after: str = "", kv_cache_tokens: int | None = None) -> dict:
    """Calibrate the rest of the job's predictions on the probe's results, and mark the stage done."""
    params = probe_params(fraction, order, spec, default_max_tokens, max_num_seqs, after, kv_cache_tokens)
    with open_run_db(ref) as con:
        calibration = calibrate_rest(con, ref.run_id, default_max_tokens, generate_s)
        STAGE.mark_done(con, ref.run_id, params, calibration.probe_rows)
    get_run_logger().info("probe: %s requests in %.1f s; log1p(tokens) ~ %.3f * log1p(predicted) + %.3f, "
                          "offsets for %s templates", calibration.probe_rows, generate_s, calibration.scale,
                          calibration.shift, len(calibration.offsets))
    return {**calibration.summary(), "generate_s": round(generate_s, 1)}
