"""Memory-centric admission (BatchLLM): hand a request to vLLM only while the KV cache, by the
predicted output lengths, can hold every request inside vLLM at its peak.

vLLM admits a waiting request as soon as its prompt fits in the free KV blocks. The requests
then grow by a token a step, and when a running one needs a block and none is free, vLLM
preempts the request admitted last and computes it all again later (recompute): on a CPU,
where a prompt token costs about what a whole decode step of one sequence does, that is work
thrown away. With predicted lengths the peak is known in advance: request i, holding c_i
tokens now with r_i still to generate, holds c_i + t tokens t steps from now while t < r_i, so
the set holds

    KV(t) = sum over i with r_i > t of (c_i + t)

which grows between finishes and drops at each: its peak is just before one of them. A request
is handed over only if the set with it still peaks within the cache.

Pure logic: tasks/generate.py gates what it hands to vLLM with `KvAdmission`, and the simulator
(batchbin/sim/simulator.py) replays the same gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def planned_tokens(predicted: float | None, max_tokens: int, prompt_tokens: int, max_model_len: int) -> int:
    """The output tokens admission plans for a request: its predicted length (its max_tokens
    where it has no prediction), within what the context leaves it."""
    planned = max_tokens if predicted is None else int(round(predicted))
    return max(1, min(planned, max_model_len - prompt_tokens))


def predicted_peak(now: np.ndarray, left: np.ndarray) -> int:
    """The most KV tokens a set of requests will hold at once, if each generates exactly what
    is left to it: `now` tokens held per request, `left` tokens still to generate (>= 1)."""
    if len(now) == 0:
        return 0
    by_left = np.argsort(-left, kind="stable")
    held = np.cumsum(now[by_left])
    count = np.arange(1, len(now) + 1)
    # just before the request with the fewest tokens left among the `count` longest finishes
    return int(np.max(held + count * np.maximum(left[by_left] - 1, 0)))


@dataclass
class KvAdmission:
    """The gate in front of vLLM: `budget_tokens` of KV cache (vLLM's blocks times their size)
    that the requests inside may fill at their predicted peak.

    What it knows of a request inside: its prompt, its predicted output tokens, and the engine
    steps since it was handed over (each a token it may have generated; an estimate: a request
    still waiting in vLLM's queue generates nothing)."""

    budget_tokens: int
    inside: dict = field(default_factory=dict)  # key -> (prompt tokens, predicted output tokens, step handed over)
    steps: int = 0                              # engine steps so far
    held_back: int = 0                          # times a request waited for room (a step it could not go in)

    def tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens now, tokens left) of every request inside."""
        if not self.inside:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        sizes = np.array(list(self.inside.values()), dtype=np.int64)
        generated = np.maximum(self.steps - sizes[:, 2], 0)
        return sizes[:, 0] + generated, np.maximum(sizes[:, 1] - generated, 1)

    def admits(self, prompt_tokens: int, predicted_tokens: int) -> bool:
        """Whether a request of this size may go in now (an empty engine takes any request:
        one that alone exceeds the budget still has to run)."""
        if not self.inside:
            return True
        now, left = self.tokens()
        fits = predicted_peak(np.append(now, prompt_tokens), np.append(left, max(1, predicted_tokens))) <= self.budget_tokens
        if not fits:
            self.held_back += 1
        return fits

    def handed_over(self, key: str, prompt_tokens: int, predicted_tokens: int) -> None:
        self.inside[key] = (prompt_tokens, max(1, predicted_tokens), self.steps)

    def finished(self, key: str) -> None:
        self.inside.pop(key, None)

    def stepped(self, steps: int = 1) -> None:
        self.steps += steps
