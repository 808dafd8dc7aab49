"""The Multi-Bin Batching paper's own model of a batch job (Guldogan et al., 2024).

    batchbin simulate multibin --requests 4096 --batch-size 32 --bins 1,2,4,8,16,32

Requests are served in fixed batches of `batch_size`; a batch lasts as long as its longest
member (static batching: a finished request's slot stays idle until the whole batch ends).
Multi-Bin Batching puts the requests into k bins by (predicted) length, equal in count, and
forms batches inside each bin, so a batch holds requests of similar length and wastes less.

Throughput is measured as utilisation: the tokens generated over the slot-steps the batches
took (batch_size x longest member, summed), 1.0 for batches of equal lengths. The paper's
result, which this model reproduces: utilisation rises with k toward the optimum (every batch
of equal lengths), and less with noisy length predictions, where requests land in the wrong
bin. Pure Python; no engine, no model.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

from batchbin.errors import BatchBinError


def uniform_lengths(n: int, low: int, high: int, seed: int = 0) -> list[int]:
    """`n` output lengths drawn uniformly from [low, high] (the paper's running example)."""
    if n < 1 or low < 1 or high < low:
        raise BatchBinError(f"need n >= 1 and 1 <= low <= high, got n={n}, low={low}, high={high}")
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(n)]


def noisy_predictions(lengths: Sequence[int], sigma: float, seed: int = 0) -> list[float]:
    """Predicted lengths: each true length times a log-normal error exp(N(0, sigma)); sigma 0
    is an exact predictor (sigma 0.5 puts about a third of predictions off by more than 1.5x)."""
    if sigma < 0:
        raise BatchBinError(f"the noise sigma must be >= 0, got {sigma}")
    rng = random.Random(seed)
    return [length * math.exp(rng.gauss(0.0, sigma)) if sigma else float(length) for length in lengths]


def batch_steps(lengths: Sequence[int], predicted: Sequence[float], bins: int, batch_size: int) -> int:
    """Slot-steps of the job: requests split into `bins` bins of equal count by predicted
    length, batches of `batch_size` formed in arrival order inside each bin, each batch lasting
    as long as its longest true length, times the batch size."""
    if bins < 1 or batch_size < 1:
        raise BatchBinError(f"bins and batch_size must be at least 1, got {bins} and {batch_size}")
    if len(lengths) != len(predicted):
        raise BatchBinError("lengths and predictions differ in number")
    n = len(lengths)
    by_prediction = sorted(range(n), key=lambda i: (predicted[i], i))
    bin_of = [0] * n
    for rank, i in enumerate(by_prediction):
        bin_of[i] = rank * bins // n
    members: list[list[int]] = [[] for _ in range(bins)]
    for i in range(n):  # arrival order inside each bin
        members[bin_of[i]].append(lengths[i])
    total = 0
    for group in members:
        for start in range(0, len(group), batch_size):
            total += max(group[start:start + batch_size]) * batch_size
    return total


def utilisation(lengths: Sequence[int], predicted: Sequence[float], bins: int, batch_size: int) -> float:
    """Generated tokens over slot-steps: 1.0 when no slot ever idles."""
    return sum(lengths) / batch_steps(lengths, predicted, bins, batch_size)


@dataclass(frozen=True)
class MultiBinPoint:
    bins: int
    sigma: float
    utilisation: float
    speedup: float  # throughput over one bin (plain batching) with the same predictions


def sweep(lengths: Sequence[int], bins: Sequence[int], sigmas: Sequence[float], batch_size: int,
          seed: int = 0) -> list[MultiBinPoint]:
    """Utilisation against k for each noise level (sigma 0: exact lengths)."""
    points = []
    for sigma in sigmas:
        predicted = noisy_predictions(lengths, sigma, seed)
        base = utilisation(lengths, predicted, 1, batch_size)
        for k in bins:
            value = utilisation(lengths, predicted, k, batch_size)
            points.append(MultiBinPoint(k, sigma, value, value / base))
    return points


def optimum(lengths: Sequence[int], batch_size: int) -> float:
    """The best utilisation any binning reaches: batches of consecutive true lengths."""
    return utilisation(lengths, lengths, max(1, len(lengths) // batch_size), batch_size)


def plot(points: Sequence[MultiBinPoint], best: float, path: str) -> str:
    """Utilisation against k, one line per noise level, the optimum dashed (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise BatchBinError("plotting needs matplotlib (pip install 'batchbin[bench]')") from error
    figure, axes = plt.subplots(figsize=(6, 4))
    for sigma in sorted({point.sigma for point in points}):
        line = [point for point in points if point.sigma == sigma]
        label = "exact lengths" if sigma == 0 else f"noisy predictions (sigma {sigma:g})"
        axes.plot([p.bins for p in line], [p.utilisation for p in line], marker="o", label=label)
    axes.axhline(best, linestyle="--", color="grey", label="optimum (sorted by true length)")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("bins (k)")
    axes.set_ylabel("throughput (utilisation of batch slots)")
    axes.set_title("Multi-Bin Batching: the paper's model")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
