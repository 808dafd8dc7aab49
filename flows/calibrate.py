"""`batchbin doctor --calibrate`: this machine's step costs from a job of about a minute.

    python flows/calibrate.py            # eager engine, the default model
    batchbin doctor --calibrate          # the same through the CLI
    batchbin doctor --calibrate --requests 2000   # the engine kind a job of 2,000 requests gets (compiled)

Where no run has fitted this machine's step costs yet, `batchbin plan` estimates with a fit made
on another CPU. The calibration runs a small synthetic job through the batch flow itself, into a
temporary database: 128 requests, half with a short prompt (about 30 to 150 tokens), a quarter
with a long one (about 500 to 1,300 tokens), a quarter with a short question after one of four
long shared prefixes (about 800 tokens: prefix-cache hits), and output lengths (8 to 160 tokens,
fixed by min_tokens = max_tokens and ignore_eos) drawn independently of the prompt's. They all
run at once (the machine's engine settings), so that the steps vary prefill tokens, decoding
sequences (up to 128, as in a real job), context tokens and the distinct tokens held in the KV
cache independently of each other: many short sequences with little context early, few long ones
with much context late, and context that is a shared prefix read by many sequences. The flow's last stage fits the step costs of this
machine and engine kind on its steps (batchbin/sim/machine_fits.py), as after any run; later runs
refine that fit. A calibration whose steps ran erratically (another process slowed them: the
fit misses its typical step by more than 10%) is taken out of the fit again, with an error.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from batchbin.config import EngineOptions, JobConfig
from batchbin.engine.machine_load import cores_busy_elsewhere
from batchbin.errors import BatchBinError
from batchbin.sim.machine_fits import MachineFit, cost_terms, keep_if_steady, learn_from_run

CALIBRATION_REQUESTS = 128
SHORT_PROMPT_WORDS = (10, 60)  # a made-up word is one to three tokens of the default model
LONG_PROMPT_WORDS = (250, 640)
SHARED_PREFIX_WORDS = 400
SHARES = (0.5, 0.75)           # below the first: a short prompt; then a long one; then a shared prefix
SHARED_PREFIXES = 4
OUTPUT_TOKENS = (8, 160)       # uniform, fixed per request, drawn apart from the prompt's length
# other processes' load during the calibration (cores, on average) from which its fit is said to be suspect
BUSY_WARNING_CORES = 0.25
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "so", "ta", "vi", "do", "pe", "zu", "ha", "ri", "mo", "sa", "te")


def calibration_rows(requests: int = CALIBRATION_REQUESTS, seed: int = 0) -> list[dict]:
    """The synthetic job: distinct made-up prompts (no shared prefix), lengths drawn independently."""
    rng = random.Random(seed)

    def words(count: int) -> str:
        return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(count))

    prefixes = [f"Document {number}: {words(SHARED_PREFIX_WORDS)}" for number in range(SHARED_PREFIXES)]
    rows = []
    for index in range(requests):
        kind = rng.random()
        if kind < SHARES[0]:
            prompt = f"Request {index}. Continue the list: {words(rng.randint(*SHORT_PROMPT_WORDS))}"
        elif kind < SHARES[1]:
            prompt = f"Request {index}. Continue the list: {words(rng.randint(*LONG_PROMPT_WORDS))}"
        else:
            prompt = f"{rng.choice(prefixes)}\nRequest {index}. Continue the list: {words(rng.randint(*SHORT_PROMPT_WORDS))}"
        tokens = rng.randint(*OUTPUT_TOKENS)
        rows.append({"id": f"calibrate-{index:03d}", "prompt": prompt, "max_tokens": tokens, "min_tokens": tokens,
                     "ignore_eos": True})
    return rows


@dataclass
class Calibration:
    fit: MachineFit
    run_id: str
    seconds: float       # the whole calibration, engine start included
    generate_s: float    # its generation
    cores_busy_elsewhere: float | None = None  # by other processes, on average, while it ran


def calibrate(engine: EngineOptions | None = None, requests: int | None = None, model: str = "default",
              folder: str | Path | None = None) -> Calibration:
    """Run the calibration job through the batch flow on a temporary database (in `folder`, if
    given, which then keeps it) and return this machine's refitted step costs. `requests`: fit
    the engine kind a job of that many requests gets (torch.compile from 500 with bf16)."""
    from batchbin.engine.machine import detect_machine
    from batchbin.engine.settings import compile_choice
    from batchbin.flows.batch import batch_inference

    engine = engine or EngineOptions()
    updates: dict = {}
    if engine.in_process is None:  # the engine core's scheduler in reach: each step's context is recorded
        updates["in_process"] = True
    if engine.enforce_eager is None:  # the kind of engine a job of `requests` requests runs on
        updates["enforce_eager"] = compile_choice(requests or CALIBRATION_REQUESTS, detect_machine())[0]
    engine = engine.model_copy(update=updates)
    with tempfile.TemporaryDirectory(prefix="batchbin-calibrate-") as scratch:
        where = Path(folder or scratch)
        where.mkdir(parents=True, exist_ok=True)
        input_path = where / "calibration.jsonl"
        input_path.write_text("".join(json.dumps(row) + "\n" for row in calibration_rows()))
        db_path = where / "calibration.duckdb"
        config = JobConfig(input_path=str(input_path), db_path=str(db_path), output_path=str(where / "calibration-out.jsonl"),
                           model=model, max_tokens=OUTPUT_TOKENS[1], order="input", probe=0.0, predictor="fallback",
                           reuse_results=False, engine=engine)
        started, busy = time.perf_counter(), {}
        with cores_busy_elsewhere(busy):
            state = batch_inference(config, return_state=True)
        if not state.is_completed():
            raise BatchBinError(f"the calibration job failed: {state.message or 'see the log above'}")
        report = state.result()
        fit = learn_from_run(str(db_path), report["run_id"])  # the flow fitted it already: the same fit again
        if fit is None:
            raise BatchBinError("the calibration job recorded no engine steps to fit (does the engine run in a process "
                                "of its own? try --in-process)")
        busy_s = busy.get("cores_busy_elsewhere")
        try:
            keep_if_steady(fit, report["run_id"])
        except BatchBinError as error:
            raise BatchBinError(f"{error}{f' (other processes kept {busy_s:.2f} cores busy meanwhile)' if busy_s else ''}"
                                ) from None
        return Calibration(fit, report["run_id"], time.perf_counter() - started, float(report.get("generate_s") or 0.0),
                           busy_s)


def format_calibration(calibration: Calibration) -> str:
    fit = calibration.fit
    busy = calibration.cores_busy_elsewhere
    disturbed = ([f"  warning: other processes kept {busy:.2f} cores busy during the calibration, so its steps ran "
                  "slower than on a quiet machine and estimates will come out long; calibrate again when the "
                  "machine is quieter"] if busy is not None and busy >= BUSY_WARNING_CORES else [])
    return "\n".join([
        f"calibrated in {calibration.seconds:.0f} s ({calibration.generate_s:.1f} s of generation, run {calibration.run_id})",
        f"step costs: {fit.describe()}",
        f"  {cost_terms(fit.cost)}",
        "  `batchbin plan` and `batchbin simulate` use it now; every finished run of this kind refines it.",
        *disturbed,
    ])


if __name__ == "__main__":
    from batchbin.flows.runtime import in_process_flow_runs

    with in_process_flow_runs():
        print(format_calibration(calibrate(requests=int(sys.argv[1]) if len(sys.argv) > 1 else None)))
