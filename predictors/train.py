"""Train the output-length predictor on the real lengths of every finished run, and register it.

    from batchbin import db
    from batchbin.predictors.train import train_predictor
    con = db.connect("batchbin.duckdb")
    print(train_predictor(con, "models"))      # the new `predictors` row

A straight loop: seed, data (a fixed train/validation split by a hash of the request id, so a
request stays on its side across retrainings and across runs that repeat it), new model, AdamW
over minibatches, an evaluation on the validation rows after every epoch, early stop when it no
longer improves, then the best epoch's weights are kept, measured and saved.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from batchbin.errors import BatchBinError
from batchbin.predictors.evaluate import prediction_metrics
from batchbin.predictors.features import FeatureSettings, feature_matrix, n_features
from batchbin.predictors.model import LengthMLP, LengthPredictor, PredictorConfig, to_tokens
from batchbin.predictors.registry import register_predictor
from batchbin.sqlfiles import run

log = logging.getLogger(__name__)

MIN_TRAIN_ROWS = 20


class NotEnoughTrainingData(BatchBinError):
    """Too few finished requests to train a length predictor."""


@dataclass
class TrainConfig:
    val_fraction: float = 0.2     # share of request ids held out for validation
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 256
    max_epochs: int = 300
    patience: int = 25            # epochs without a better validation loss before stopping
    k_bins: int = 4               # bins of the bin-accuracy metric


# Tiny CPU config for tests and laptops: what it changes from TrainConfig.
TINY_TRAIN_CONFIG = dict(
    learning_rate=3e-3,  # bigger steps: a few hundred rows, few minibatches per epoch
    max_epochs=120,      # they converge long before 300 epochs
    patience=15,         # stop sooner once the validation loss is flat
)


def is_validation(request_id: str, fraction: float) -> bool:
    """Deterministic split: a request id is in validation when its hash falls below `fraction`."""
    digest = int.from_bytes(hashlib.blake2b(str(request_id).encode(), digest_size=8).digest(), "little")
    return digest / 2**64 < fraction


def split_mask(request_ids: list[str], fraction: float) -> np.ndarray:
    """Validation mask by id hash; with very few ids, the lowest hashes, so both sides are non-empty."""
    mask = np.array([is_validation(rid, fraction) for rid in request_ids], dtype=bool)
    distinct = sorted(set(request_ids), key=lambda rid: hashlib.blake2b(str(rid).encode(), digest_size=8).digest())
    if len(distinct) >= 2 and (mask.all() or not mask.any()):
        held = set(distinct[: max(1, round(fraction * len(distinct)))])
        mask = np.array([rid in held for rid in request_ids], dtype=bool)
    return mask


def training_rows(con, default_max_tokens: int) -> list[dict]:
    """Finished requests without error of every run, as dicts (sql/predictors.sql training_rows)."""
    cursor = run(con, "predictors.training_rows", {"default_max_tokens": default_max_tokens})
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def data_fingerprint(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row['run_id']}\x1f{row['request_id']}\x1f{row['output_tokens']}\x1e".encode())
    return digest.hexdigest()


def train_predictor(con, models_dir: str, default_max_tokens: int = 256, seed: int = 0, *,
                    model_config: dict | None = None, train_config: dict | None = None,
                    features: FeatureSettings | None = None) -> dict:
    """Train on every finished run, save the checkpoint under models_dir, register it.

    model_config / train_config override fields of PredictorConfig / TrainConfig (e.g.
    TINY_CONFIG, TINY_TRAIN_CONFIG). Returns the new `predictors` row as a dict.
    """
    features = features or FeatureSettings()
    config = replace(PredictorConfig(n_features=n_features(features)), **(model_config or {}))
    tc = replace(TrainConfig(), **(train_config or {}))

    # data
    rows = training_rows(con, default_max_tokens)
    if len(rows) < MIN_TRAIN_ROWS:
        raise NotEnoughTrainingData(
            f"training the length predictor needs at least {MIN_TRAIN_ROWS} finished requests "
            f"without error, and the database has {len(rows)}; run a batch job first "
            "(`batchbin run prompts.jsonl`), then `batchbin train-predictor` again"
        )
    x = torch.from_numpy(feature_matrix(rows, features))
    y = torch.log1p(torch.tensor([float(max(0, r["output_tokens"])) for r in rows]))
    max_tokens = np.array([r["max_tokens"] for r in rows], dtype=np.float64)
    val = split_mask([r["request_id"] for r in rows], tc.val_fraction)
    train_idx = torch.from_numpy(np.flatnonzero(~val))
    val_idx = torch.from_numpy(np.flatnonzero(val))
    x_train, y_train, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]

    # model
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = LengthMLP(config)
    model.set_standardisation(x_train, y_train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)

    # loop
    best_loss, best_epoch, best_state, started = float("inf"), 0, copy.deepcopy(model.state_dict()), time.time()
    for epoch in range(1, tc.max_epochs + 1):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for start in range(0, len(order), tc.batch_size):
            batch = order[start:start + tc.batch_size]
            _, loss = model(x[batch], y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            _, train_loss = model(x_train, y_train)
            _, val_loss = model(x_val, y_val)
        if val_loss.item() < best_loss - 1e-4:
            best_loss, best_epoch, best_state = val_loss.item(), epoch, copy.deepcopy(model.state_dict())
        if epoch == 1 or epoch % 20 == 0:
            log.info("epoch %d: train loss %.4f, val loss %.4f (best %.4f at %d)",
                     epoch, train_loss.item(), val_loss.item(), best_loss, best_epoch)
        if epoch - best_epoch >= tc.patience:
            break
    model.load_state_dict(best_state)
    model.eval()

    # measure: the model and, for comparison, the fallback rule on the same validation rows
    from batchbin.predictors.predict import fallback_lengths

    with torch.no_grad():
        val_pred = to_tokens(model(x_val)[0].numpy(), max_tokens[val])
    val_true = np.expm1(y_val.numpy().astype(np.float64))
    metrics = prediction_metrics(val_true, val_pred, tc.k_bins)
    val_rows = [row for row, held in zip(rows, val) if held]
    base = float(np.median(np.expm1(y_train.numpy())))
    fallback = prediction_metrics(val_true, fallback_lengths(val_rows, base), tc.k_bins)
    metrics.update({
        "val_rows": int(val.sum()), "fit_rows": int((~val).sum()), "epochs": epoch, "best_epoch": best_epoch,
        "val_loss": round(best_loss, 5), "seconds": round(time.time() - started, 2), "seed": seed,
        "fallback_mae": fallback["mae"], "fallback_spearman": fallback["spearman"],
        "fallback_bin_accuracy": fallback["bin_accuracy"],
    })
    log.info("trained on %d rows, validation: %s", len(train_idx), metrics)

    # save and register
    settings_key = f"{asdict(config)}{asdict(tc)}{asdict(features)}{seed}{default_max_tokens}"
    short = hashlib.sha256((data_fingerprint(rows) + settings_key).encode()).hexdigest()[:8]
    version = f"mlp-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{short}"
    path = Path(models_dir).resolve() / f"length-{version}.pt"
    LengthPredictor(model, features, version, metrics, len(rows)).save(path)
    return register_predictor(con, version, "mlp", str(path), len(rows), metrics)
