"""This machine's step costs: one fit per machine and engine kind, fed by every finished run.

    from batchbin.sim.machine_fits import choose_cost, learn_from_run
    learn_from_run("batchbin.duckdb", run_id)          # after a run: its steps refit this machine's
    choose_cost(engine, model).line                    # "step costs: this machine (...), from 3 runs, 812 steps"

A fit is keyed by the machine (CPU model, its bf16/AMX flags and cores; or the GPU's name), the
dtype, eager or torch.compile, and the model: a step on another CPU, in another dtype or
compiled costs something else. Each key's fit is kept twice:

- in the user's cache folder (`step_costs.json` in $BATCHBIN_CACHE, else $XDG_CACHE_HOME/batchbin,
  else ~/.cache/batchbin; $BATCHBIN_STEP_COSTS names another file), with a capped sample of
  the steps of the key's last runs, so that the next run refits from them in milliseconds and
  `batchbin plan` finds the fit whatever database it plans into;
- in the run's database (table `step_cost_fits`), beside the steps it came from.

Where this machine has no fit of the key, `choose_cost` takes this machine's fit of the other
compile mode, else the fit shipped with BatchBin (another CPU), and says so with a warning.
`batchbin doctor --calibrate` makes a fit in about a minute (flows/calibrate.py); `batchbin
simulate fit` refits them from a database's stored runs (`fit_stored_runs`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from batchbin.engine.machine import MachineInfo, detect_machine
from batchbin.engine.models import cache_dir
from batchbin.errors import BatchBinError
from batchbin.sim.step_costs import FITTED_PATH, LinearStepCost, StepWork, fit_linear_step_cost
from batchbin.store import db
from batchbin.store.queries import execute, fetch_arrow, fetch_one

STEP_COSTS_ENV = "BATCHBIN_STEP_COSTS"  # another file for this machine's fits (tests, several users)
CACHE_FILE = "step_costs.json"
KEEP_STEPS_PER_RUN = 200  # steps kept of each run (spread evenly over it): the fit stays well under a second
KEEP_RUNS = 8             # the key's newest runs whose steps are kept
MIN_FIT_STEPS = 8         # fit_linear_step_cost's least
STEP_COLUMNS = ("prefill_tokens", "decode_tokens", "context_tokens", "kv_tokens", "duration_s")  # a kept step
# What the fit shipped with BatchBin (another CPU) missed by on an Intel Xeon with AMX: +44% to
# +210% of the measured generation (docs/simulator.md). Said with every estimate that uses it.
SHIPPED_UNCERTAINTY = "may be off by 2-3x here"
CALIBRATE_HINT = "run `batchbin doctor --calibrate` (about a minute)"
# A run whose steps the fit misses by more than this share of its median step, typically, ran
# erratically: another process slowed some of its steps. On an Intel Xeon with AMX (2 cores) a
# quiet calibration's share was 2-4%, one beside another process's work 18% (docs/simulator.md).
ERRATIC_STEP_SHARE = 0.10


def step_costs_path() -> Path:
    """Where this machine's fits are kept: $BATCHBIN_STEP_COSTS, else step_costs.json in the cache folder."""
    named = os.environ.get(STEP_COSTS_ENV)
    return Path(named) if named else cache_dir() / CACHE_FILE


def machine_name(machine: MachineInfo | None = None) -> str:
    """The machine as a fit's key names it: the GPU, or the CPU model with its bf16/AMX flags and cores."""
    if machine is None:
        return this_machine_name()
    if machine.gpu:
        return f"GPU {machine.gpu}"
    flags = sorted({"avx512_bf16", "amx_bf16"} & machine.cpu_flags)
    return f"{machine.cpu_model} ({', '.join(flags) or 'no bf16'}, {len(machine.cores)} cores)"


@cache
def this_machine_name() -> str:
    """This machine's name (detected once a process: it does not change while it runs)."""
    return machine_name(detect_machine())


def model_name(model: str | None) -> str:
    """A local model folder by its name (the same model wherever its folder is), a hub id as is."""
    if not model:
        return "unknown model"
    path = Path(model)
    return path.name if path.is_absolute() or path.exists() else model


def mode_name(enforce_eager: bool) -> str:
    return "eager" if enforce_eager else "torch.compile"


@dataclass(frozen=True)
class FitKey:
    """What a step's cost depends on besides its work: machine, dtype, compiled or eager, model."""

    machine: str
    dtype: str
    enforce_eager: bool
    model: str

    @property
    def text(self) -> str:
        return f"{self.machine} | {self.dtype} | {mode_name(self.enforce_eager)} | {self.model}"

    def other_mode(self) -> "FitKey":
        return FitKey(self.machine, self.dtype, not self.enforce_eager, self.model)

    @classmethod
    def for_engine(cls, engine: dict, model: str | None, machine: MachineInfo | str | None = None) -> "FitKey":
        """The key of a run's engine settings (its `runs.engine`) and model on `machine` (default: this one)."""
        name = machine if isinstance(machine, str) else machine_name(machine)
        return cls(name, str(engine.get("dtype") or "auto"), bool(engine.get("enforce_eager")), model_name(model))


@dataclass
class MachineFit:
    """A key's fit and where it came from; `kept_steps` are the steps it was fitted on, by run."""

    key: FitKey
    cost: LinearStepCost
    run_ids: list[str]
    steps: int
    updated: str = ""
    kept_steps: dict[str, list[list[float]]] = field(default_factory=dict)

    def describe(self) -> str:
        runs = len(self.run_ids)
        return (f"this machine ({self.key.machine}, {self.key.dtype}, {mode_name(self.key.enforce_eager)}), "
                f"from {runs} run{'s' if runs != 1 else ''}, {self.steps} steps")

    def as_json(self) -> dict:
        return {"key": asdict(self.key), "cost": asdict(self.cost), "run_ids": self.run_ids, "steps": self.steps,
                "updated": self.updated, "kept_steps": self.kept_steps}

    @classmethod
    def from_json(cls, values: dict) -> "MachineFit":
        return cls(FitKey(**values["key"]), LinearStepCost(**values["cost"]), list(values["run_ids"]),
                   int(values["steps"]), values.get("updated", ""), dict(values.get("kept_steps") or {}))


def cost_terms(cost: LinearStepCost) -> str:
    """A fit's five terms and its median error per step, in a line."""
    return (f"per step {cost.intercept_s * 1000:.2f} ms + per prompt token {cost.per_prefill_token_s * 1e6:.1f} us "
            f"+ per decoding sequence {cost.per_decode_token_s * 1000:.3f} ms + per context token "
            f"{cost.per_context_token_s * 1e9:.1f} ns + per KV-cache token {cost.per_kv_token_s * 1e9:.1f} ns "
            f"(median error per step {cost.fitted_on.get('median_abs_error_ms')} ms)")


# --- the cache file -------------------------------------------------------------------------

def read_cache(path: Path | None = None) -> dict[str, MachineFit]:
    """Every fit kept in the cache file, by key text (none: an empty dict)."""
    path = path or step_costs_path()
    if not path.is_file():
        return {}
    try:
        fits = [MachineFit.from_json(values) for values in json.loads(path.read_text())["fits"]]
    except (TypeError, KeyError, ValueError) as error:
        raise BatchBinError(f"{path} is not a file of step-cost fits ({error}); delete it, and the next run (or "
                            "`batchbin doctor --calibrate`) fits this machine again")
    return {fit.key.text: fit for fit in fits}


def write_cache(fits: dict[str, MachineFit], path: Path | None = None) -> Path:
    """Write the cache file whole (a new file moved into place: a reader never sees half of it)."""
    path = path or step_costs_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps({"fits": [fit.as_json() for fit in fits.values()]}) + "\n")
    os.replace(partial, path)
    return path


# --- the database ---------------------------------------------------------------------------

def store_fit(con, fit: MachineFit) -> None:
    """Keep `fit` in the database's step_cost_fits table (replacing the key's older fit)."""
    c = fit.cost
    execute(con, "step_costs.put_fit", {
        "fit_key": fit.key.text, "machine": fit.key.machine, "dtype": fit.key.dtype,
        "enforce_eager": fit.key.enforce_eager, "model": fit.key.model, "intercept_s": c.intercept_s,
        "per_prefill_token_s": c.per_prefill_token_s, "per_decode_token_s": c.per_decode_token_s,
        "per_context_token_s": c.per_context_token_s, "per_kv_token_s": c.per_kv_token_s, "run_ids": fit.run_ids,
        "steps": fit.steps,
        "fitted_on": json.dumps(c.fitted_on)})


def stored_fit(con, key: FitKey) -> MachineFit | None:
    """The key's fit kept in the database (None: none, or a database without the table)."""
    if not fetch_one(con, "step_costs.has_fits")[0]:
        return None
    row = fetch_one(con, "step_costs.get_fit", {"fit_key": key.text})
    if row is None:
        return None
    (_, machine, dtype, eager, model, a, b, c, d, kv, run_ids, steps, fitted_on, updated) = row
    cost = LinearStepCost(a, b, c, d, per_kv_token_s=kv, fitted_on=json.loads(fitted_on or "{}"))
    return MachineFit(FitKey(machine, dtype, bool(eager), model), cost, list(run_ids or []), int(steps or 0),
                      updated or "")


# --- learning from a run --------------------------------------------------------------------

def kv_capacity_tokens(engine: dict, model: str | None) -> int | None:
    """Tokens the run's KV cache held (its size in blocks of its model), or None where unknown
    (a GPU's cache, sized by vLLM; a model folder that is gone)."""
    from batchbin.sim.step_costs import DTYPE_BYTES, GIB, ModelShape, kv_blocks

    block = int(engine.get("block_size") or 0)
    if not (engine.get("kv_cache_gib") and block and model and Path(model).is_dir()):
        return None
    try:
        shape = ModelShape.from_folder(model)
        return block * kv_blocks(float(engine["kv_cache_gib"]) * GIB, shape, block,
                                 DTYPE_BYTES.get(engine.get("dtype") or "auto", 2))
    except BatchBinError:
        return None


def run_steps(con, run_id: str, keep: int = KEEP_STEPS_PER_RUN, capacity: int | None = None) -> list[list[float]]:
    """At most `keep` of the run's measured steps, as [prefill, decode, context, KV tokens held,
    seconds]; KV tokens = the cache's usage x its `capacity` (0 where unknown). Steps without
    their context count (the engine core ran in its own process, where its scheduler is out of
    reach) are left out: the KV cache's usage cannot stand in for it, as it counts a shared
    prefix once and attention reads it once per sequence."""
    rows = fetch_arrow(con, "step_costs.run_steps", {"run_id": run_id, "keep": keep}).to_pylist()
    return [[int(r["prefill_tokens"]), int(r["decode_tokens"]), int(r["context_tokens"]),
             round((r["kv_cache_usage"] or 0.0) * capacity) if capacity else 0, float(r["duration_s"])]
            for r in rows]


def fit_steps(key: FitKey, kept_steps: dict[str, list[list[float]]]) -> MachineFit:
    """Fit time = a + b*prefill + c*decode + d*context + e*KV tokens (no negative term) on the
    kept steps, by least absolute deviations: the typical step, which steps slowed down two- or
    threefold by another process on a shared machine cannot drag (least squares followed them:
    docs/simulator.md)."""
    steps = [{"prefill_tokens": p, "decode_tokens": d, "context_tokens": c, "kv_tokens": kv, "duration_s": s}
             for rows in kept_steps.values() for p, d, c, kv, s in rows]
    cost = fit_linear_step_cost(steps, {"cpu": key.machine, "dtype": key.dtype, "enforce_eager": key.enforce_eager,
                                        "model": key.model, "runs": list(kept_steps)}, robust=True)
    return MachineFit(key, cost, list(kept_steps), len(steps), time.strftime("%Y-%m-%dT%H:%M:%S"), kept_steps)


def fit_newest(key: FitKey, kept_steps: dict[str, list[list[float]]]) -> MachineFit | None:
    """fit_steps on the newest KEEP_RUNS runs with steps (`kept_steps` oldest first), or None
    where they hold fewer than MIN_FIT_STEPS steps."""
    kept = {rid: rows for rid, rows in list(kept_steps.items())[-KEEP_RUNS:] if rows}
    return fit_steps(key, kept) if sum(len(rows) for rows in kept.values()) >= MIN_FIT_STEPS else None


def learn_from_run(db_path: str | Path, run_id: str, path: Path | None = None,
                   machine: MachineInfo | str | None = None) -> MachineFit | None:
    """Refit this machine's step costs of the run's key with the run's steps and the key's
    earlier runs' (kept in the cache file, or named by the database's fit), and keep the new fit
    in both. None where the run has no usable steps (a Ray run records none) or too few in all."""
    con = db.connect(db_path)
    try:
        settings = fetch_one(con, "step_costs.run_engine", {"run_id": run_id})
        if settings is None:
            raise BatchBinError(f"no run '{run_id}' in {db_path}")
        engine = json.loads(settings[0] or "{}")
        key = FitKey.for_engine(engine, settings[1], machine)
        capacity = kv_capacity_tokens(engine, settings[1])
        new = run_steps(con, run_id, capacity=capacity)
        if not new:
            return None
        cached = read_cache(path)
        earlier = cached.get(key.text)
        kept = {rid: rows for rid, rows in earlier.kept_steps.items()  # (rows of an older format: left out)
                if all(len(row) == len(STEP_COLUMNS) for row in rows)} if earlier else {}
        in_db = stored_fit(con, key)
        for other in (in_db.run_ids if in_db else []):  # runs of this key in this database the cache lost
            if other != run_id and other not in kept:
                kept[other] = run_steps(con, other, capacity=capacity)
        kept.pop(run_id, None)  # a resumed run: its steps again, now as the newest
        kept[run_id] = new
        fit = fit_newest(key, kept)
        if fit is None:
            return None
        store_fit(con, fit)
    finally:
        con.close()
    cached[key.text] = fit
    write_cache(cached, path)
    return fit


def fit_stored_runs(db_paths: list[str | Path], run_ids: list[str] | None = None, path: Path | None = None,
                    machine: MachineInfo | str | None = None) -> list[MachineFit]:
    """`batchbin simulate fit`: refit this machine's step costs from the stored runs of the
    databases (all that recorded usable steps, or `run_ids`), one fit per key from the key's
    newest KEEP_RUNS runs, and keep each in the cache file in place of the key's earlier fit
    (the databases are only read). The runs are taken as measured on this machine, as after a run."""
    by_key: dict[FitKey, dict[str, list[list[float]]]] = {}
    for db_path in db_paths:
        if not Path(db_path).is_file():
            raise BatchBinError(f"no database at {db_path}")
        con = db.connect(db_path, read_only=True)
        try:
            for run_id, engine_json, model in execute(con, "step_costs.runs_with_steps").fetchall():
                if run_ids and run_id not in run_ids:
                    continue
                engine = json.loads(engine_json or "{}")
                key = FitKey.for_engine(engine, model, machine)
                rows = run_steps(con, run_id, capacity=kv_capacity_tokens(engine, model))
                kept = by_key.setdefault(key, {})
                kept.pop(run_id, None)
                kept[run_id] = rows
        finally:
            con.close()
    fits = [fit for fit in (fit_newest(key, kept) for key, kept in by_key.items()) if fit is not None]
    if not fits:
        named = f"the runs {', '.join(run_ids)}" if run_ids else "any run"
        raise BatchBinError(f"{named} in {', '.join(map(str, db_paths))}: no engine steps with their context counts "
                            f"to fit (at least {MIN_FIT_STEPS}); run a job with its engine core in process first")
    cached = read_cache(path)
    cached.update({fit.key.text: fit for fit in fits})
    write_cache(cached, path)
    return fits


def run_error_share(fit: MachineFit, run_id: str) -> float | None:
    """How far the fit misses the run's kept steps, typically: the median absolute error per step
    over the median step's seconds (None: the fit keeps no steps of the run)."""
    rows = fit.kept_steps.get(run_id) or []
    if not rows:
        return None
    errors = sorted(abs(fit.cost.seconds(StepWork(d, p, d, c, kv_tokens=kv)) - s) for p, d, c, kv, s in rows)
    seconds = sorted(row[-1] for row in rows)
    return errors[len(errors) // 2] / seconds[len(seconds) // 2] if seconds[len(seconds) // 2] > 0 else None


def forget_run(key: FitKey, run_id: str, path: Path | None = None) -> MachineFit | None:
    """Take the run's steps out of the key's fit in the cache file and refit on the rest (None:
    too few left, and the key's fit is removed). The database's fit is left as it is."""
    cached = read_cache(path)
    earlier = cached.pop(key.text, None)
    if earlier is None:
        return None
    kept = {rid: rows for rid, rows in earlier.kept_steps.items() if rid != run_id}
    fit = fit_newest(key, kept)
    if fit is not None:
        cached[key.text] = fit
    write_cache(cached, path)
    return fit


def keep_if_steady(fit: MachineFit, run_id: str, path: Path | None = None) -> float | None:
    """A calibration's check: where the fit misses the run's steps by more than
    ERRATIC_STEP_SHARE (another process slowed them), take the run out of the fit again and
    say so; else return the share."""
    share = run_error_share(fit, run_id)
    if share is not None and share > ERRATIC_STEP_SHARE:
        forget_run(fit.key, run_id, path)
        raise BatchBinError(f"the calibration's steps ran erratically (the fit misses its typical step by {share:.0%}; "
                            f"on a quiet machine by a few per cent): another process slowed them, so this fit was not "
                            "kept. Calibrate again when the machine is quieter")
    return share


def find_fit(key: FitKey, db_path: str | Path | None = None, path: Path | None = None) -> MachineFit | None:
    """This machine's fit of `key`: from the cache file, or from the database where it holds one
    made from more runs."""
    found = read_cache(path).get(key.text)
    if db_path and Path(db_path).is_file():
        try:
            con = db.connect(db_path, read_only=True)
        except Exception:  # held by a run, or not a database: the cache's fit will do
            return found
        try:
            in_db = stored_fit(con, key)
        finally:
            con.close()
        if in_db is not None and (found is None or len(in_db.run_ids) > len(found.run_ids)):
            return in_db
    return found


# --- which fit an estimate uses -------------------------------------------------------------

@dataclass
class ChosenCost:
    """The step cost an estimate uses, the line that says which, and a warning where it is not
    this machine's own fit of the engine's kind."""

    cost: LinearStepCost
    line: str
    own: bool
    warning: str | None = None
    fit: MachineFit | None = None


def choose_cost(engine: dict, model: str | None, db_path: str | Path | None = None, path: Path | None = None,
                machine: MachineInfo | str | None = None) -> ChosenCost:
    """This machine's fit of the engine's kind; else its fit of the other compile mode; else the
    fit shipped with BatchBin, fitted on another CPU (with a warning and its uncertainty)."""
    key = FitKey.for_engine(engine, model, machine)
    fit = find_fit(key, db_path, path)
    if fit is not None:
        return ChosenCost(fit.cost, f"step costs: {fit.describe()}", True, fit=fit)
    mode = mode_name(key.enforce_eager)
    calibrate = f"`batchbin doctor --calibrate{' --requests 500' if not key.enforce_eager else ''}`"
    other = find_fit(key.other_mode(), db_path, path)
    if other is not None:
        return ChosenCost(other.cost, f"step costs: {other.describe()}, standing in for {mode}", False,
                          warning=f"no step costs of a {mode} engine on this machine yet: the {mode_name(not key.enforce_eager)} "
                                  f"fit stands in (torch.compile'd steps are faster than eager ones); run {calibrate} "
                                  "or a job of that kind to fit it",
                          fit=other)
    shipped = LinearStepCost.load(FITTED_PATH, key.dtype, key.enforce_eager)
    dtype, eager = shipped.kind()
    where = shipped.fitted_on.get("cpu", "another CPU")
    return ChosenCost(shipped, f"step costs: shipped fit from another CPU ({where}, {dtype}, {mode_name(bool(eager))})",
                      False, warning=f"no step costs of this machine yet: the estimate uses a fit made on {where} and "
                                     f"{SHIPPED_UNCERTAINTY}; {CALIBRATE_HINT.replace('`batchbin doctor --calibrate`', calibrate)} "
                                     "or run any job, then plan again")
