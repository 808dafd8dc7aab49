"""Spreading one run over several engines: shards of whole prefix families, balanced by
predicted work, and the pool that hands them out (pure logic; Ray lives in batchbin/scaleout/ray_engines.py).

    shares = plan_shares(families_from_rows(rows), engines=4)
    pool = WorkPool(shares)
    chunk = pool.take(engine)          # its own share in schedule order, else stolen work
    pool.done(engine, request_ids)     # results that came back
    pool.engine_lost(engine)           # what it had not finished goes back to the others

A prefix family (sql/scaleout.sql, the rule of sql/schedule.sql) is never split: vLLM's prefix
cache reuses a family's shared tokens only when the family runs on one engine. Families are
dealt out largest first to the engine with the least predicted work so far (LPT), then each
share is put back in schedule order and cut into chunks of a few families. An engine works
through its own chunks front to back; one whose share is empty takes the last chunk of the
share with the most predicted work left (its tail, the part its owner reaches last), so a job
does not wait on one slow engine. A lost engine's unfinished requests go back to the pool in
schedule order and are taken first by the engines still running.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

# Predicted work of a request, in prompt-token equivalents: an output token costs about as much
# engine time as OUTPUT_TOKEN_COST prompt tokens. On the default model on CPU (AMD EPYC, 2
# cores) prefill ran at ~560 prompt tokens/s and generation at ~132 output tokens/s: ~4x.
OUTPUT_TOKEN_COST = 4.0
# Chunks per engine in an even share: small enough that the last chunks balance the finish
# (stealing moves whole chunks), large enough that a chunk keeps several families together.
CHUNKS_PER_ENGINE = 8


@dataclass(frozen=True)
class Family:
    """One prefix family of the work: its requests in schedule order and their predicted cost."""
    family: int
    request_ids: tuple[str, ...]
    first_position: int
    cost: float


@dataclass
class Chunk:
    """Whole families handed to an engine at once, in schedule order."""
    request_ids: list[str]
    cost: float
    first_position: int
    families: int = 1


@dataclass
class Share:
    """One engine's planned work: chunks in schedule order."""
    engine: int
    chunks: deque[Chunk] = field(default_factory=deque)

    @property
    def cost(self) -> float:
        return sum(chunk.cost for chunk in self.chunks)

    @property
    def requests(self) -> int:
        return sum(len(chunk.request_ids) for chunk in self.chunks)


def request_cost(new_prompt_tokens: float, predicted_tokens: float) -> float:
    """Predicted engine work of one request: prompt tokens its family's cache lacks, plus its
    predicted output tokens weighted by OUTPUT_TOKEN_COST."""
    return float(new_prompt_tokens) + OUTPUT_TOKEN_COST * float(predicted_tokens)


def families_from_rows(rows: Iterable[dict]) -> list[Family]:
    """Families of rows of scaleout.work_families (request_id, position, family,
    new_prompt_tokens, predicted_tokens), each family's requests in schedule order."""
    members: dict[int, list[tuple[int, str]]] = {}
    costs: dict[int, float] = {}
    for row in rows:
        key = int(row["family"])
        members.setdefault(key, []).append((int(row["position"]), row["request_id"]))
        costs[key] = costs.get(key, 0.0) + request_cost(row["new_prompt_tokens"], row["predicted_tokens"])
    families = []
    for key, entries in members.items():
        entries.sort()
        families.append(Family(key, tuple(request_id for _, request_id in entries), entries[0][0], costs[key]))
    families.sort(key=lambda family: family.first_position)
    return families


def balance(families: list[Family], engines: int) -> list[list[Family]]:
    """Families dealt to `engines` shares, largest first to the least loaded (LPT; ties: the
    lower engine), each share back in schedule order."""
    if engines < 1:
        raise ValueError(f"engines must be at least 1, not {engines}")
    shares: list[list[Family]] = [[] for _ in range(engines)]
    loads = [0.0] * engines
    for family in sorted(families, key=lambda f: (-f.cost, f.first_position)):
        lightest = min(range(engines), key=lambda engine: (loads[engine], engine))
        shares[lightest].append(family)
        loads[lightest] += family.cost
    for share in shares:
        share.sort(key=lambda family: family.first_position)
    return shares


def chunked(families: list[Family], target_cost: float) -> deque[Chunk]:
    """Consecutive families joined into chunks of about `target_cost` (a family larger than
    that is a chunk of its own: families are never split)."""
    chunks: deque[Chunk] = deque()
    current: Chunk | None = None
    for family in families:
        if current is not None and current.cost + family.cost > target_cost:
            chunks.append(current)
            current = None
        if current is None:
            current = Chunk(list(family.request_ids), family.cost, family.first_position)
        else:
            current.request_ids.extend(family.request_ids)
            current.cost += family.cost
            current.families += 1
    if current is not None:
        chunks.append(current)
    return chunks


def plan_shares(families: list[Family], engines: int, chunks_per_engine: int = CHUNKS_PER_ENGINE) -> list[Share]:
    """Each engine's share of the work, balanced by predicted cost, cut into chunks."""
    if chunks_per_engine < 1:
        raise ValueError(f"chunks_per_engine must be at least 1, not {chunks_per_engine}")
    total = sum(family.cost for family in families)
    target = max(total / (engines * chunks_per_engine), 1e-9)
    return [Share(engine, chunked(share, target)) for engine, share in enumerate(balance(families, engines))]


@dataclass
class Taken:
    """A chunk an engine holds, with the requests whose results have not come back yet."""
    chunk: Chunk
    open_ids: set[str]


class WorkPool:
    """The shares of a run, what each engine holds, and what came back. Not thread-safe: the
    driver calls it under one lock."""

    def __init__(self, shares: list[Share]) -> None:
        self.shares = {share.engine: share for share in shares}
        self.held: dict[int, list[Taken]] = {share.engine: [] for share in shares}
        self.lost: set[int] = set()
        self.orphans: deque[Chunk] = deque()  # lost engines' unfinished work, in schedule order
        self.stolen = {share.engine: 0 for share in shares}  # chunks each engine took from others
        self.requeued = 0                     # requests given back by lost engines
        self.started: set[int] = set()        # engines that have taken work (their engine is built)

    def take(self, engine: int, steal_from_unstarted: bool = False) -> Chunk | None:
        """The next chunk for `engine`: a lost engine's work first, then its own share from the
        front, then the tail of the live share with the most predicted work left; None when
        nothing is queued (other engines may still give work back: see `finished`).

        An engine still building (one that has taken nothing yet) keeps its share unless
        `steal_from_unstarted`: engines start seconds apart, and the first one up must not
        empty the others' shares before they begin (the driver allows it after a grace period,
        for an engine whose start hangs)."""
        if engine in self.lost:
            raise ValueError(f"engine {engine} was lost and takes no more work")
        self.started.add(engine)
        if self.orphans:
            chunk = self.orphans.popleft()
        elif self.shares[engine].chunks:
            chunk = self.shares[engine].chunks.popleft()
        else:
            victims = [share for other, share in self.shares.items()
                       if other != engine and other not in self.lost and share.chunks
                       and (other in self.started or steal_from_unstarted)]
            if not victims:
                return None
            victim = max(victims, key=lambda share: (share.cost, -share.engine))
            chunk = victim.chunks.pop()
            self.stolen[engine] += 1
        self.held[engine].append(Taken(chunk, set(chunk.request_ids)))
        return chunk

    def outstanding(self, engine: int) -> int:
        """Requests `engine` holds without a result yet."""
        return sum(len(taken.open_ids) for taken in self.held[engine])

    def done(self, engine: int, request_ids: Iterable[str]) -> list[str]:
        """Record results from `engine`; return the ids it did not hold (a result not asked of
        it, or one already returned: a duplicate the caller must not store)."""
        unexpected = []
        for request_id in request_ids:
            for taken in self.held[engine]:
                if request_id in taken.open_ids:
                    taken.open_ids.discard(request_id)
                    break
            else:
                unexpected.append(request_id)
        self.held[engine] = [taken for taken in self.held[engine] if taken.open_ids]
        return unexpected

    def engine_lost(self, engine: int) -> int:
        """`engine` is gone: every request it held without a result, and its share not yet
        started, go back to the pool for the others, in schedule order. Returns how many
        requests it held unfinished."""
        self.lost.add(engine)
        returned = []
        for taken in self.held.pop(engine, []):
            ids = [request_id for request_id in taken.chunk.request_ids if request_id in taken.open_ids]
            share_of_cost = taken.chunk.cost * len(ids) / max(1, len(taken.chunk.request_ids))
            returned.append(Chunk(ids, share_of_cost, taken.chunk.first_position, taken.chunk.families))
        self.held[engine] = []
        self.requeued += sum(len(chunk.request_ids) for chunk in returned)
        left = list(self.shares[engine].chunks)
        self.shares[engine].chunks.clear()
        self.orphans = deque(sorted([*self.orphans, *returned, *left], key=lambda chunk: chunk.first_position))
        return sum(len(chunk.request_ids) for chunk in returned)

    def queued(self) -> int:
        """Requests not handed to any engine yet."""
        return (sum(len(chunk.request_ids) for chunk in self.orphans)
                + sum(share.requests for engine, share in self.shares.items() if engine not in self.lost))

    def finished(self) -> bool:
        """Nothing queued and nothing held by a live engine: the run's work is done."""
        return self.queued() == 0 and all(self.outstanding(engine) == 0 for engine in self.held if engine not in self.lost)

    def live_engines(self) -> list[int]:
        return [engine for engine in self.shares if engine not in self.lost]


def split_cores(cores: tuple[int, ...], parts: int, slot: int) -> tuple[int, ...]:
    """The cores of engine `slot` of `parts` engines on one host: consecutive, as even as can be
    (with fewer cores than engines, engines share them round-robin)."""
    if parts < 1 or not 0 <= slot < parts:
        raise ValueError(f"slot {slot} of {parts} engines on a host")
    ordered = sorted(cores)
    if not ordered:
        raise ValueError("no cores to split")
    if len(ordered) < parts:
        return (ordered[slot % len(ordered)],)
    size, extra = divmod(len(ordered), parts)
    start = slot * size + min(slot, extra)
    return tuple(ordered[start:start + size + (1 if slot < extra else 0)])
