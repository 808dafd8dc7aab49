"""Time to results from a cold start: the `batchbin run` command against the capable user's script
(bench/user_script.py), and optionally against vLLM's own batch runner (`vllm run-batch` on the
same requests as an OpenAI batch file), each a fresh process timed from its start to its exit.

    python -m batchbin.bench.cold --workload sharegpt --requests 120 --repeats 2
    python -m batchbin.bench.cold --requests 240 --no-enforce-eager   # does compiling pay here?
    python -m batchbin.bench.cold --with-run-batch                     # the packaged alternative too

Both get the same requests and the same engine settings, those BatchBin chooses for a job of
this size on this machine (so eager mode where torch.compile would not repay its start-up, and
tcmalloc and Intel OpenMP preloaded). The commands alternate, after one untimed run of the script
(and of run-batch) that fills vLLM's compile cache where the settings compile. `batchbin bench` times
generation on engines already warm; this times what a user waits for besides: imports, the
engine's start, tokenizing, Prefect's temporary API, writing results, and the exit. Prints a
table and writes cold.json to the output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from batchbin.bench.harness import load_rows, machine_record, openai_batch_lines, run_batch_command
from batchbin.bench.processes import run_command
from batchbin.bench.workloads import write_jsonl
from batchbin.config import EngineOptions
from batchbin.engine.settings import EngineSettings, choose_engine_settings
from batchbin.engine.machine import detect_machine
from batchbin.engine.models import resolve_model
from batchbin.engine.preload import RESTARTED_FLAG, restart_with_preload
from batchbin.bench.vllm_run_batch import RUN_BATCH_MODULE

DEFAULT_MAX_TOKENS = 64  # for requests without a limit of their own, as in `batchbin bench`


def job_settings(requests: int, enforce_eager: bool | None = None) -> EngineSettings:
    """What the batchbin command chooses for such a job: it restarts itself with the preload,
    so the engine can run in its process; the user's script is started with it too.
    `enforce_eager` pins the compile choice for both (None: BatchBin's choice)."""
    machine = detect_machine()
    machine = dataclasses.replace(machine, preload_loaded=bool(machine.preload_libs))
    return choose_engine_settings(machine, EngineOptions(enforce_eager=enforce_eager), requests=requests)


def user_script_command(input_path: Path, output_path: Path, model_path: str, settings: EngineSettings,
                        max_tokens: int, max_model_len: int) -> list[str]:
    spec = {"model": model_path, "max_model_len": max_model_len, "max_tokens": max_tokens,
            "engine": settings.engine_kwargs()}
    return [sys.executable, "-m", "batchbin.bench.user_script", str(input_path), str(output_path), json.dumps(spec)]


def batchbin_command(input_path: Path, work_dir: Path, max_tokens: int, max_model_len: int,
                     enforce_eager: bool | None = None) -> list[str]:
    command = [str(Path(sys.executable).parent / "batchbin"), "run", str(input_path), "--db",
               str(work_dir / "cold.duckdb"), "--output", str(work_dir / "batchbin.out.jsonl"),
               "--max-tokens", str(max_tokens), "--max-model-len", str(max_model_len)]
    if enforce_eager is not None:
        command.append("--enforce-eager" if enforce_eager else "--no-enforce-eager")
    return command


def timed(name: str, command: list[str], env: dict[str, str], requests: int) -> float:
    """Wall seconds of one command (handling `requests` requests), from its start to its exit."""
    started = time.perf_counter()
    done = run_command(command, requests, name=name, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[1:3]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def run_batch_cold_command(input_path: Path, output_path: Path, model_path: str, settings: EngineSettings,
                           max_model_len: int) -> list[str]:
    return run_batch_command(model_path, settings, max_model_len, module=RUN_BATCH_MODULE) + [
        "-i", str(input_path), "-o", str(output_path)]


def run_cold(workload: str, out_dir: Path, n_requests: int | None = None, seed: int = 0, repeats: int = 2,
             max_tokens: int | None = None, max_model_len: int = 2048, enforce_eager: bool | None = None,
             with_run_batch: bool = False, log=print) -> dict:
    """Alternate the commands `repeats` times; return cold.json's content (also written).

    `max_tokens` overrides every request's output limit (default: the workload's own, 64 where
    a request has none); `enforce_eager` pins the compile choice of every command;
    `with_run_batch` adds `vllm run-batch` on the requests as an OpenAI batch file, in file order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = load_rows(workload, n_requests, seed, max_tokens=max_tokens)
    max_tokens = max_tokens or DEFAULT_MAX_TOKENS
    input_path = write_jsonl(rows, out_dir / "requests.jsonl")
    settings = job_settings(len(rows), enforce_eager)
    model_path = resolve_model("default")
    plain_env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", RESTARTED_FLAG)}
    script_env = {**plain_env, **settings.environment()}  # thread binding, LD_PRELOAD, in-process engine
    script_out = out_dir / "user-script.out.jsonl"
    script = user_script_command(input_path, script_out, model_path, settings, max_tokens, max_model_len)
    # the commands batchbin is compared with: (command, environment, output file)
    baselines = {"user-script": (script, script_env, script_out)}
    if with_run_batch:
        batch_path, batch_out = out_dir / "requests.batch.jsonl", out_dir / "vllm-run-batch.out.jsonl"
        batch_path.write_text("\n".join(openai_batch_lines(rows, model_path, max_tokens, seed=None)) + "\n")
        baselines["vllm-run-batch"] = (run_batch_cold_command(batch_path, batch_out, model_path, settings, max_model_len),
                                      {**plain_env, **settings.environment(async_engine=True)}, batch_out)
    log(f"cold {workload}: {len(rows)} requests, repeats {repeats}, "
        f"{'eager' if settings.enforce_eager else 'torch.compile'} ({settings.reasons.get('enforce_eager')})")
    if not settings.enforce_eager:  # untimed: fill ~/.cache/vllm, so no timed run pays a first compile
        for name, (command, env, _) in baselines.items():  # run-batch's engine has a cache entry of its own
            timed(name, command, env, len(rows))
    walls: dict[str, list[float]] = {name: [] for name in ("batchbin", *baselines)}
    for _ in range(repeats):
        work_dir = out_dir / "batchbin-run"
        if work_dir.exists():
            for leftover in work_dir.iterdir():
                leftover.unlink()  # a fresh database: the same input in the same one would resume, not run
        work_dir.mkdir(exist_ok=True)
        walls["batchbin"].append(timed("batchbin", batchbin_command(input_path, work_dir, max_tokens, max_model_len,
                                                                  enforce_eager), plain_env, len(rows)))
        if count_lines(work_dir / "batchbin.out.jsonl") != len(rows):
            raise RuntimeError("batchbin run wrote fewer results than requests")
        for name, (command, env, output) in baselines.items():
            walls[name].append(timed(name, command, env, len(rows)))
            if count_lines(output) != len(rows):
                raise RuntimeError(f"{name} wrote fewer results than requests")
        log("  " + "   ".join(f"{name} {values[-1]:6.1f} s" for name, values in walls.items()))
    medians = {name: sorted(values)[len(values) // 2] for name, values in walls.items()}
    summary = {
        "workload": workload,
        "requests": len(rows),
        "repeats": repeats,
        "machine": machine_record(detect_machine()),
        "engine": settings.as_dict(reasons=False),
        "wall_s": {name: round(value, 2) for name, value in medians.items()},
        "wall_s_runs": {name: [round(v, 2) for v in values] for name, values in walls.items()},
        "speedup_vs_script": round(medians["user-script"] / medians["batchbin"], 3),
    }
    if with_run_batch:
        summary["speedup_vs_run_batch"] = round(medians["vllm-run-batch"] / medians["batchbin"], 3)
    (out_dir / "cold.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="sharegpt")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=None, help="Override every request's output limit.")
    parser.add_argument("--enforce-eager", dest="enforce_eager", action="store_true", default=None,
                        help="Every command eager (default: BatchBin's choice for the job).")
    parser.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false",
                        help="Every command with torch.compile.")
    parser.add_argument("--with-run-batch", action="store_true",
                        help="Also time vLLM's batch runner on the requests as an OpenAI batch file.")
    parser.add_argument("--out", default=None, help="Output folder (default bench-out/cold-WORKLOAD).")
    args = parser.parse_args()
    restart_with_preload(sys.argv, module="batchbin.bench.cold")  # settings as the batchbin command sees them
    summary = run_cold(args.workload, Path(args.out or f"bench-out/cold-{Path(args.workload).stem}"), args.requests,
                       repeats=args.repeats, max_tokens=args.max_tokens, enforce_eager=args.enforce_eager,
                       with_run_batch=args.with_run_batch)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
