"""How good length predictions are: the metrics of the trainer's validation set and of run reports.

    prediction_metrics(true_tokens, predicted_tokens, k_bins=4)
    run_prediction_quality(con, run_id)   # a run's predictions against its results, with n_test
                                          # (its compared rows) and n_train (the predictor's rows),
                                          # and the predictor's honesty (`honesty`, below)

Metrics:
  mae                      mean absolute error in tokens;
  kendall_tau              Kendall's tau-b (ties counted as in scipy's default): the share of
                           pairs ordered right minus the share ordered wrong; None when either
                           side is constant. O(n log n), so a run of millions is measured;
  spearman                 rank correlation (what ordering and binning depend on); None when
                           either side is constant;
  bin_accuracy_k2/_k4/_k8  bin_accuracy (below) with 2, 4 and 8 bins;
  bin_accuracy             share of requests whose predicted bin is their true bin, with k bins
                           at the quantiles of the true lengths for the truth and of the predicted
                           lengths for the prediction - how the scheduler bins (ntile over
                           predictions), so a predictor that is off by a constant factor but
                           ranks well scores well;
  bin_accuracy_true_edges  the same with the predictions placed by the true lengths' boundaries
                           (also penalises a biased scale).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from batchbin.store.queries import execute, fetch_arrow, fetch_one


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (polars' rank, not a Python loop over ties)."""
    return pl.Series(np.asarray(values, dtype=np.float64)).rank("average").to_numpy().astype(np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation, or None if it is undefined (fewer than 2 rows, a constant side)."""
    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _count_inversions(values: np.ndarray) -> int:
    """Pairs i < j with values[i] > values[j] (merge sort, vectorised per level)."""
    values = np.asarray(values)
    n, width, total = len(values), 1, 0
    while width < n:
        for start in range(0, n, 2 * width):
            left = values[start:start + width]
            right = values[start + width:start + 2 * width]
            if len(right) == 0:
                continue
            # each element of right jumps over the elements of left greater than it
            total += int((len(left) - np.searchsorted(left, right, side="right")).sum())
            values[start:start + 2 * width] = np.sort(values[start:start + 2 * width], kind="stable")
        width *= 2
    return total


def _tied_pairs(values: np.ndarray) -> int:
    _, counts = np.unique(values, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def kendall_tau(a, b) -> float | None:
    """Kendall's tau-b of two equally long sequences, or None if undefined (fewer than 2 rows,
    a constant side)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(a)
    if n < 2:
        return None
    order = np.lexsort((b, a))                     # by a, then b
    a_sorted, b_sorted = a[order], b[order]
    pairs = n * (n - 1) // 2
    ties_a, ties_b = _tied_pairs(a), _tied_pairs(b)
    joint = _tied_pairs(a_sorted + 1j * b_sorted) if n else 0
    if ties_a == pairs or ties_b == pairs:
        return None
    discordant = _count_inversions(b_sorted.copy())  # pairs tied in a are sorted by b: no inversion
    concordant = pairs - ties_a - ties_b + joint - discordant
    return float((concordant - discordant) / np.sqrt(float(pairs - ties_a) * float(pairs - ties_b)))


def quantile_bins(values: np.ndarray, edges_from: np.ndarray, k_bins: int) -> np.ndarray:
    """Bin 0..k-1 of each value, with boundaries at the k-quantiles of `edges_from`."""
    edges = np.quantile(np.asarray(edges_from, dtype=np.float64), np.arange(1, k_bins) / k_bins)
    return np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right")


def prediction_metrics(true_tokens, predicted_tokens, k_bins: int = 4) -> dict:
    """MAE, Spearman and bin accuracy of predicted against true output tokens (see the module doc)."""
    true = np.asarray(true_tokens, dtype=np.float64)
    pred = np.asarray(predicted_tokens, dtype=np.float64)
    if true.shape != pred.shape:
        raise ValueError(f"{len(true)} true lengths but {len(pred)} predictions")
    if len(true) == 0:
        return {"n": 0, "k_bins": k_bins, "mae": None, "kendall_tau": None, "spearman": None,
                "bin_accuracy": None, "bin_accuracy_k2": None, "bin_accuracy_k4": None,
                "bin_accuracy_k8": None, "bin_accuracy_true_edges": None, "mean_true": None,
                "mean_predicted": None}
    true_bins = quantile_bins(true, true, k_bins)
    rho, tau = spearman(true, pred), kendall_tau(true, pred)
    accuracy = {f"bin_accuracy_k{k}": round(float((quantile_bins(pred, pred, k) == quantile_bins(true, true, k)).mean()), 4)
                for k in (2, 4, 8)}
    return {
        "n": int(len(true)),
        "k_bins": int(k_bins),
        "mae": round(float(np.abs(true - pred).mean()), 3),
        "kendall_tau": None if tau is None else round(tau, 4),
        "spearman": None if rho is None else round(rho, 4),
        **accuracy,
        "bin_accuracy": round(float((quantile_bins(pred, pred, k_bins) == true_bins).mean()), 4),
        "bin_accuracy_true_edges": round(float((quantile_bins(pred, true, k_bins) == true_bins).mean()), 4),
        "mean_true": round(float(true.mean()), 3),
        "mean_predicted": round(float(pred.mean()), 3),
    }


WITHOUT_PROBE_KEYS = ("kendall_tau", "spearman", "bin_accuracy_k4", "mae")


def run_prediction_quality(con, run_id: str, k_bins: int | None = None) -> dict | None:
    """Metrics of a run's predictions against its finished results, or None if nothing to compare.

    k_bins defaults to the run's own k_bins (runs.config), else 4. The result names the
    predictor(s) that made the predictions. After an in-job probe, the scores are of the
    calibrated predictions on the requests the probe did not run, and `without_probe` holds the
    same scores of the predictor's own numbers for those requests. `honesty` says which predictor
    it was and how it did (`predictor_honesty`).
    """
    if k_bins is None:
        rows = execute(con, "predictors.run_k_bins", {"run_id": run_id}).fetchall()  # fetchall: DuckDB 2.0
        k_bins = int(rows[0][0]) if rows and rows[0][0] else 4  # refuses register() after a partial fetch
    rows = pl.from_arrow(fetch_arrow(con, "predictors.predictions_with_results", {"run_id": run_id}))
    probed = bool(rows["in_probe"].any()) if not rows.is_empty() else False
    probe_rows = int(rows["in_probe"].sum()) if probed else 0
    if probed:  # scored on the requests the probe did not run, with and without its calibration
        rows = rows.filter(~pl.col("in_probe"))
    if rows.is_empty():
        return None
    true = rows["output_tokens"].to_numpy().astype(np.float64)
    metrics = prediction_metrics(true, rows["predicted_tokens"].to_numpy().astype(np.float64), k_bins)
    raw = prediction_metrics(true, rows["uncalibrated_tokens"].to_numpy().astype(np.float64), k_bins)
    if probed:
        metrics["without_probe"] = {key: raw[key] for key in WITHOUT_PROBE_KEYS}
    names = sorted(rows["predictor"].drop_nulls().unique().to_list())
    metrics["predictor"] = ", ".join(names) + (" + probe" if probed else "")
    from batchbin.predictors.registry import train_rows_of

    trained = [train_rows_of(con, name) for name in names]
    metrics["n_test"] = metrics["n"]  # this run's requests, predicted and then generated
    metrics["n_train"] = sum(trained) if trained and all(t is not None for t in trained) else None
    metrics["honesty"] = predictor_honesty(con, run_id, names, metrics, raw, probe_rows)
    return metrics


def predictor_honesty(con, run_id: str, names: list[str], planned: dict, raw: dict, probe_rows: int) -> dict:
    """What a report says of the run's predictor: which one and why (predictor_choices), what it
    was trained on, how many rows, its held-out metrics; whether a probe ran and why
    (probe_choices); and on this run's finished requests (the probe's left out) Kendall tau,
    Spearman, k=4 bin accuracy and mean absolute error of the lengths the schedule used
    (`planned`: calibrated where a probe ran) and of the predictor's own numbers (`raw`)."""
    from batchbin.predictors.registry import predictor_origin

    model = fetch_one(con, "predictors.run_model", {"run_id": run_id})
    choice = fetch_one(con, "predictors.choice_of_run", {"run_id": run_id})
    probe = fetch_one(con, "predictors.probe_choice_of_run", {"run_id": run_id})
    origins = [predictor_origin(con, name, model[0] if model else None) for name in names]
    return {
        "predictor": ", ".join(names),
        "why": choice[1] if choice else None,
        "origins": [origin for origin in origins if origin is not None],
        "probe_requests": probe_rows,
        "probe_why": probe[1] if probe else None,
        "scored_requests": planned["n"],
        "planned": {key: planned[key] for key in WITHOUT_PROBE_KEYS},
        "raw": {key: raw[key] for key in WITHOUT_PROBE_KEYS},
    }
