"""Train the output-length predictor: on one model's finished runs (then register it), or on
ShareGPT's real answers (the predictor BatchBin ships).

    from batchbin.store import db
    from batchbin.predictors.train import train_predictor, train_from_sharegpt
    con = db.connect("batchbin.duckdb")
    print(train_predictor(con, "models"))                  # newest run's model; the `predictors` row
    print(train_from_sharegpt("predictors/default/sharegpt.pt"))   # the shipped checkpoint's metrics

    batchbin train-predictor --db batchbin.duckdb          # the same from the command line
    batchbin train-predictor --from sharegpt               # retrain the shipped predictor (~5 min)

`fit` is a straight loop: seed, data (a fixed split by a hash of the request id, or of the
ShareGPT conversation, so a row stays on its side across retrainings), new model, AdamW over
minibatches, an evaluation on the validation rows after every epoch, early stop when it no
longer improves, the best epoch's weights kept, the output calibrated on the training rows
(least squares on log1p tokens), then measured.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

from batchbin.errors import BatchBinError
from batchbin.predictors.evaluate import prediction_metrics
from batchbin.predictors.features import FeatureSettings, feature_matrix, n_features
from batchbin.predictors.model import LengthMLP, LengthPredictor, PredictorConfig, to_tokens
from batchbin.predictors.registry import model_key, register_predictor
from batchbin.store.queries import execute, fetch_arrow

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

# Quick retraining after a run, or on the deployment's schedule (flows/retrain.py): the newest
# QUICK_MAX_ROWS finished requests and fewer epochs, so it costs seconds and not the run's time.
QUICK_TRAIN_CONFIG = dict(
    learning_rate=3e-3,  # bigger steps: converges in tens of epochs on a few thousand rows
    max_epochs=40,       # a bound on the time, whatever the data
    patience=8,          # stop soon once the validation loss is flat
)
QUICK_MAX_ROWS = 20_000

# The shipped ShareGPT predictor: chosen on the validation conversations (docs/predictor.md).
SHAREGPT_MODEL_CONFIG = dict(
    dropout=0.5,       # 34k rows overfit within a few epochs at 0.2
    mse_weight=0.0,    # ranking loss only: it ranked better than regression on log length, and
    rank_weight=1.0,   # the calibration after training gives the scores their token scale
)
SHAREGPT_TRAIN_CONFIG = dict(
    learning_rate=3e-4,  # slower steps with the larger dropout: a better validation optimum
    max_epochs=80,
    patience=10,
)
SHAREGPT_FEATURES = FeatureSettings()


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


def training_rows(con, default_max_tokens: int, model: str | None = None, max_rows: int | None = None) -> list[dict]:
    """Finished requests without error, as dicts (sql/predictors.sql training_rows): of the runs
    of `model` (a model_key), or of every run when None; with `max_rows`, the newest that many
    (by when they finished), still in the query's order."""
    rows = pl.from_arrow(fetch_arrow(con, "predictors.training_rows", {"default_max_tokens": default_max_tokens}))
    if model is not None:  # model_key looks at the file system: once per model, not once per row
        names = [name for name in rows.get_column("model").unique().to_list() if model_key(name) == model]
        rows = rows.filter(pl.col("model").is_in(names))
    if max_rows is not None and rows.height > max_rows:
        rows = (rows.with_row_index("query_order").sort("finished_at", "query_order", nulls_last=False)
                .tail(max_rows).sort("query_order").drop("query_order"))
    return rows.drop("finished_at").to_dicts()


def newest_run_model(con) -> str | None:
    """The model_key of the newest run that has finished results (what to train for by default)."""
    rows = execute(con, "predictors.newest_trained_model").fetchall()
    return model_key(rows[0][0]) if rows and rows[0][0] else None


def data_fingerprint(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(f"{row.get('run_id', '')}\x1f{row['request_id']}\x1f{row['output_tokens']}\x1e".encode())
    return digest.hexdigest()


def targets(rows: list[dict]) -> torch.Tensor:
    return torch.log1p(torch.tensor([float(max(0, r["output_tokens"])) for r in rows]))


def fit(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
        config: PredictorConfig, tc: TrainConfig, seed: int = 0) -> tuple[LengthMLP, dict]:
    """Train a LengthMLP (the straight loop of the module doc); returns it and what happened.

    One thread: the MLP's steps are too small to split, and two threads on a busy 2-core machine
    made an epoch 20x slower (measured: 20 s against 1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(x_train, y_train, x_val, y_val, config, tc, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(x_train, y_train, x_val, y_val, config: PredictorConfig, tc: TrainConfig, seed: int):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = LengthMLP(config)
    model.set_standardisation(x_train, y_train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)
    best_loss, best_epoch, best_state, started = float("inf"), 0, copy.deepcopy(model.state_dict()), time.time()
    for epoch in range(1, tc.max_epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), tc.batch_size):
            batch = order[start:start + tc.batch_size]
            _, loss = model(x_train[batch], y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = _batched_loss(model, x_val, y_val, tc.batch_size)
        if val_loss < best_loss - 1e-4:
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
        if epoch == 1 or epoch % 10 == 0:
            log.info("epoch %d: val loss %.4f (best %.4f at %d), %.0f s", epoch, val_loss, best_loss,
                     best_epoch, time.time() - started)
        if epoch - best_epoch >= tc.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():  # calibration: log1p tokens = scale * score + shift, least squares on train
        score = model.raw(x_train).double()
        design = torch.stack([score, torch.ones_like(score)], dim=1)
        solution = torch.linalg.lstsq(design, y_train.double()[:, None]).solution[:, 0]
        model.out_scale.fill_(float(solution[0]))
        model.out_shift.fill_(float(solution[1]))
    return model, {"epochs": epoch, "best_epoch": best_epoch, "val_loss": round(best_loss, 5),
                   "seconds": round(time.time() - started, 2), "seed": seed}


def _batched_loss(model: LengthMLP, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Validation loss as in training (pairs within minibatches of a fixed order)."""
    losses = [model(x[s:s + batch_size], y[s:s + batch_size])[1].item() for s in range(0, len(x), batch_size)]
    return float(np.mean(losses)) if losses else float("inf")


def baseline_metrics(train_true: np.ndarray, test_rows: list[dict], test_true: np.ndarray, k_bins: int) -> dict:
    """The two baselines of every evaluation: the training mean (a constant), and prompt length
    alone (the prompt's token count as the score: tau and bin accuracy read only its order)."""
    mean = prediction_metrics(test_true, np.full(len(test_true), float(train_true.mean())), k_bins)
    prompt = prediction_metrics(test_true, np.array([float(r.get("prompt_tokens") or 0) for r in test_rows]), k_bins)
    return {"baseline_mean_mae": mean["mae"], "baseline_prompt_len_kendall_tau": prompt["kendall_tau"],
            "baseline_prompt_len_bin_accuracy_k4": prompt["bin_accuracy_k4"]}


def train_predictor(con, models_dir: str, default_max_tokens: int = 256, seed: int = 0, *,
                    model: str | None = None, model_config: dict | None = None,
                    train_config: dict | None = None, features: FeatureSettings | None = None,
                    max_rows: int | None = None) -> dict:
    """Train on the finished runs of one model (`model`: a model name or path, default the model
    of the newest run with results), save the checkpoint under models_dir, register it for that
    model. model_config / train_config override fields of PredictorConfig / TrainConfig (e.g.
    TINY_CONFIG, TINY_TRAIN_CONFIG, QUICK_TRAIN_CONFIG); `max_rows`: learn from the newest that
    many rows only. Returns the new `predictors` row as a dict."""
    features = features or FeatureSettings()
    config = replace(PredictorConfig(n_features=n_features(features)), **(model_config or {}))
    tc = replace(TrainConfig(), **(train_config or {}))
    key = model_key(model) if model else newest_run_model(con)

    rows = training_rows(con, default_max_tokens, key, max_rows) if key else []
    if len(rows) < MIN_TRAIN_ROWS:
        raise NotEnoughTrainingData(
            f"training the length predictor needs at least {MIN_TRAIN_ROWS} finished requests "
            f"without error, and the database has {len(rows)}{f' for model {key}' if key else ''}; "
            "run a batch job first (`batchbin run prompts.jsonl`), then `batchbin train-predictor` again"
        )
    x = torch.from_numpy(feature_matrix(rows, features))
    y = targets(rows)
    max_tokens = np.array([r["max_tokens"] for r in rows], dtype=np.float64)
    val = split_mask([r["request_id"] for r in rows], tc.val_fraction)
    train_idx, val_idx = torch.from_numpy(np.flatnonzero(~val)), torch.from_numpy(np.flatnonzero(val))
    net, info = fit(x[train_idx], y[train_idx], x[val_idx], y[val_idx], config, tc, seed)

    from batchbin.predictors.predict import fallback_lengths

    with torch.no_grad():
        val_pred = to_tokens(net(x[val_idx])[0].numpy(), max_tokens[val])
    val_true = np.expm1(y[val_idx].numpy().astype(np.float64))
    metrics = prediction_metrics(val_true, val_pred, tc.k_bins)
    val_rows = [row for row, held in zip(rows, val) if held]
    train_true = np.expm1(y[train_idx].numpy().astype(np.float64))
    fallback = prediction_metrics(val_true, fallback_lengths(val_rows, float(np.median(train_true))), tc.k_bins)
    metrics.update({
        "model": key, "n_train": int((~val).sum()), "n_test": int(val.sum()),
        "val_rows": int(val.sum()), "fit_rows": int((~val).sum()), **info,
        **baseline_metrics(train_true, val_rows, val_true, tc.k_bins),
        "fallback_mae": fallback["mae"], "fallback_spearman": fallback["spearman"],
        "fallback_kendall_tau": fallback["kendall_tau"], "fallback_bin_accuracy": fallback["bin_accuracy"],
    })
    log.info("trained on %d rows of %s, validation: %s", len(train_idx), key, metrics)

    settings_key = f"{asdict(config)}{asdict(tc)}{asdict(features)}{seed}{default_max_tokens}{key}"
    short = hashlib.sha256((data_fingerprint(rows) + settings_key).encode()).hexdigest()[:8]
    version = f"mlp-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{short}"
    path = Path(models_dir).resolve() / f"length-{version}.pt"
    LengthPredictor(net, features, version, metrics, len(rows)).save(path)
    return register_predictor(con, version, "mlp", str(path), len(rows), metrics, key)


def train_from_sharegpt(out_path: str | Path, seed: int = 0, *, limit: int | None = None,
                        model_config: dict | None = None, train_config: dict | None = None,
                        features: FeatureSettings | None = None, rows: list[dict] | None = None) -> dict:
    """Train the shipped predictor on ShareGPT's real answers (predictors/sharegpt.py: the
    predictor's side of the split; train part to fit, val to stop early, test to measure) and
    save it at out_path; returns its metrics. `limit` reads only the first conversations (tests);
    `rows` gives the data instead of reading and tokenizing it."""
    from batchbin.predictors.sharegpt import TRAIN_SHARE, default_tokenizer, length_rows

    features = features or SHAREGPT_FEATURES
    config = replace(PredictorConfig(n_features=n_features(features)), **{**SHAREGPT_MODEL_CONFIG, **(model_config or {})})
    tc = replace(TrainConfig(), **{**SHAREGPT_TRAIN_CONFIG, **(train_config or {})})
    started = time.time()
    rows = rows if rows is not None else length_rows(default_tokenizer(), limit)
    parts = {name: [r for r in rows if r["part"] == name] for name in ("train", "val", "test")}
    if len(parts["train"]) < MIN_TRAIN_ROWS or not parts["val"] or not parts["test"]:
        raise NotEnoughTrainingData(f"ShareGPT gave {len(parts['train'])} training rows, "
                                    f"{len(parts['val'])} validation and {len(parts['test'])} test rows")
    x = {name: torch.from_numpy(feature_matrix(part, features)) for name, part in parts.items()}
    y = {name: targets(part) for name, part in parts.items()}
    net, info = fit(x["train"], y["train"], x["val"], y["val"], config, tc, seed)
    with torch.no_grad():
        test_pred = to_tokens(net(x["test"])[0].numpy(), np.array([r["max_tokens"] for r in parts["test"]]))
    test_true = np.array([r["output_tokens"] for r in parts["test"]], dtype=np.float64)
    train_true = np.array([r["output_tokens"] for r in parts["train"]], dtype=np.float64)
    metrics = prediction_metrics(test_true, test_pred, tc.k_bins)
    metrics.update({
        "model": "SmolLM2-135M-Instruct", "data": "sharegpt", "n_train": len(parts["train"]),
        "n_val": len(parts["val"]), "n_test": len(parts["test"]), "train_share": TRAIN_SHARE, **info,
        **baseline_metrics(train_true, parts["test"], test_true, tc.k_bins),
        "total_seconds": round(time.time() - started, 1),
    })
    digest = hashlib.sha256((data_fingerprint(rows) + f"{asdict(config)}{asdict(tc)}{asdict(features)}{seed}").encode())
    version = f"sharegpt-{digest.hexdigest()[:8]}"
    LengthPredictor(net, features, version, metrics, len(parts["train"])).save(out_path)
    log.info("ShareGPT predictor %s: %s", version, metrics)
    return {"version": version, "path": str(out_path), "metrics": metrics}
