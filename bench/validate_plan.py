"""`batchbin bench --validate-plan`: does `batchbin plan` tell the truth on this machine?

    batchbin bench --workload mixed-length --requests 240 --validate-plan --fixed-lengths

Plans a job (the stages before generation, the simulator on the predicted lengths, with the step
costs `plan` would use), then runs the same job through the batch flow on the same database, and
prints the plan's estimate of the generation time against the measured one. Beside it, the same
step costs simulated on the run's real output lengths: the part of the error that is the step
costs' and the simulator's, not the length predictor's. `--fixed-lengths` makes every request
generate exactly its max_tokens (min_tokens = max_tokens, ignore_eos, as vLLM's throughput
benchmark does), so the plan knows the lengths and the comparison tests the step costs alone.

The estimate is taken before anything runs; a warm-up run of a few requests (same engine
settings) then starts the engine, so the timed run is not the engine's first. Every finished run
refits this machine's step costs (batchbin/sim/machine_fits.py), this one included: run the
command again and the next estimate uses a fit that has seen it.
"""

from __future__ import annotations

import json
from pathlib import Path

from batchbin.config import EngineOptions, JobConfig
from batchbin.engine.machine_load import cores_busy_elsewhere

WARMUP_REQUESTS = 8


def fixed_lengths(rows: list[dict], default_max_tokens: int) -> list[dict]:
    """Rows that generate exactly their max_tokens."""
    fixed = []
    for row in rows:
        tokens = row.get("max_tokens") or default_max_tokens
        fixed.append({**row, "max_tokens": tokens, "min_tokens": tokens, "ignore_eos": True})
    return fixed


def validate_plan(workload: str, out_dir: Path, n_requests: int | None = None, seed: int = 0,
                  engine_options: EngineOptions | None = None, fixed: bool = False, max_tokens: int | None = None,
                  default_max_tokens: int = 256, log=print) -> dict:
    """Plan the workload's job, run it, and return the estimate against the measurement (also
    written to out_dir/validate-plan.json)."""
    from batchbin.bench.harness import load_rows
    from batchbin.bench.workloads import write_jsonl
    from batchbin.engine.machine import detect_machine
    from batchbin.engine.models import resolve_model
    from batchbin.engine.settings import choose_engine_settings
    from batchbin.flows.batch import batch_inference
    from batchbin.flows.plan import make_plan
    from batchbin.flows.runtime import in_process_flow_runs
    from batchbin.sim.machine_fits import machine_name
    from batchbin.sim.stored_runs import AS_RUN, cpu_cost, measured, open_run, simulate_run

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = load_rows(workload, n_requests, seed, max_tokens)
    if fixed:
        rows = fixed_lengths(rows, default_max_tokens)
    input_path = write_jsonl(rows, out_dir / "requests.jsonl")
    db_path = out_dir / "validate.duckdb"
    for stale in (db_path, out_dir / "warmup.duckdb"):
        stale.unlink(missing_ok=True)
    engine_options = engine_options or EngineOptions()
    # the warm-up and the job on one engine: the kind the job's size chooses
    settings = choose_engine_settings(detect_machine(), engine_options, requests=len(rows))
    engine_options = engine_options.model_copy(update={"enforce_eager": settings.enforce_eager})
    config = JobConfig(input_path=str(input_path), db_path=str(db_path), output_path=str(out_dir / "out.jsonl"),
                       max_tokens=default_max_tokens, reuse_results=False, engine=engine_options)
    model = resolve_model(config.model)
    with in_process_flow_runs():
        plan = make_plan(config, keep_db=True)
        estimate = next(e for e in plan.estimates if e.order == AS_RUN and e.device == "this CPU")
        chosen = cpu_cost(plan.engine, model, str(db_path))  # the step costs the plan used, kept for later
        log(f"plan: {estimate.result.seconds:.1f} s of generation estimated; {plan.step_costs}")
        warm_input = write_jsonl(rows[:WARMUP_REQUESTS], out_dir / "warmup.jsonl")
        batch_inference(config.model_copy(update={"input_path": str(warm_input), "db_path": str(out_dir / "warmup.duckdb"),
                                                  "output_path": str(out_dir / "warmup.out.jsonl")}))
        busy: dict = {}
        with cores_busy_elsewhere(busy):
            report = batch_inference(config)
    run_id = report["run_id"]
    generate_s = measured(str(db_path), run_id).get("generate_s") or report["generate_s"]
    stored = open_run(str(db_path), run_id)
    try:
        real = simulate_run(stored, [AS_RUN], lengths="real", step_cost=chosen).estimates[0].result.seconds
    finally:
        stored.con.close()
    result = {
        "workload": workload, "requests": len(rows), "fixed_lengths": fixed, "run_id": run_id,
        "machine": machine_name(), "dtype": plan.engine.get("dtype"), "enforce_eager": plan.engine.get("enforce_eager"),
        "max_num_seqs": plan.engine.get("max_num_seqs"), "kv_cache_gib": plan.engine.get("kv_cache_gib"),
        "step_costs": plan.step_costs, "own_step_costs": plan.own_step_costs,
        "estimate_s": round(estimate.result.seconds, 2), "real_lengths_estimate_s": round(real, 2),
        "measured_s": round(generate_s, 2), "error": round(estimate.result.seconds / generate_s - 1, 4),
        "real_lengths_error": round(real / generate_s - 1, 4),
        "predicted_output_tokens": plan.predicted.get("total"), "output_tokens": report.get("output_tokens"),
        "cores_busy_elsewhere": busy.get("cores_busy_elsewhere"),
    }
    (out_dir / "validate-plan.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_validation(result: dict) -> str:
    return "\n".join([
        f"validate-plan {result['workload']}, {result['requests']} requests"
        f"{' (fixed lengths)' if result['fixed_lengths'] else ''}, run {result['run_id']} on {result['machine']}, "
        f"{result['dtype']}, {'eager' if result['enforce_eager'] else 'torch.compile'}, max_num_seqs "
        f"{result['max_num_seqs']}, KV cache {result['kv_cache_gib']} GiB",
        f"  {result['step_costs']}",
        f"  plan estimate   {result['estimate_s']:8.1f} s   ({result['error']:+.1%} against the measured generation)",
        f"  real lengths    {result['real_lengths_estimate_s']:8.1f} s   ({result['real_lengths_error']:+.1%}; the same "
        "step costs on the run's real output lengths)",
        f"  measured        {result['measured_s']:8.1f} s   of generation"
        + (f"; other processes kept {result['cores_busy_elsewhere']:.2f} cores busy meanwhile"
           if result.get("cores_busy_elsewhere") is not None else ""),
    ])
