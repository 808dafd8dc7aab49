"""The in-job probe: a few of the job's own requests run first, and their real output lengths
calibrate the predictor for the rest of the job, in the same engine.

A predictor trained elsewhere (the shipped one learnt ChatGPT's answers on ShareGPT) ranks a
model's requests only roughly, and sizes them worse: the served model may answer in a tenth of
the tokens, or run to its limit, and a job's templates each have their own typical length. The
probe measures both on the job itself:

1. scale and shift: log1p(real) ~ scale * log1p(predicted) + shift over the whole probe
   (calibrate.fit_log_linear), which fixes the size and keeps the predictor's ranking;
2. a template offset: requests that share a prompt template (the same leading tokens:
   `template_groups`) answer alike, so the mean residual of a template's probe requests moves
   every request of that template, shrunk towards 0 by n / (n + PRIOR_WEIGHT) when it has few.

    calibration = fit_probe(predicted, real, groups)          # the probe's rows
    calibrated = calibration.apply(predicted, groups, limits)  # every other request

Which requests probe (`sql/probe.sql`): a fraction of the job (PROBE_FRACTION by default, but
at least one request of every template while that stays within MAX_PROBE_FRACTION), spread
over the templates and the predicted length quartiles, each request's turn decided by a hash of
its id (a re-run picks the same ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from batchbin.predictors.calibrate import MIN_PROBE, fit_log_linear

PROBE_FRACTION = 0.02     # of the job's requests
# The probe runs inside the job's first wave, the engine kept full with the job in token order
# until the probe's longest request has finished: on evals-mix (600 requests, max_num_seqs 64,
# AMD EPYC Zen 4) that was 512 of the job's 2,084 steps, with 63.9 sequences running on average,
# and the job took no more steps than without a probe (2,103). What the calibration can reorder
# is what has not been handed to vLLM by then, so "auto" probes jobs of PROBE_MIN_WAVES engine
# waves or more.
PROBE_MIN_WAVES = 4
MAX_PROBE_FRACTION = 0.1  # one request of every template, but never more than this of the job
MAX_PROBE = 4096          # no probe is larger: by then the calibration has all it needs
# Chosen on evals-mix (1,200 requests of 54 tasks, docs/predictor.md): a template offset counts its
# probe rows against one row of the global fit (0.5 did as well, 2 and 4 worse), and templates
# are runs sharing 8 tokens beyond the job's common prefix (56 groups for the 54 tasks; 16, 24,
# 32, 64 tokens split tasks apart and ranked worse).
PRIOR_WEIGHT = 1.0
TEMPLATE_TOKENS = 8


def probe_size(requests: int, fraction: float, templates: int = 0, at_least: int = 0,
               at_most: int | None = None) -> int:
    """How many requests probe a job of `requests` with `templates` template groups:
    ceil(fraction * requests), raised to one request a template and to `at_least` as long as
    that stays within MAX_PROBE_FRACTION of the job (what a template's offset needs most is its
    first row), at most MAX_PROBE and `at_most`; 0 when that is fewer than MIN_PROBE (too few to
    fit anything) or the job would be the probe itself."""
    if fraction <= 0 or requests <= 0:
        return 0
    within = math.floor(MAX_PROBE_FRACTION * requests)
    size = max(math.ceil(fraction * requests), min(templates, within), min(at_least, within))
    size = min(MAX_PROBE, size, at_most if at_most is not None else MAX_PROBE)
    return size if MIN_PROBE <= size < requests else 0


@dataclass
class ProbeCalibration:
    """What a probe taught: log1p(tokens) -> scale * log1p(predicted) + shift + offset[group]."""

    scale: float = 1.0
    shift: float = 0.0
    offsets: dict[int, float] = field(default_factory=dict)
    probe_rows: int = 0

    def apply(self, predicted, groups, limits) -> np.ndarray:
        """Calibrated tokens of requests with these predictions, template groups and
        max_tokens (each clipped to [1, its limit])."""
        predicted = np.log1p(np.maximum(np.asarray(predicted, dtype=np.float64), 0.0))
        offset = np.array([self.offsets.get(int(g), 0.0) for g in groups], dtype=np.float64)
        out = np.expm1(self.scale * predicted + self.shift + offset)
        return np.clip(out, 1.0, np.maximum(1.0, np.asarray(limits, dtype=np.float64)))

    def summary(self) -> dict:
        return {"probe_rows": self.probe_rows, "scale": round(self.scale, 4), "shift": round(self.shift, 4),
                "templates": len(self.offsets)}


def fit_probe(predicted, real, groups, prior_weight: float = PRIOR_WEIGHT) -> ProbeCalibration:
    """The calibration a probe's predicted and real output tokens give (module doc); `groups`:
    each probe row's template group."""
    predicted = np.asarray(predicted, dtype=np.float64)
    real = np.asarray(real, dtype=np.float64)
    groups = np.asarray(groups)
    if not (len(predicted) == len(real) == len(groups)):
        raise ValueError(f"{len(predicted)} predictions, {len(real)} real lengths, {len(groups)} groups")
    scale, shift = fit_log_linear(predicted, real)
    residual = np.log1p(np.maximum(real, 0.0)) - (scale * np.log1p(np.maximum(predicted, 0.0)) + shift)
    offsets = {}
    for group in np.unique(groups):
        mine = residual[groups == group]
        offsets[int(group)] = float(mine.sum() / (len(mine) + prior_weight))
    return ProbeCalibration(scale, shift, offsets, len(predicted))
