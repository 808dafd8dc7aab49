"""Calibrate a length predictor to the model being served, from a probe: a few requests run first.

    from batchbin.predictors.calibrate import calibrate
    calibrated = calibrate(predictor, probe_predicted, probe_real)   # tokens of the probe
    calibrated.predict(requests)        # the rest of the job

A predictor trained elsewhere (the shipped ShareGPT one, or another model's) ranks a model's
requests better than it sizes them: the model may answer in half the tokens, or run to its
limit. A linear map on log1p tokens, fitted by least squares on the probe (real against
predicted), fixes the scale and keeps the ranking when its slope is positive; with fewer than
MIN_PROBE rows, or a slope that would invert the order, only the shift is fitted (the median
log ratio), which moves every prediction by the same factor.

How a flow should use it (not wired in: tasks/generate.py and flows/ belong to the pipeline):
generate the probe's 1-2% of requests first (a random sample, whole prefix groups), read their
real output tokens from `results`, call calibrate() with the predictions the run made for them,
write the calibrated predictions of the remaining requests, then schedule and generate those.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class CalibratedPredictor:
    """A predictor whose log1p output is mapped by scale * x + shift, clipped to [1, max_tokens]."""

    base: object          # anything with .predict(requests) -> tokens
    scale: float
    shift: float

    def predict(self, requests: list[dict]) -> np.ndarray:
        tokens = np.asarray(self.base.predict(requests), dtype=np.float64)
        out = np.expm1(self.scale * np.log1p(tokens) + self.shift)
        limits = np.array([max(1, r["max_tokens"]) for r in requests], dtype=np.float64)
        return np.clip(out, 1.0, limits)


def calibrate(predictor, probe_predicted, probe_real) -> CalibratedPredictor:
    """The predictor, calibrated on a probe's predicted and real output tokens."""
    scale, shift = fit_log_linear(probe_predicted, probe_real)
    return CalibratedPredictor(predictor, scale, shift)
