"""The scale-and-shift part of calibrating a length predictor on a probe's real lengths.

    scale, shift = fit_log_linear(probe_predicted, probe_real)   # tokens of the probe's requests

A predictor trained elsewhere (the shipped ShareGPT one, or another model's) may rank a
model's requests and yet size them wrongly: the model may answer in half the tokens, or run to
its limit. A linear map on log1p tokens, fitted by least squares on the probe (real against
predicted), fixes the scale and keeps the ranking when its slope is positive; with fewer than
MIN_PROBE rows, or a slope that would invert the order, only the shift is fitted (the median
log ratio), which moves every prediction by the same factor. The in-job probe
(predictors/probe.py) adds an offset per prompt template on top.
"""

from __future__ import annotations

import numpy as np

MIN_PROBE = 8         # fewer rows: shift only
MIN_SLOPE = 0.05      # a flatter (or negative) fitted slope: shift only, keep the ranking


def fit_log_linear(predicted, real) -> tuple[float, float]:
    """(scale, shift) with log1p(real) ~ scale * log1p(predicted) + shift (module doc's rules)."""
    p = np.log1p(np.maximum(np.asarray(predicted, dtype=np.float64), 0.0))
    r = np.log1p(np.maximum(np.asarray(real, dtype=np.float64), 0.0))
    if p.shape != r.shape:
        raise ValueError(f"{len(p)} predictions but {len(r)} real lengths")
    if len(p) == 0:
        return 1.0, 0.0
    if len(p) >= MIN_PROBE and p.std() > 1e-9:
        scale, shift = np.polyfit(p, r, 1)
        if scale >= MIN_SLOPE:
            return float(scale), float(shift)
    return 1.0, float(np.median(r - p))
