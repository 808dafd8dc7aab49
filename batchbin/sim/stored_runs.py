"""Stored runs as simulator input: their requests in any BatchBin order, their engine, the
machine's fitted step costs, and the comparison with what the run measured.

    batchbin simulate run --db batchbin.duckdb --order all      # every order, on the real lengths
    batchbin simulate fit --db batchbin.duckdb                  # refit the CPU step costs

A run is copied into an in-memory database (only the columns the schedule and the simulator
read) and scheduled there again in each order asked for, with the same SQL as the `schedule`
stage (sql/schedule.sql): the stored run stays as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from batchbin.config import DEFAULT_MAX_TOKENS, ORDERS
from batchbin.engine.settings import DEFAULT_BLOCK_TOKENS, DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS
from batchbin.store import db
from batchbin.store.db import registered
from batchbin.errors import BatchBinError
from batchbin.engine.machine import detect_machine
from batchbin.engine.admission import planned_tokens
from batchbin.sim.machine_fits import ChosenCost, choose_cost, machine_name
from batchbin.sim.simulator import Admission, EngineLimits, SimRequest, SimResult, simulate
from batchbin.store.queries import execute, fetch_arrow, fetch_one
from batchbin.sim.step_costs import (DTYPE_BYTES, GIB, GpuStepCost, LinearStepCost, ModelShape, StepCost,
                                 fit_linear_step_cost, kv_blocks, named_gpu, named_model_size, step_work)

AS_RUN = "as-run"  # the order the run was scheduled in (its schedule table)
SIM_ORDERS = tuple(order for order in ORDERS if order != "auto")
LENGTHS = ("real", "predicted", "max-tokens")
COPIED_TABLES = ("runs", "prompts", "tokens", "prompt_groups", "predictions", "results", "schedule", "schedule_choices")
# vLLM's defaults for the offline LLM class on a GPU (its _set_default_args): a big GPU runs more at once
GPU_LARGE_MEMORY_BYTES = 70 * GIB
GPU_LIMITS_LARGE = (1024, 16384)
GPU_LIMITS_SMALL = (256, 8192)
GPU_BLOCK_SIZE = 16


def cpu_description() -> str:
    """The CPU as docs and fits name it: model, bf16/AMX flags, cores."""
    return machine_name(detect_machine())


def block_hashes(token_ids, block_size: int) -> tuple:
    """A key per full block of the prompt that stands for the block and everything before it
    (as vLLM's prefix cache keys blocks)."""
    keys = []
    previous = None
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        previous = hash((previous, tuple(token_ids[start:start + block_size])))
        keys.append(previous)
    return tuple(keys)


def output_length(row: dict, lengths: str) -> int | None:
    """The output tokens the simulator gives a request: its real count, its prediction capped
    by max_tokens (at least 1), or its max_tokens (its exact length where the request fixes it:
    ignore_eos, or min_tokens = max_tokens)."""
    if lengths == "real":
        return None if row["real_tokens"] is None else max(1, int(row["real_tokens"]))
    if lengths == "max-tokens":
        return max(1, int(row["max_tokens"]))
    predicted = row["predicted_tokens"] if row["predicted_tokens"] is not None else row["max_tokens"]
    return max(1, min(int(round(predicted)), int(row["max_tokens"] or predicted)))


@dataclass
class StoredRun:
    """A run copied into memory, with its settings."""

    run_id: str
    model: str
    config: dict
    engine: dict
    con: duckdb.DuckDBPyConnection
    status: str | None = None

    @property
    def block_size(self) -> int:
        return int(self.engine.get("block_size") or DEFAULT_BLOCK_TOKENS)

    def model_shape(self) -> ModelShape:
        return ModelShape.from_folder(self.model)

    def limits(self) -> EngineLimits:
        """The run's engine limits, its KV cache in blocks of its model."""
        engine = self.engine
        dtype_bytes = DTYPE_BYTES.get(engine.get("dtype") or "auto", 2)
        if not engine.get("kv_cache_gib"):
            raise BatchBinError(f"run {self.run_id} has no CPU KV-cache size in its engine settings; simulate it "
                                "with --gpu and --model-size")
        return EngineLimits(max_num_seqs=int(engine.get("max_num_seqs") or DEFAULT_MAX_NUM_SEQS),
                            max_num_batched_tokens=int(engine.get("max_num_batched_tokens") or DEFAULT_MAX_NUM_BATCHED_TOKENS),
                            block_size=self.block_size,
                            kv_blocks=kv_blocks(engine["kv_cache_gib"] * GIB, self.model_shape(), self.block_size,
                                                dtype_bytes))

    def reschedule(self, order: str, k_bins: int | None = None) -> str:
        """Schedule the copy in `order` (AS_RUN: leave the run's own schedule); returns the
        order used (auto resolves to one of the others)."""
        if order != AS_RUN:
            from batchbin.scheduling import schedule_run

            schedule_run(self.con, self.run_id, k_bins or int(self.config.get("k_bins") or 4), order,
                         min_shared_tokens=self.block_size, max_num_seqs=int(self.engine.get("max_num_seqs") or DEFAULT_MAX_NUM_SEQS))
        choice = fetch_one(self.con, "simulate.schedule_choice", {"run_id": self.run_id})
        return choice[1] if choice else order

    @property
    def kv_admission(self) -> bool:
        """Whether the run handed requests to vLLM by memory (runs before it existed: no)."""
        return bool(self.config.get("kv_admission", False))

    def requests(self, lengths: str, block_size: int | None = None) -> list[SimRequest]:
        """The requests in the copy's schedule order (`lengths`: real or predicted outputs;
        requests without a real length are left out of a "real" simulation)."""
        return self.requests_and_plans(lengths, block_size)[0]

    def requests_and_plans(self, lengths: str, block_size: int | None = None) -> tuple[list[SimRequest], list[int]]:
        """`requests`, and the output tokens admission plans for each (admission.planned_tokens)."""
        if lengths not in LENGTHS:
            raise BatchBinError(f"unknown lengths '{lengths}'; choose one of {', '.join(LENGTHS)}")
        rows = fetch_arrow(self.con, "simulate.requests_in_order",
                     {"run_id": self.run_id, "max_tokens": int(self.config.get("max_tokens") or DEFAULT_MAX_TOKENS)}).to_pylist()
        size = block_size or self.block_size
        max_model_len = int(self.config.get("max_model_len") or 2048)
        chosen, plans = [], []
        for row in rows:
            out = output_length(row, lengths)
            if out is not None:
                chosen.append(SimRequest(int(row["prompt_tokens"]), out, block_hashes(row["token_ids"], size)))
                plans.append(planned_tokens(row["predicted_tokens"], int(row["max_tokens"]), int(row["prompt_tokens"]),
                                            max_model_len))
        if not chosen:
            raise BatchBinError(f"run {self.run_id} has no request with {lengths} output lengths to simulate"
                                + ("; has it generated? (try --lengths predicted)" if lengths == "real" else ""))
        return chosen, plans


def open_run(db_path: str | Path, run_id: str | None = None) -> StoredRun:
    """Copy run `run_id` (default: the newest with results) of the database into memory. A
    database written by an older BatchBin, which lacks a column the copy reads, is opened for
    writing once so that its schema is brought up to date (as `batchbin run` would)."""
    try:
        return _copy_run(db.connect(db_path, read_only=True), db_path, run_id)
    except duckdb.BinderException:
        return _copy_run(db.connect(db_path), db_path, run_id)


def _copy_run(source: duckdb.DuckDBPyConnection, db_path: str | Path, run_id: str | None) -> StoredRun:
    con = None
    try:
        if run_id is None:
            newest = fetch_one(source, "simulate.newest_run")
            if newest is None:
                raise BatchBinError(f"no run with results in {db_path}; give --run-id, or run `batchbin run` first")
            run_id = newest[0]
        settings = fetch_one(source, "simulate.run_settings", {"run_id": run_id})
        if settings is None:
            raise BatchBinError(f"no run '{run_id}' in {db_path} (see: batchbin sql \"select run_id from runs\")")
        con = duckdb.connect()
        execute(con, "schema.create_tables")
        for table in COPIED_TABLES:
            rows = fetch_arrow(source, f"simulate.copy_{table}", {"run_id": run_id})
            with registered(con, incoming=rows):
                execute(con, f"simulate.paste_{table}")
    except BaseException:
        if con is not None:
            con.close()
        raise
    finally:
        source.close()
    _, model, config, engine, status = settings
    return StoredRun(run_id, model, json.loads(config or "{}"), json.loads(engine or "{}"), con, status)


def measured(db_path: str | Path, run_id: str) -> dict:
    """The run's measured generation seconds, preemptions and cache hits (from its report)."""
    con = db.connect(db_path, read_only=True)
    try:
        row = fetch_one(con, "simulate.measured_generation", {"run_id": run_id})
    finally:
        con.close()
    return dict(zip(("generate_s", "preemptions", "cached_tokens"), row)) if row else {}


# --- costs: this machine, or a GPU --------------------------------------------------------

def cpu_cost(engine: dict | None = None, model: str | None = None, db_path: str | Path | None = None) -> ChosenCost:
    """The step cost of the engine's kind on this machine (batchbin/sim/machine_fits.py: this
    machine's own fit where one exists, else a stand-in with a warning), and the line saying which."""
    engine = engine or {}
    chosen = choose_cost(engine, model, db_path)
    if engine and not chosen.own and chosen.fit is None:  # the shipped fit: of the engine's kind?
        kind = (engine.get("dtype"), engine.get("enforce_eager"))
        if chosen.cost.kind() != kind:
            chosen.warning = (f"{chosen.warning}; it was fitted on a {chosen.cost.kind()[0]} "
                              f"{'eager' if chosen.cost.kind()[1] else 'torch.compile'} engine, not a {kind[0]} "
                              f"{'eager' if kind[1] else 'torch.compile'} one")
    return chosen


def gpu_setup(gpu_name: str, model_size: str) -> tuple[GpuStepCost, EngineLimits]:
    """The roofline step cost and vLLM's default limits for `model_size` on one `gpu_name`."""
    gpu = named_gpu(gpu_name)
    shape = named_model_size(model_size)
    cost = GpuStepCost(gpu, shape)
    seqs, tokens = GPU_LIMITS_LARGE if gpu.memory_bytes >= GPU_LARGE_MEMORY_BYTES else GPU_LIMITS_SMALL
    limits = EngineLimits(seqs, tokens, GPU_BLOCK_SIZE, kv_blocks(cost.kv_cache_bytes(), shape, GPU_BLOCK_SIZE, 2))
    return cost, limits


@dataclass
class OrderEstimate:
    """One simulated order of a run."""

    order: str          # as asked
    used: str           # as scheduled (auto resolves)
    device: str
    result: SimResult

    def row(self) -> dict:
        return {"order": self.order, "used": self.used, "device": self.device, **self.result.summary()}


@dataclass
class RunSimulation:
    run_id: str
    lengths: str
    measured: dict = field(default_factory=dict)
    estimates: list[OrderEstimate] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kv_admission: bool = False
    step_costs: str | None = None  # which step costs the CPU estimates use ("step costs: this machine (...)")


def simulate_run(stored: StoredRun, orders: list[str], lengths: str = "real", cpu: bool = True,
                 gpu: tuple[str, str] | None = None, k_bins: int | None = None,
                 kv_admission: bool | None = None, step_cost: ChosenCost | None = None) -> RunSimulation:
    """Each order of `orders` on the run's requests: on this machine (its fitted step costs, or
    `step_cost`) and, with `gpu` = (GPU, model size), on that GPU. `kv_admission`: hand requests
    to the engine by their predicted memory, as generation does (default: as the run did)."""
    kv_admission = stored.kv_admission if kv_admission is None else kv_admission
    simulation = RunSimulation(stored.run_id, lengths, kv_admission=kv_admission)
    devices: list[tuple[str, StepCost, EngineLimits, int]] = []
    if cpu:
        chosen = step_cost or cpu_cost(stored.engine, stored.model)
        simulation.step_costs = chosen.line
        if chosen.warning:
            simulation.warnings.append(chosen.warning)
        devices.append(("this CPU", chosen.cost, stored.limits(), stored.block_size))
    if gpu:
        gpu_cost, gpu_limits = gpu_setup(*gpu)
        devices.append((f"{gpu_cost.gpu.name}, {gpu_cost.model.name}", gpu_cost, gpu_limits, gpu_limits.block_size))
    for order in sorted(orders, key=lambda name: name != AS_RUN):  # the run's own schedule before any other
        used = stored.reschedule(order, k_bins)
        by_block: dict[int, tuple[list[SimRequest], list[int]]] = {}
        for device, cost, limits, block in devices:
            if block not in by_block:
                by_block[block] = stored.requests_and_plans(lengths, block)
            requests, plans = by_block[block]
            admission = Admission(limits.kv_blocks * limits.block_size, plans) if kv_admission else None
            simulation.estimates.append(OrderEstimate(order, used, device, simulate(requests, limits, cost,
                                                                                    admission=admission)))
    return simulation


# --- fitting the CPU step costs -------------------------------------------------------------

# A run whose steps took this much longer (or shorter) in all than the typical step of the runs
# says (a robust fit) is left out: on a shared machine another process can slow a run down.
OUTLIER_RUN_SHARE = 0.15


def fit_from_db(db_paths: list[str | Path], run_ids: list[str] | None = None, dtype: str | None = None,
                enforce_eager: bool | None = None) -> LinearStepCost:
    """Fit the CPU step cost on the measured steps (engine_steps) of the runs in `db_paths` of
    one engine kind (dtype, eager or torch.compile; default: the kind of the newest run with
    steps), by least squares on every step of the runs kept: a run that the typical step (a
    robust fit) misses by more than OUTLIER_RUN_SHARE as a whole is left out, and named."""
    steps: list[dict] = []
    for db_path in db_paths:
        con = db.connect(db_path, read_only=True)
        try:
            if not fetch_one(con, "simulate.has_engine_steps")[0]:
                raise BatchBinError(f"{db_path} has no step traces (engine_steps); run jobs with this BatchBin first")
            runs = execute(con, "simulate.runs_with_steps").fetchall()
            if not runs:
                raise BatchBinError(f"{db_path} has no measured engine steps yet; run a job first")
            newest = json.loads(runs[-1][1] or "{}")
            dtype = dtype or newest.get("dtype")
            enforce_eager = newest.get("enforce_eager") if enforce_eager is None else enforce_eager
            steps += fetch_arrow(con, "simulate.engine_steps", {"dtype": dtype, "enforce_eager": bool(enforce_eager),
                                                          "run_ids": run_ids or []}).to_pylist()
        finally:
            con.close()
    kind = {"cpu": cpu_description(), "dtype": dtype, "enforce_eager": bool(enforce_eager)}
    left_out: dict[str, float] = {}
    while True:
        typical = fit_linear_step_cost(steps, robust=True)
        misses = run_misses(typical, steps)
        worst = max(misses, key=lambda run_id: abs(misses[run_id]))
        if abs(misses[worst]) <= OUTLIER_RUN_SHARE or len(misses) < 3:
            break
        left_out[worst] = round(misses[worst], 3)
        steps = [step for step in steps if step["run_id"] != worst]
    return fit_linear_step_cost(steps, {**kind, "runs": sorted({s["run_id"] for s in steps}),
                                        "runs_left_out": left_out,
                                        "run_misses_of_typical": {k: round(v, 3) for k, v in misses.items()}})


def run_misses(cost: LinearStepCost, steps: list[dict]) -> dict[str, float]:
    """Per run: its measured step seconds over the fitted ones, less 1."""
    measured_s: dict[str, float] = {}
    fitted_s: dict[str, float] = {}
    for step in steps:
        measured_s[step["run_id"]] = measured_s.get(step["run_id"], 0.0) + step["duration_s"]
        fitted_s[step["run_id"]] = fitted_s.get(step["run_id"], 0.0) + cost.seconds(step_work(step))
    return {run_id: measured_s[run_id] / fitted_s[run_id] - 1 for run_id in measured_s}


def format_simulation(simulation: RunSimulation) -> str:
    """A table of the simulated orders (and the run's measured time) for the terminal."""
    admission = "by predicted memory" if simulation.kv_admission else "as vLLM admits them"
    lines = [f"run {simulation.run_id}, simulated on its {simulation.lengths} output lengths, requests handed over "
             f"{admission}"]
    generate_s = simulation.measured.get("generate_s")
    if generate_s:
        lines.append(f"  measured        {generate_s:.1f} s of generation, {simulation.measured.get('preemptions') or 0} "
                     f"preemptions, {simulation.measured.get('cached_tokens') or 0:,} cached prompt tokens")
    lines.append(f"  {'device':34} {'order':14} {'seconds':>9} {'vs measured':>11} {'steps':>7} {'preempt':>7} "
                 f"{'cached':>9} {'tail s':>8}")
    for estimate in simulation.estimates:
        r = estimate.result
        order = estimate.used if estimate.order in (AS_RUN, estimate.used) else f"{estimate.order}->{estimate.used}"
        if estimate.order == AS_RUN:
            order += " (run)"
        versus = (f"{r.seconds / generate_s - 1:+.1%}" if generate_s and estimate.device == "this CPU"
                  and estimate.order == AS_RUN else "")
        lines.append(f"  {estimate.device:34} {order:14} {r.seconds:9.2f} {versus:>11} {r.steps:7} {r.preemptions:7} "
                     f"{r.cached_tokens:9,} {r.tail_s:8.1f}")
    if simulation.step_costs:
        lines.append(f"  {simulation.step_costs}")
    lines += [f"  note: {warning}" for warning in simulation.warnings]
    return "\n".join(lines)
