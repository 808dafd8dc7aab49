"""What an in-job probe buys, measured on a finished run with natural output lengths.

For each probe fraction and draw: pick ceil(fraction * requests) requests (not raised to one per
template as the probe stage does, so sizes compare), spread as the probe stage spreads them (over
template groups and predicted quartiles, but drawn with a seed so draws differ), calibrate on its real
lengths (predictors/probe.py), and score the calibrated predictions of the other requests
against their real lengths, beside the uncalibrated predictions of the same requests.

    python -m batchbin.bench.probe_study --db runs.duckdb [--run-id ID] [--fractions 0.01,0.02,0.05]
        [--draws 5] [--template-tokens 8,16,24,32,64]
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

from batchbin import db
from batchbin.predictors.evaluate import prediction_metrics
from batchbin.predictors.probe import fit_probe, probe_size
from batchbin.sqlfiles import arrow, one

METRICS = ("kendall_tau", "spearman", "bin_accuracy_k4", "mae")


def template_groups(sort_rank: np.ndarray, lcp_prev: np.ndarray, template_tokens: int) -> np.ndarray:
    """Group numbers: runs in token order whose neighbours share `template_tokens` beyond the
    job's common prefix (the smallest neighbour LCP)."""
    order = np.argsort(sort_rank)
    lcp = lcp_prev[order]
    common = lcp[1:].min() if len(lcp) > 1 else 0
    starts = (lcp < common + template_tokens).astype(np.int64)
    starts[0] = 1
    groups = np.empty_like(starts)
    groups[order] = np.cumsum(starts)
    return groups


def draw_probe(rng: np.random.Generator, predicted: np.ndarray, groups: np.ndarray, size: int) -> np.ndarray:
    """`size` row indices: one per template group before a second from any, groups and rows in
    random order, taken evenly from the predicted quartiles."""
    quartile = np.searchsorted(np.quantile(predicted, [0.25, 0.5, 0.75]), predicted, side="right")
    key = rng.random(len(predicted))
    # rank within group (by key), then key: first rows of every group come first
    order = np.lexsort((key, groups))
    rank_in_group = np.empty(len(predicted), dtype=np.int64)
    sorted_groups = groups[order]
    boundaries = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    counts = np.diff(np.r_[boundaries, len(order)])
    rank_in_group[order] = np.arange(len(order)) - np.repeat(boundaries, counts)
    chosen = []
    per_quartile = np.bincount(quartile, minlength=4)
    want = np.round(size * per_quartile / per_quartile.sum()).astype(int)
    for q in range(4):
        rows = np.flatnonzero(quartile == q)
        rows = rows[np.lexsort((key[rows], rank_in_group[rows]))]
        chosen.extend(rows[: want[q]])
    return np.array(sorted(chosen), dtype=np.int64)


def study(rows: dict, fractions: list[float], draws: int, template_tokens: list[int]) -> list[dict]:
    predicted = np.asarray(rows["predicted_tokens"], dtype=np.float64)
    real = np.asarray(rows["output_tokens"], dtype=np.float64)
    limits = np.asarray(rows["max_tokens"], dtype=np.float64)
    sort_rank = np.asarray(rows["sort_rank"])
    lcp_prev = np.asarray(rows["lcp_prev"])
    out = [{"probe": "none", "template_tokens": None, "groups": None,
            **{m: prediction_metrics(real, predicted)[m] for m in METRICS}}]
    for tokens in template_tokens:
        groups = template_groups(sort_rank, lcp_prev, tokens) if tokens else np.zeros(len(real), dtype=np.int64)
        for fraction in fractions:
            size = probe_size(len(real), fraction)
            if not size:
                continue
            scores = {m: [] for m in METRICS}
            base = {m: [] for m in METRICS}
            for draw in range(draws):
                probe = draw_probe(np.random.default_rng(draw), predicted, groups, size)
                rest = np.setdiff1d(np.arange(len(real)), probe)
                calibration = fit_probe(predicted[probe], real[probe], groups[probe])
                calibrated = calibration.apply(predicted[rest], groups[rest], limits[rest])
                after = prediction_metrics(real[rest], calibrated)
                before = prediction_metrics(real[rest], predicted[rest])
                for m in METRICS:
                    scores[m].append(after[m])
                    base[m].append(before[m])
            out.append({"probe": f"{fraction:g} ({size} requests)", "template_tokens": tokens or None,
                        "groups": int(len(np.unique(groups))),
                        **{m: round(statistics.mean(scores[m]), 3) for m in METRICS},
                        **{f"{m}_without": round(statistics.mean(base[m]), 3) for m in METRICS}})
    return out


def run_rows(db_path: str, run_id: str | None) -> dict:
    with db.connect(db_path, read_only=True) as con:
        if run_id is None:
            run_id = one(con, "probe.latest_finished_run", {})[0]
        return arrow(con, "probe.study_rows", {"run_id": run_id}).to_pydict()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--run-id")
    parser.add_argument("--fractions", default="0.01,0.02,0.05,0.1")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--template-tokens", default="0,8,16,24,32,64")
    args = parser.parse_args(argv)
    rows = run_rows(args.db, args.run_id)
    table = study(rows, [float(f) for f in args.fractions.split(",")], args.draws,
                  [int(t) for t in args.template_tokens.split(",")])
    for row in table:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
