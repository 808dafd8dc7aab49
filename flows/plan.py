"""`batchbin plan INPUT`: a dry run that says what a job would do, before any generation.

    batchbin plan prompts.jsonl --gpu h100 --model-size 8b

It runs the stages before generation (load, tokenize, group_prefixes, predict_lengths,
schedule) into a database (a temporary one unless --db is given: then a later `batchbin run`
of the same file reuses them), builds no engine, and reports:

- the requests, their prompt tokens and the predicted output tokens;
- the prefix reuse the prompts allow (what perfect prefix caching would skip);
- the order the schedule chose and why, and how requests would be handed to vLLM;
- the generation time the simulator predicts on this machine with the fitted step costs
  (batchbin/sim/simulator.py, batchbin/sim/step_costs.py): as planned, and as a capable user's run
  (token order, handed over as vLLM admits them); and which step costs it used: this machine's
  own fit (batchbin/sim/machine_fits.py), or another CPU's with a warning and the offer of
  `batchbin doctor --calibrate`;
- the same on a GPU for a model size named on the command line.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from batchbin.store import db
from batchbin.config import JobConfig
from batchbin.io.query_jobs import kept_query_results
from batchbin.sim.stored_runs import AS_RUN, OrderEstimate, cpu_cost, open_run, simulate_run
from batchbin.store.queries import fetch_one
from batchbin.store.runs import RunRef

BASELINE_ORDER = "sorted"  # what a capable user does by hand: prompts in token order


@dataclass
class Plan:
    """What `batchbin plan` found and predicts for a job."""

    run_id: str
    requests: int
    rejects: int
    prompt_tokens: int
    ideal_cached_tokens: int
    prefix_groups: int
    predicted: dict            # total, mean, median, p90 predicted output tokens, predictor
    order: str
    requested_order: str
    reason: str
    engine: dict
    kv_admission: bool = False  # requests handed to vLLM by their predicted memory
    answered: int = 0           # requests answered from earlier runs (tasks/reuse.py): not generated
    estimates: list[OrderEstimate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    db_path: str | None = None  # kept database, if any
    field_order: dict | None = None  # a table job with --field-order auto: prefix reuse in the user's order and the chosen one
    step_costs: str | None = None    # which step costs the estimate on this machine used
    own_step_costs: bool = False     # ... this machine's own fit of the engine's kind


def prepare(config: JobConfig) -> tuple[RunRef, int]:
    """Run the stages before generation into config.db_path; returns the run and its rejects."""
    from batchbin.flows.batch import check_input, prepare_work
    from batchbin.engine.models import resolve_model
    from batchbin.store.runs import finish_run

    check_input(config)
    model_path = resolve_model(config.model)
    fingerprint = config.input_fingerprint()
    ref = RunRef(db_path=str(Path(config.db_path).resolve()), run_id=config.run_id(fingerprint))
    with db.session(ref.db_path):
        prepared = prepare_work(ref, config, fingerprint, model_path, with_probe=False)  # no engine here
        finish_run(prepared.ref, "planned")
    return prepared.ref, prepared.loaded.rejects


def describe(ref: RunRef, rejects: int, gpu: tuple[str, str] | None, cpu: bool = True) -> Plan:
    """Read what the stages found and simulate the run's order and token order."""
    stored = open_run(ref.db_path, ref.run_id)
    try:
        con = stored.con
        requested, used, reason = fetch_one(con, "simulate.schedule_choice", {"run_id": ref.run_id})
        with db.connect(ref.db_path, read_only=True) as source:
            prefix = fetch_one(source, "simulate.prefix_stats", {"run_id": ref.run_id})
            predicted = fetch_one(source, "simulate.prediction_stats", {"run_id": ref.run_id})
            answered = fetch_one(source, "reuse.count_reused", {"run_id": ref.run_id})[0]
        requests, prompt_tokens, _, ideal_cached, groups = prefix or (len(stored.requests("predicted")), 0, 0, 0, 0)
        chosen = cpu_cost(stored.engine, stored.model, ref.db_path) if cpu else None
        simulation = simulate_run(stored, [AS_RUN], lengths="predicted", cpu=cpu, gpu=gpu, step_cost=chosen)
        if used != BASELINE_ORDER or stored.kv_admission:  # the capable user's run, to compare with
            simulation.estimates += simulate_run(stored, [BASELINE_ORDER], lengths="predicted", cpu=cpu, gpu=gpu,
                                                 kv_admission=False, step_cost=chosen).estimates
    finally:
        stored.con.close()
    names = ("requests", "total", "mean", "median", "p90", "predictor")
    return Plan(run_id=ref.run_id, requests=requests, rejects=rejects, prompt_tokens=int(prompt_tokens or 0),
                ideal_cached_tokens=int(ideal_cached or 0), prefix_groups=int(groups or 0),
                predicted=dict(zip(names, predicted)), order=used, requested_order=requested, reason=reason,
                engine=stored.engine, kv_admission=stored.kv_admission, answered=answered, estimates=simulation.estimates,
                warnings=simulation.warnings, step_costs=simulation.step_costs,
                own_step_costs=bool(chosen and chosen.own))


@contextmanager
def planning_database(db_path: str | None) -> Iterator[str]:
    """The database the plan writes: `db_path`, or a temporary file removed afterwards."""
    if db_path:
        yield db_path
        return
    with tempfile.TemporaryDirectory(prefix="batchbin-plan-") as folder:
        yield str(Path(folder) / "plan.duckdb")


def make_plan(config: JobConfig, gpu: tuple[str, str] | None = None, keep_db: bool = False) -> Plan:
    """Prepare the job (no generation) and predict its generation time here and on `gpu`."""
    from batchbin.engine.models import resolve_model
    from batchbin.engine.settings import DEFAULT_BLOCK_TOKENS
    from batchbin.flows.table_jobs import field_order_reuse

    with kept_query_results():  # a table job's query runs once
        ref, rejects = prepare(config)
        plan = describe(ref, rejects, gpu)
        plan.db_path = ref.db_path if keep_db else None
        plan.field_order = field_order_reuse(config, resolve_model(config.model),
                                             plan.engine.get("block_size") or DEFAULT_BLOCK_TOKENS)
    return plan


def format_plan(plan: Plan) -> str:
    """The plan as the terminal shows it."""
    p = plan.predicted
    reuse = plan.ideal_cached_tokens / plan.prompt_tokens if plan.prompt_tokens else 0.0
    engine = plan.engine
    lines = [
        f"BatchBin plan for run {plan.run_id} (nothing generated)",
        f"  requests        {plan.requests} valid, {plan.rejects} rejected",
        f"  answered        {plan.answered} requests already, from earlier runs in the database (not generated"
        + ("; give --db to look in one)" if plan.db_path is None and not plan.answered else ")"),
        f"  prompt tokens   {plan.prompt_tokens:,}",
        f"  output tokens   {p['total'] or 0:,.0f} predicted (mean {p['mean'] or 0:.0f}, median {p['median'] or 0:.0f}, "
        f"90th percentile {p['p90'] or 0:.0f}; predictor {p['predictor']})",
        f"  prefix reuse    {plan.ideal_cached_tokens:,} prompt tokens shared ({reuse:.0%} of the prompt tokens, "
        f"{plan.prefix_groups} prefix groups)",
        *field_order_lines(plan.field_order),
        f"  order           {plan.order} ({plan.reason})",
        f"  admission       {'by predicted memory (while the KV cache holds every request inside at its predicted peak)' if plan.kv_admission else 'as vLLM admits them (--no-kv-admission)'}",
        f"  engine          max_num_seqs {engine.get('max_num_seqs')}, max_num_batched_tokens "
        f"{engine.get('max_num_batched_tokens')}, block {engine.get('block_size')}, KV cache "
        f"{engine.get('kv_cache_gib')} GiB, {engine.get('dtype')}, "
        f"{'eager' if engine.get('enforce_eager') else 'torch.compile'}",
        "  estimated generation time (simulated on the predicted lengths; engine start not included):",
    ]
    for estimate in plan.estimates:
        r = estimate.result
        order = f"{estimate.used} (this plan)" if estimate.order == AS_RUN else f"{estimate.used} (token order, vLLM admits)"
        lines.append(f"    {estimate.device:34} {order:34} {format_seconds(r.seconds):>9}  "
                     f"{r.output_tokens / r.seconds if r.seconds else 0:,.0f} tokens/s, {r.preemptions} preemptions, "
                     f"{r.cached_tokens:,} cached prompt tokens, {format_seconds(r.prefill_s)} in prefill steps, "
                     f"{format_seconds(r.tail_s)} of tail")
    if plan.step_costs:
        lines.append(f"  {plan.step_costs.replace('step costs: ', 'step costs      ', 1)}")
    lines += [f"  note            {warning}" for warning in plan.warnings]
    if plan.db_path:
        lines.append(f"  database        {plan.db_path} (`batchbin run` of the same file with --db reuses these stages)")
    return "\n".join(lines)


def field_order_lines(reuse: dict | None) -> list[str]:
    """A table job's prefix reuse with its fields in the query's column order and in the chosen one."""
    if not reuse:
        return []

    def share(name: str) -> str:
        total = reuse[f"prompt_tokens_{name}"]
        cached = reuse[f"reusable_tokens_{name}"]
        return f"{cached:,} of {total:,} prompt tokens ({cached / total if total else 0:.0%}), {total - cached:,} to compute"

    return [f"  field order     chosen: {', '.join(reuse['fields_chosen'])}",
            f"  prefix reuse    in the query's column order {share('user')}",
            f"                  in the chosen order         {share('chosen')} (whole {reuse['block']}-token blocks, prompts sorted)"]


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
