"""The step loop: requests handed to one vLLM engine in a given order, finished results handed
on in checkpoints as they come out.

vLLM's own engine API (`LLMEngine.add_request` / `step`, through vllm_adapter.py) is used
instead of one big `LLM.generate` call: the waiting queue is first-come-first-served, so adding
the requests in order is the same as one `generate` call in that order, and results stream out
as they finish instead of at the end. Prompts go in as token ids.

A large job is not handed over at once: a request costs ~25 KiB of memory with a 300-token
prompt (half in its row, half inside vLLM; measured), so a million would not fit in 24 GiB. At
most `in_flight_limit` requests are inside vLLM at a time; the rest join the tail of its queue
as requests finish. The limit is several times the sequences the engine runs at once, so its
waiting queue never runs dry while rows are left, and it picks the same requests, in the same
order, as with the whole job queued up front.

The single-engine generate stage and the Ray engines (batchbin/scaleout/ray_engines.py) both
run this loop.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator

from batchbin.engine import vllm_adapter
from batchbin.engine.admission import KvAdmission, planned_tokens
from batchbin.config import DEFAULT_MAX_TOKENS
from batchbin.engine.pool import Engine, scheduler_held
from batchbin.engine.settings import DEFAULT_MAX_NUM_SEQS
from batchbin.errors import BatchBinError


@dataclass
class SamplingDefaults:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    max_model_len: int = 2048


@dataclass
class GenerationStats:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    generate_s: float = 0.0
    checkpoints: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)
    preemptions: int = 0               # vLLM's, during this generation (when its counters are on)
    peak_kv_cache_usage: float = 0.0   # the highest KV-cache use seen at a progress report, 0..1
    left_running: dict = field(default_factory=dict)  # requests still in vLLM when a phase ended
    held_back: int = 0                 # times memory-centric admission kept a request waiting for room
    retried_errors: int = 0            # errored results cleared to be generated again (--retry-errors)


def structured_outputs_for(response_format: str | None):
    """vLLM's constraint for a stored response format (None: free text)."""
    if not response_format:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    spec = json.loads(response_format)
    if spec["type"] == "json_object":
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=spec["schema"])


def request_seed(job_seed: int | None, request_id: str) -> int | None:
    """The seed of a sampled request that has none of its own: derived from the job's seed and
    the request's id, so a re-run samples the same, and two identical prompts (two ids) sample
    apart, as a Batch API user expects. None (a job without a seed): vLLM's own randomness."""
    if job_seed is None:
        return None
    digest = hashlib.sha256(f"{job_seed}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def output_params(row: dict, defaults: SamplingDefaults) -> dict:
    """What decides a request's output besides the model and its prompt: its own overrides, else
    the job's defaults, as vLLM gets them (max_tokens within the context's room; the seed only
    where it samples). Answers reused across runs are keyed on exactly these (engine/reuse_key.py)."""
    room = defaults.max_model_len - len(row["token_ids"])
    temperature = defaults.temperature if row["temperature"] is None else row["temperature"]
    max_tokens = max(1, min(row["max_tokens"] or defaults.max_tokens, room))
    return {
        "max_tokens": max_tokens,
        "min_tokens": min(row.get("min_tokens") or 0, max_tokens),
        "ignore_eos": bool(row.get("ignore_eos")),
        "temperature": temperature,
        "top_p": defaults.top_p if row["top_p"] is None else row["top_p"],
        # a seed only matters when sampling; on greedy requests it would only cost vLLM a
        # per-request generator
        "seed": None if temperature == 0 else (request_seed(defaults.seed, row["request_id"]) if row["seed"] is None
                                               else row["seed"]),
        "stop": row["stop"] or None,
        "response_format": row.get("response_format") or None,
    }


def sampling_params_for(row: dict, defaults: SamplingDefaults):
    """vLLM SamplingParams of one request: its own overrides, else the job's defaults."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = output_params(row, defaults)
    response_format = params.pop("response_format")
    return SamplingParams(**params, structured_outputs=structured_outputs_for(response_format),
                          output_kind=RequestOutputKind.FINAL_ONLY)


class EngineFailure(BatchBinError):
    """vLLM's engine stopped working in the middle of a run (its process died, a step raised)."""


PUBLISH_EVERY_S = 1.0  # how often generation reports its progress (the log and artifact: PROGRESS_EVERY_S)

MIN_IN_FLIGHT = 1024
# vLLM request ids, unique in the process: a phase's requests may still run in the next one
_REQUEST_KEYS = itertools.count()


def in_flight_limit(engine: Engine) -> int:
    """How many requests may be inside vLLM at once: 4x the sequences it runs (at least 1024),
    as vLLM's own config says (on GPU, BatchBin leaves max_num_seqs to vLLM)."""
    running = vllm_adapter.max_num_seqs(engine.llm)
    if running is None:  # a vLLM that keeps it elsewhere
        running = engine.settings.max_num_seqs or DEFAULT_MAX_NUM_SEQS
    return max(MIN_IN_FLIGHT, 4 * running)


class StepLoop:
    """Runs rows (of generate.work_in_order, in order) through one vLLM engine and hands each
    finished request to `store`: after a step that brings the waiting results to `checkpoint_every`,
    all of them at once (a step that finishes many requests writes one checkpoint, not many).

    At most `in_flight` requests (default `in_flight_limit`) are inside vLLM at a time; `total`
    is only for progress reports. `store_steps` (optional) gets the rows of the engine steps
    (vllm_adapter.StepShape, timed here) since the last checkpoint, just before `store` gets
    its results.

    `admission` (memory-centric admission, batchbin/engine/admission.py): a row is handed over
    only while the KV cache holds every request inside vLLM at its predicted peak; the rows
    behind it wait for requests to finish.

    Its state, by name: `inside` (the requests in vLLM, by their vLLM request id), `sent_back`
    (a row the admission gate sent back, first in line), `checkpoint` and `steps` (finished
    results and step rows not yet stored), `stats`."""

    def __init__(self, engine: Engine, defaults: SamplingDefaults, store: Callable[[list[dict]], None],
                 checkpoint_every: int = 32, progress: Callable[[GenerationStats, int], None] | None = None,
                 total: int = 0, in_flight: int | None = None,
                 store_steps: Callable[[list[dict]], None] | None = None,
                 admission: KvAdmission | None = None) -> None:
        self.engine = engine
        self.llm = engine.llm
        self.defaults = defaults
        self.store = store
        self.store_steps = store_steps
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.total = total
        self.in_flight = in_flight or in_flight_limit(engine)
        self.admission = admission
        self.stats = GenerationStats()
        self.inside: dict[str, dict] = {}
        self.sent_back: dict | None = None
        self.checkpoint: list[dict] = []
        self.steps: list[dict] = []
        self.waiting_for: set[str] | None = None
        self.started = time.perf_counter()

    def run(self, work: Iterable[dict], running: dict[str, dict] | None = None,
            until_done: set[str] | None = None) -> GenerationStats:
        """Generate `work`. A generation in phases: `running` holds requests already inside
        vLLM (an earlier phase's, keyed by their vLLM request id), finished here as if added
        here; with `until_done`, the generation ends as soon as every one of those request ids
        has finished, adding nothing more and leaving what still runs in vLLM in
        `stats.left_running` for the next phase."""
        rows = iter(work)
        self.inside = dict(running or {})
        self.waiting_for = set(until_done) if until_done is not None else None
        if self.admission is not None:
            for key, row in self.inside.items():  # an earlier phase's, still running: as if just handed over
                self.admission.handed_over(key, len(row["token_ids"]), expected_tokens(row, self.defaults))
        self.started = time.perf_counter()
        try:
            with scheduler_held(self.engine):  # the first requests all queued before the first step
                self._top_up(rows)
            self._step_until_done(rows)
        except BaseException:
            if self.inside:
                try:
                    vllm_adapter.abort_requests(self.llm, list(self.inside))
                except Exception:
                    pass
            self._store_checkpoint()
            raise
        self._store_checkpoint()
        self.stats.generate_s = time.perf_counter() - self.started
        self.stats.left_running = self.inside
        self.stats.held_back = self.admission.held_back if self.admission is not None else 0
        if self.progress:
            self.progress(self.stats, self.total)
        return self.stats

    def _step_until_done(self, rows: Iterator[dict]) -> None:
        last_report = time.perf_counter()
        step_numbers = itertools.count()
        # steps are watched only for someone who stores them (Ray's engines do not)
        with vllm_adapter.steps_watched(self.llm) if self.store_steps else nullcontext() as watch:
            while vllm_adapter.has_unfinished_requests(self.llm):
                step_started = time.perf_counter()
                outputs = self._step()
                if self.admission is not None:
                    self.admission.stepped()
                if watch is not None and watch.last is not None:
                    self.steps.append({"step": next(step_numbers), "started_s": step_started - self.started,
                                       "duration_s": time.perf_counter() - step_started, **asdict(watch.last)})
                    watch.last = None
                for output in outputs:
                    if output.finished:
                        self._finished(output)
                if len(self.checkpoint) >= self.checkpoint_every:  # what a step finished goes in at once
                    self._store_checkpoint()
                if self.waiting_for is not None and not self.waiting_for:
                    return  # the phase is over: what still runs goes on in the next one
                self._top_up(rows)
                if self.progress and time.perf_counter() - last_report > PUBLISH_EVERY_S:
                    self.progress(self.stats, self.total)
                    last_report = time.perf_counter()

    def _top_up(self, rows: Iterator[dict]) -> None:
        """Add rows, in order, until `in_flight` requests are in vLLM (or admission finds no
        room for the next one) or no row is left."""
        while len(self.inside) < self.in_flight:
            row, self.sent_back = (self.sent_back, None) if self.sent_back is not None else (next(rows, None), None)
            if row is None:
                return
            expected = 0
            if self.admission is not None:
                expected = expected_tokens(row, self.defaults)
                if not self.admission.admits(len(row["token_ids"]), expected):
                    self.sent_back = row
                    return
            key = f"bb-{next(_REQUEST_KEYS)}"
            try:
                vllm_adapter.add_request(self.llm, key, row["token_ids"], sampling_params_for(row, self.defaults))
            except Exception as error:  # a bad request must not stop the run
                self.stats.errors += 1
                self._record(row, output_text=None, prompt_tokens=len(row["token_ids"]), output_tokens=0,
                             cached_tokens=0, finish_reason="error", error=f"{type(error).__name__}: {error}",
                             latency_s=0.0)
                continue
            row["added_at"] = time.perf_counter()
            self.inside[key] = row  # outputs come back under this (external) id
            if self.admission is not None:
                self.admission.handed_over(key, len(row["token_ids"]), expected)

    def _finished(self, output) -> None:
        row = self.inside.pop(output.request_id, None)
        if row is None:
            return
        if self.admission is not None:
            self.admission.finished(output.request_id)
        completion = output.outputs[0]
        reason = completion.finish_reason or "unknown"
        stats = self.stats
        stats.prompt_tokens += len(output.prompt_token_ids or row["token_ids"])
        stats.output_tokens += len(completion.token_ids)
        stats.cached_tokens += output.num_cached_tokens or 0
        stats.finish_reasons[reason] = stats.finish_reasons.get(reason, 0) + 1
        self._record(row, output_text=completion.text, prompt_tokens=len(row["token_ids"]),
                     output_tokens=len(completion.token_ids), cached_tokens=output.num_cached_tokens or 0,
                     finish_reason=reason, error=None, latency_s=time.perf_counter() - row["added_at"])

    def _record(self, row: dict, **result) -> None:
        self.checkpoint.append({"request_id": row["request_id"], "batch": row["batch"],
                                "finished_s": time.perf_counter() - self.started, **result})
        self.stats.requests += 1
        if self.waiting_for is not None:
            self.waiting_for.discard(row["request_id"])

    def _store_checkpoint(self) -> None:
        if self.steps and self.store_steps:
            self.store_steps(list(self.steps))
            self.steps.clear()
        if self.checkpoint:
            self.store(list(self.checkpoint))
            self.stats.checkpoints += 1
            self.checkpoint.clear()

    def _step(self) -> list:
        """One engine step; an engine that died or a step that failed becomes EngineFailure."""
        try:
            return vllm_adapter.step(self.llm)
        except Exception as error:  # the engine died, or a step failed: nothing to resume in it
            why = ("its process stopped" if vllm_adapter.is_engine_dead(error)
                   else f"{type(error).__name__}: {str(error) or 'no message'}")
            raise EngineFailure(
                f"the vLLM engine failed ({why}) after {self.stats.requests} "
                f"of {self.total} requests of this attempt; every finished result is stored: run the same command "
                "again to resume (only requests without a result are generated)") from error


def generate_in_order(engine: Engine, work: Iterable[dict], defaults: SamplingDefaults,
                      store: Callable[[list[dict]], None], checkpoint_every: int = 32,
                      progress: Callable[[GenerationStats, int], None] | None = None, total: int | None = None,
                      in_flight: int | None = None, store_steps: Callable[[list[dict]], None] | None = None,
                      running: dict[str, dict] | None = None, until_done: set[str] | None = None,
                      admission: KvAdmission | None = None) -> GenerationStats:
    """Run `work` through vLLM in order (StepLoop); `total` defaults to len(work)."""
    total = len(work) if total is None and hasattr(work, "__len__") else (total or 0)
    loop = StepLoop(engine, defaults, store, checkpoint_every, progress, total, in_flight, store_steps, admission)
    return loop.run(work, running, until_done)


def expected_tokens(row: dict, defaults: SamplingDefaults) -> int:
    """The output tokens admission plans for a row (the length the schedule assumed)."""
    return planned_tokens(row.get("predicted_tokens"), row["max_tokens"] or defaults.max_tokens,
                          len(row["token_ids"]), defaults.max_model_len)


def kv_admission_for(engine: Engine) -> KvAdmission | None:
    """The admission gate for this engine's KV cache (None where vLLM does not say its size)."""
    tokens = vllm_adapter.kv_cache_tokens(engine.llm)
    return KvAdmission(tokens) if tokens else None
