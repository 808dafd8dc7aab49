"""How good length predictions are: the metrics of the trainer's validation set and of run reports.

    prediction_metrics(true_tokens, predicted_tokens, k_bins=4)
    run_prediction_quality(con, run_id)   # a run's predictions against its results

Metrics:
  mae                      mean absolute error in tokens;
  spearman                 rank correlation (what ordering and binning depend on); None when
                           either side is constant;
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

from batchbin.sqlfiles import run


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    result = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        result[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation, or None if it is undefined (fewer than 2 rows, a constant side)."""
    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


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
        return {"n": 0, "k_bins": k_bins, "mae": None, "spearman": None, "bin_accuracy": None,
                "bin_accuracy_true_edges": None, "mean_true": None, "mean_predicted": None}
    true_bins = quantile_bins(true, true, k_bins)
    rho = spearman(true, pred)
    return {
        "n": int(len(true)),
        "k_bins": int(k_bins),
        "mae": round(float(np.abs(true - pred).mean()), 3),
        "spearman": None if rho is None else round(rho, 4),
        "bin_accuracy": round(float((quantile_bins(pred, pred, k_bins) == true_bins).mean()), 4),
        "bin_accuracy_true_edges": round(float((quantile_bins(pred, true, k_bins) == true_bins).mean()), 4),
        "mean_true": round(float(true.mean()), 3),
        "mean_predicted": round(float(pred.mean()), 3),
    }


def run_prediction_quality(con, run_id: str, k_bins: int | None = None) -> dict | None:
    """Metrics of a run's predictions against its finished results, or None if nothing to compare.

    k_bins defaults to the run's own k_bins (runs.config), else 4. The result names the
    predictor(s) that made the predictions.
    """
    if k_bins is None:
        rows = run(con, "predictors.run_k_bins", {"run_id": run_id}).fetchall()  # fetchall: DuckDB 2.0
        k_bins = int(rows[0][0]) if rows and rows[0][0] else 4  # refuses register() after a partial fetch
    rows = run(con, "predictors.predictions_with_results", {"run_id": run_id}).fetchall()
    if not rows:
        return None
    true = np.array([r[0] for r in rows], dtype=np.float64)
    pred = np.array([r[1] for r in rows], dtype=np.float64)
    metrics = prediction_metrics(true, pred, k_bins)
    metrics["predictor"] = ", ".join(sorted({r[2] for r in rows if r[2] is not None}))
    return metrics
