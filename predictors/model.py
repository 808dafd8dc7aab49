"""The output-length predictor: a small MLP over request features, predicting log1p(output tokens).

A prediction in tokens is expm1 of the output, clipped to [1, max_tokens]. The model carries the
feature standardisation (mean, std) and a linear calibration of its output (scale, shift on
log1p tokens) as buffers, so a checkpoint holds all it needs.

The loss is mse_weight * (squared error on log1p tokens) + rank_weight * (pairwise logistic
loss, as RankNet: for every pair of a minibatch whose true lengths differ, softplus of minus the
score difference in the true order). With rank_weight alone the scores rank but have no scale;
the trainer then fits the calibration on the training rows (least squares on log1p tokens).

    from batchbin.predictors.model import LengthPredictor
    predictor = LengthPredictor.load("models/length-....pt")
    tokens = predictor.predict([{"prompt": "Name one colour.", "max_tokens": 64}])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from batchbin.predictors.features import FEATURES_VERSION, FeatureSettings, feature_matrix, n_features


@dataclass
class PredictorConfig:
    n_features: int = 280      # set from FeatureSettings by the trainer
    n_hidden: int = 128
    n_layers: int = 2          # hidden layers
    dropout: float = 0.2
    clamp: float = 6.0         # standardised features are clipped to +-clamp (unseen values stay sane)
    mse_weight: float = 1.0    # regression on log1p(output tokens)
    rank_weight: float = 0.0   # pairwise ranking loss (0: regression only)


# Tiny CPU config for tests and laptops: what it changes from PredictorConfig.
TINY_CONFIG = dict(
    n_hidden=32,    # a quarter of the width: a few hundred rows need no more
    n_layers=1,     # one hidden layer trains in well under a second on a CPU
    dropout=0.0,    # too little data and too few steps for dropout to help
)


class Block(nn.Module):
    """Linear -> GELU -> dropout."""

    def __init__(self, n_in: int, n_out: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(n_in, n_out)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(F.gelu(self.fc(x)))


class LengthMLP(nn.Module):
    """Standardise the features, hidden blocks, one linear output: log1p(output tokens)."""

    def __init__(self, config: PredictorConfig):
        super().__init__()
        self.config = config
        self.register_buffer("x_mean", torch.zeros(config.n_features))
        self.register_buffer("x_std", torch.ones(config.n_features))
        self.register_buffer("out_scale", torch.ones(()))   # calibration of the output:
        self.register_buffer("out_shift", torch.zeros(()))  # log1p tokens = scale * raw + shift
        widths = [config.n_features] + [config.n_hidden] * config.n_layers
        self.blocks = nn.ModuleList(Block(a, b, config.dropout) for a, b in zip(widths, widths[1:]))
        self.head = nn.Linear(widths[-1], 1)

    def set_standardisation(self, x: torch.Tensor, target: torch.Tensor) -> None:
        """Feature mean/std from the training rows; the output bias starts at the mean target."""
        self.x_mean.copy_(x.mean(dim=0))
        std = x.std(dim=0, unbiased=False)
        # a column constant in training (max_tokens of ShareGPT rows, say) is ignored: its weights
        # never learnt what a different value means
        self.x_std.copy_(torch.where(std < 1e-3, torch.full_like(std, float("inf")), std))
        with torch.no_grad():
            self.head.bias.fill_(float(target.mean()))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The uncalibrated score (what the loss trains)."""
        h = ((x - self.x_mean) / self.x_std).clamp(-self.config.clamp, self.config.clamp)
        for block in self.blocks:
            h = block(h)
        return self.head(h).squeeze(-1)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None):
        """(calibrated log1p tokens, loss on the raw score or None)."""
        score = self.raw(x)
        out = self.out_scale * score + self.out_shift
        if target is None:
            return out, None
        loss = score.new_zeros(())
        if self.config.mse_weight:
            loss = loss + self.config.mse_weight * F.mse_loss(score, target)
        if self.config.rank_weight:
            loss = loss + self.config.rank_weight * pairwise_rank_loss(score, target)
        return out, loss


def pairwise_rank_loss(score: torch.Tensor, target: torch.Tensor, min_gap: float = 0.05) -> torch.Tensor:
    """Mean softplus(-(s_i - s_j)) over the pairs with target_i > target_j + min_gap (RankNet)."""
    better = (target[:, None] - target[None, :]) > min_gap
    if not better.any():
        return score.new_zeros(())
    return F.softplus(-(score[:, None] - score[None, :])[better]).mean()


def to_tokens(log_tokens: np.ndarray, max_tokens: np.ndarray) -> np.ndarray:
    """Model output (log1p tokens) to tokens, clipped to [1, max_tokens]."""
    tokens = np.expm1(np.asarray(log_tokens, dtype=np.float64))
    return np.clip(tokens, 1.0, np.maximum(1.0, np.asarray(max_tokens, dtype=np.float64)))


@dataclass
class LengthPredictor:
    """A trained model with its feature settings: what a checkpoint file holds."""

    model: LengthMLP
    features: FeatureSettings
    version: str = ""
    metrics: dict = field(default_factory=dict)
    train_rows: int = 0

    @torch.no_grad()
    def predict(self, requests: list[dict]) -> np.ndarray:
        """Predicted output tokens of each request, in [1, max_tokens] (request['max_tokens'] is set)."""
        if not requests:
            return np.zeros(0)
        x = torch.from_numpy(feature_matrix(requests, self.features))
        self.model.eval()
        out, _ = self.model(x)
        return to_tokens(out.numpy(), np.array([r["max_tokens"] for r in requests]))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({
            "model_args": asdict(self.model.config),
            "state_dict": self.model.state_dict(),
            "features": asdict(self.features),
            "version": self.version,
            "metrics": self.metrics,
            "train_rows": self.train_rows,
            "target": "log1p(output_tokens)",
        }, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LengthPredictor":
        checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
        features = FeatureSettings(**checkpoint["features"])
        if features.version != FEATURES_VERSION:
            raise ValueError(f"{path} was trained on features version {features.version}, this BatchBin "
                             f"computes version {FEATURES_VERSION}; retrain with `batchbin train-predictor`")
        config = PredictorConfig(**checkpoint["model_args"])
        if config.n_features != n_features(features):
            raise ValueError(f"{path}: model expects {config.n_features} features, settings give {n_features(features)}")
        model = LengthMLP(config)
        model.load_state_dict(checkpoint["state_dict"])
        model.eval()
        return cls(model, features, checkpoint.get("version", ""), checkpoint.get("metrics") or {},
                   int(checkpoint.get("train_rows") or 0))
