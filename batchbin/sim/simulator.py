"""A vLLM-style continuous-batching simulator: how long a job takes in a given order.

It replays what vLLM's (v1) scheduler does each step, on request sizes alone:

- requests are handed over in order and wait in a FIFO queue; at most `max_num_seqs` run;
- each step has a budget of `max_num_batched_tokens`: running requests first (one token each
  when decoding, a chunk of their prompt when prefilling), then waiting ones are admitted while
  the budget, the sequence limit and the KV cache allow (chunked prefill);
- the KV cache is `kv_blocks` blocks of `block_size` tokens; a full prompt block is cached
  under a hash of its tokens and everything before them, so a later prompt that starts the same
  way reuses it (prefix caching; freed blocks stay cached until their space is needed);
- when a running request needs a block and none is free, the request admitted last is
  preempted: its blocks are freed and it goes back to the head of the queue, to be computed
  again (recompute) when it is admitted again;
- a step's time comes from a step-cost model (batchbin/sim/step_costs.py).

Pure Python, no model: a job of 10,000 requests simulates in seconds. Stretches where every
running request only decodes and nothing can change until the next one finishes are advanced
in one go (same steps, same costs, computed without looking at each request every step).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Sequence

from batchbin.engine.admission import KvAdmission
from batchbin.errors import BatchBinError
from batchbin.sim.step_costs import StepCost, StepWork


@dataclass(frozen=True)
class SimRequest:
    """One request as the simulator sees it: sizes, and its prompt's prefix-cache keys."""

    prompt_tokens: int
    output_tokens: int
    block_hashes: tuple = ()   # one key per full prompt block, each covering the whole prefix up to it


@dataclass(frozen=True)
class EngineLimits:
    """The engine settings that shape scheduling."""

    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    kv_blocks: int
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_blocks"):
            if getattr(self, name) < 1:
                raise BatchBinError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class SimResult:
    """What a simulated job did and how long it took."""

    seconds: float = 0.0
    steps: int = 0
    preemptions: int = 0
    prefill_tokens: int = 0      # prompt tokens computed (recomputation after preemption included)
    cached_tokens: int = 0       # prompt tokens taken from the prefix cache
    output_tokens: int = 0
    tail_s: float = 0.0          # seconds of steps with fewer than half of max_num_seqs running
    prefill_s: float = 0.0       # seconds of steps that computed prompt tokens
    peak_running: int = 0
    peak_kv_usage: float = 0.0
    finish_s: list[float] = field(default_factory=list)  # per request, in input order
    trace: list[tuple[StepWork, float]] | None = None     # (work, seconds) per step, when asked for

    def summary(self) -> dict:
        """The headline numbers, rounded, for printing and reports."""
        return {"seconds": round(self.seconds, 2), "steps": self.steps, "preemptions": self.preemptions,
                "prefill_tokens": self.prefill_tokens, "cached_tokens": self.cached_tokens,
                "output_tokens": self.output_tokens, "tail_s": round(self.tail_s, 2),
                "prefill_s": round(self.prefill_s, 2), "peak_running": self.peak_running,
                "peak_kv_usage": round(self.peak_kv_usage, 3)}


class _Running:
    """A request in the engine: how much of it is computed and which KV blocks it holds."""

    __slots__ = ("index", "prompt", "output", "hashes", "generated", "computed", "target", "blocks",
                 "held_hashes", "hashed_upto")

    def __init__(self, index: int, request: SimRequest) -> None:
        self.index = index
        self.prompt = request.prompt_tokens
        self.output = request.output_tokens
        self.hashes = request.block_hashes
        self.generated = 0       # output tokens sampled so far
        self.computed = 0        # tokens whose KV is in the cache
        self.target = self.prompt  # tokens to prefill (the prompt; after a preemption, with the output so far);
        # computed < target: prefilling, else decoding one token a step
        self.blocks = 0          # KV blocks held
        self.held_hashes: list = []  # the cached (shared) blocks among them
        self.hashed_upto = 0     # prompt blocks already cached or taken from the cache

    def key(self, block: int):
        """The prefix-cache key of the request's `block`-th block: its prompt's, or one of its
        own for blocks holding output (found again only by this request, after a preemption)."""
        return self.hashes[block] if block < len(self.hashes) else ("output", self.index, block)

    def tokens_to_compute(self) -> int:
        return self.target - self.computed if self.computed < self.target else 1


class _BlockPool:
    """The KV cache: blocks in use (cached ones shared, counted by holder) and free blocks,
    some still holding a cached prefix (evicted least recently freed first)."""

    def __init__(self, total: int, prefix_caching: bool) -> None:
        self.total = total
        self.caching = prefix_caching
        self.plain_used = 0
        self.in_use: dict = {}                   # hash -> holders
        self.evictable: OrderedDict = OrderedDict()  # hash -> None, least recently freed first

    def available(self) -> int:
        return self.total - self.plain_used - len(self.in_use)

    def used(self) -> int:
        return self.plain_used + len(self.in_use)

    def cached_prefix(self, state: "_Running", limit: int) -> list:
        """The longest run of the request's leading blocks in the cache (at most `limit`)."""
        hits = []
        if not self.caching:
            return hits
        for i in range(limit):
            key = state.key(i)
            if key in self.in_use or key in self.evictable:
                hits.append(key)
            else:
                break
        return hits

    def take_cached(self, keys: list) -> None:
        for key in keys:
            if key in self.in_use:
                self.in_use[key] += 1
            else:
                del self.evictable[key]
                self.in_use[key] = 1

    def allocate(self, count: int) -> bool:
        """Take `count` fresh blocks (evicting cached free ones if needed); False if too few."""
        if count > self.available():
            return False
        uncached = self.available() - len(self.evictable)
        for _ in range(max(0, count - uncached)):
            self.evictable.popitem(last=False)
        self.plain_used += count
        return True

    def cache_block(self, key) -> bool:
        """A fresh block just filled with prompt tokens becomes a cached one (unless the same
        prefix is cached already: then it stays a private copy)."""
        if not self.caching or key in self.in_use or key in self.evictable:
            return False
        self.plain_used -= 1
        self.in_use[key] = 1
        return True

    def cache_full_blocks(self, state: "_Running", tokens: int, bs: int) -> None:
        """Cache the request's blocks that `tokens` fill, as vLLM does when it schedules them
        (so a request admitted later in the same step can already reuse them)."""
        full = tokens // bs
        if not self.caching or full <= state.hashed_upto:
            return
        for i in range(state.hashed_upto, full):
            key = state.key(i)
            if self.cache_block(key):
                state.held_hashes.append(key)
        state.hashed_upto = full

    def release(self, state: _Running) -> None:
        """Free a request's blocks; its cached blocks stay findable until evicted (its last
        blocks are evicted first, as in vLLM)."""
        for key in reversed(state.held_hashes):
            holders = self.in_use[key] - 1
            if holders:
                self.in_use[key] = holders
            else:
                del self.in_use[key]
                self.evictable[key] = None
        self.plain_used -= state.blocks - len(state.held_hashes)
        state.blocks = 0
        state.held_hashes = []
        state.hashed_upto = 0


def simulate(requests: Sequence[SimRequest], limits: EngineLimits, cost: StepCost,
             keep_trace: bool = False, admission: "Admission | None" = None) -> SimResult:
    """Run `requests`, handed over in this order, through the simulated engine (`admission`:
    handed over only while the KV budget holds them at their predicted peak)."""
    for i, request in enumerate(requests):
        if request.output_tokens < 1 or request.prompt_tokens < 1:
            raise BatchBinError(f"request {i}: prompt and output need at least one token "
                                f"(got {request.prompt_tokens} and {request.output_tokens})")
        needed = math.ceil((request.prompt_tokens + request.output_tokens - 1) / limits.block_size)  # the last token is sampled, never cached
        if needed > limits.kv_blocks:
            raise BatchBinError(f"request {i} needs {needed} KV blocks at its full length; the cache has "
                                f"{limits.kv_blocks}: it could never run")
    bs = limits.block_size
    pool = _BlockPool(limits.kv_blocks, limits.prefix_caching)
    states = deque(_Running(i, r) for i, r in enumerate(requests))
    gate = KvAdmission(admission.budget_tokens) if admission else None
    outside: deque[_Running] = states if admission else deque()
    waiting: deque[_Running] = deque() if admission else states
    running: list[_Running] = []
    result = SimResult(finish_s=[0.0] * len(requests), trace=[] if keep_trace else None)
    half = limits.max_num_seqs / 2

    def record(work: StepWork) -> float:
        if gate:
            gate.stepped()
        seconds = cost.seconds(work)
        result.seconds += seconds
        result.steps += 1
        if work.running < half:
            result.tail_s += seconds
        if work.prefill_tokens:
            result.prefill_s += seconds
        if result.trace is not None:
            result.trace.append((work, seconds))
        return seconds

    while waiting or running or outside:
        if outside:
            admission.hand_over(gate, outside, waiting)
        budget = limits.max_num_batched_tokens
        scheduled: list[tuple[_Running, int]] = []
        preempted = False
        prefill = decode = context = 0
        pairs = 0.0
        # 1. running requests, in order; preempt from the back when blocks run out
        i = 0
        while i < len(running) and budget > 0:
            state = running[i]
            computed = state.computed
            prefilling = computed < state.target
            if prefilling:  # a chunk of what is left of the prompt
                new = state.target - computed
                if new > budget:
                    new = budget
                prefill += new
            else:  # decoding: one token
                new = 1
                decode += 1
            needed = -(-(computed + new) // bs) - state.blocks
            if needed > 0:
                while not pool.allocate(needed):
                    victim = running.pop()
                    pool.release(victim)
                    victim.target = victim.prompt + victim.generated
                    victim.computed = 0
                    waiting.appendleft(victim)
                    result.preemptions += 1
                    preempted = True
                    if victim is state:
                        break
                if preempted and (i >= len(running) or running[i] is not state):  # it was the victim itself
                    if prefilling:
                        prefill -= new
                    else:
                        decode -= 1
                    break
                state.blocks += needed
            if (computed + new) // bs > state.hashed_upto:
                pool.cache_full_blocks(state, computed + new, bs)
            context += computed
            pairs += new * (computed + (new + 1) / 2)
            scheduled.append((state, new))
            budget -= new
            i += 1
        # 2. waiting requests, while nothing was preempted and there is room
        admitted = 0
        while waiting and not preempted and len(running) < limits.max_num_seqs and budget > 0:
            state = waiting[0]
            total = state.target
            hits = pool.cached_prefix(state, (total - 1) // bs)
            hit_tokens = len(hits) * bs
            new = min(total - hit_tokens, budget)
            fresh = -(-(hit_tokens + new) // bs) - len(hits)
            reclaimed = sum(1 for key in hits if key not in pool.in_use)
            if fresh > pool.available() - reclaimed:
                break
            pool.take_cached(hits)
            pool.allocate(fresh)
            state.held_hashes = list(hits)
            state.hashed_upto = len(hits)
            state.blocks = len(hits) + fresh
            state.computed = hit_tokens
            pool.cache_full_blocks(state, hit_tokens + new, bs)
            result.cached_tokens += hit_tokens
            waiting.popleft()
            running.append(state)
            scheduled.append((state, new))
            prefill += new
            context += hit_tokens
            pairs += new * (hit_tokens + (new + 1) / 2)
            budget -= new
            admitted += 1
        if not scheduled:
            raise BatchBinError("the simulated engine cannot schedule anything (a request larger than the KV cache "
                                "or the token budget)")
        # 3. the step's cost
        if len(scheduled) > result.peak_running:
            result.peak_running = len(scheduled)
        record(StepWork(len(scheduled), prefill, decode, context, pairs, kv_tokens=pool.used() * bs))
        now_s = result.seconds
        result.prefill_tokens += prefill
        # 4. advance: computed tokens, sampled tokens, finished requests
        finished = False
        for state, new in scheduled:
            state.computed += new
            if state.computed >= state.target:
                state.generated += 1
                if state.generated >= state.output:
                    finished = True
        result.output_tokens += sum(1 for state, _ in scheduled if state.computed >= state.target)
        if finished:
            still = []
            for state in running:
                if state.generated >= state.output:
                    pool.release(state)
                    result.finish_s[state.index] = now_s
                    if gate:
                        gate.finished(state.index)
                else:
                    still.append(state)
            running = still
        result.peak_kv_usage = max(result.peak_kv_usage, pool.used() / pool.total)
        # 5. a stretch of pure decoding with nothing to change: advance it in one go
        if (not finished and not preempted and not admitted and prefill == 0 and len(scheduled) == len(running)
                and running):
            _fast_forward(running, pool, bs, record, result, half)
    return result


@dataclass(frozen=True)
class Admission:
    """Memory-centric admission in the simulator, the gate tasks/generate.py puts in front of
    vLLM (batchbin/engine/admission.py): a request is handed to the engine only while `budget_tokens`
    of KV cache hold the engine's requests at their predicted peak (`predicted`: output tokens
    per request, in input order). Each simulation keeps its own gate (KvAdmission)."""

    budget_tokens: int
    predicted: Sequence[int]

    def hand_over(self, gate: KvAdmission, outside: deque, waiting: deque) -> None:
        """Move requests from `outside` to the engine's queue while the gate admits them."""
        while outside and gate.admits(outside[0].prompt, self.predicted[outside[0].index]):
            state = outside.popleft()
            gate.handed_over(state.index, state.prompt, self.predicted[state.index])
            waiting.append(state)


def _fast_forward(running: list[_Running], pool: _BlockPool, bs: int, record, result: SimResult, half: float) -> None:
    """The steps after a pure-decode step that did not admit, preempt or finish anything are
    the same until the first running request finishes: advance up to (not including) that step,
    if the blocks those steps need are free (otherwise the step-by-step loop handles the
    shortage)."""
    steps = min(state.output - state.generated for state in running) - 1
    if steps <= 0:
        return
    blocks_needed = sum(-(-(state.computed + steps) // bs) - state.blocks for state in running)
    kv_before = pool.used() * bs  # blocks held (each sequence's last one partly filled)
    if blocks_needed > pool.available() or not pool.allocate(blocks_needed):
        return
    n = len(running)
    context = sum(state.computed for state in running)
    for step in range(steps):
        ctx = context + step * n
        record(StepWork(n, 0, n, ctx, float(ctx + n), kv_tokens=kv_before + step * n))
    for state in running:
        state.computed += steps
        state.generated += steps
        state.blocks = -(-state.computed // bs)
        pool.cache_full_blocks(state, state.computed, bs)
    result.output_tokens += steps * n
    result.peak_kv_usage = max(result.peak_kv_usage, pool.used() / pool.total)
