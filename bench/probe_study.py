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

from batchbin.store import db
from batchbin.predictors.evaluate import prediction_metrics
from batchbin.predictors.probe import fit_probe, probe_size
from batchbin.store.queries import fetch_arrow, fetch_one

METRICS = ("kendall_tau", "spearman", "bin_accuracy_k4", "mae")


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


def study(rows: dict, groupings: dict[int, np.ndarray], fractions: list[float], draws: int) -> list[dict]:
    """The table: `rows` (probe.study_rows), `groupings` each row's template group by the shared
    tokens that define a template (0: one group, a global fit alone)."""
    predicted = np.asarray(rows["predicted_tokens"], dtype=np.float64)
    real = np.asarray(rows["output_tokens"], dtype=np.float64)
    limits = np.asarray(rows["max_tokens"], dtype=np.float64)
    out = [{"probe": "none", "template_tokens": None, "groups": None,
            **{m: prediction_metrics(real, predicted)[m] for m in METRICS}}]
    for tokens, groups in groupings.items():
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


def run_rows(db_path: str, run_id: str | None, template_tokens: list[int]) -> tuple[dict, dict[int, np.ndarray]]:
    """A finished run's rows (probe.study_rows) and, per template rule, each row's template
    group as the probe stage computes it (probe.template_groups)."""
    with db.connect(db_path, read_only=True) as con:
        if run_id is None:
            run_id = fetch_one(con, "probe.latest_finished_run", {})[0]
        rows = fetch_arrow(con, "probe.study_rows", {"run_id": run_id}).to_pydict()
        groupings = {}
        for tokens in template_tokens:
            if tokens == 0:
                groupings[0] = np.zeros(len(rows["request_id"]), dtype=np.int64)
                continue
            table = fetch_arrow(con, "probe.template_groups", {"run_id": run_id, "template_tokens": tokens}).to_pydict()
            group_of = dict(zip(table["request_id"], table["template_group"]))
            groupings[tokens] = np.array([group_of[r] for r in rows["request_id"]], dtype=np.int64)
    return rows, groupings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--run-id")
    parser.add_argument("--fractions", default="0.01,0.02,0.05,0.1")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--template-tokens", default="0,8,16,24,32,64")
    args = parser.parse_args(argv)
    rows, groupings = run_rows(args.db, args.run_id, [int(t) for t in args.template_tokens.split(",")])
    table = study(rows, groupings, [float(f) for f in args.fractions.split(",")], args.draws)
    for row in table:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
