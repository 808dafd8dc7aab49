"""What one engine step costs, in seconds: the simulator's clock (batchbin/sim/simulator.py).

Two models of the same question, "how long does a step that computes these tokens take?":

- `LinearStepCost`, fitted on this machine's measured steps (the `engine_steps` trace of real
  runs): time = a + b * prefill tokens + c * decoded sequences + d * context tokens (+ e * KV
  tokens held, where the fit has them: see `kv_tokens`). The fit,
  the CPU it ran on and its error are kept in `data/cpu_step_costs.json` beside this module and
  refitted by `batchbin simulate fit`.
- `GpuStepCost`, from first principles for a named GPU and model size: a step reads the weights
  once and the KV cache of every scheduled sequence (bytes over HBM bandwidth) and does
  2 x parameters FLOPs per token plus attention (FLOPs over tensor throughput); the slower of
  the two, plus a fixed per-step overhead, is the step's time.

Pure Python: no torch, no vLLM.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from batchbin.errors import BatchBinError

GIB = 1024**3
FITTED_PATH = Path(__file__).parent / "data" / "cpu_step_costs.json"
# bytes per value of each dtype name vLLM takes ("float" is float32, "half" float16; "auto": the
# models BatchBin serves are bf16/fp16), and "fp32" as users write it
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "fp32": 4, "auto": 2}


@dataclass(frozen=True)
class StepWork:
    """The work of one engine step, as the simulator schedules it and `engine_steps` records it."""

    running: int            # sequences computed in the step
    prefill_tokens: int     # prompt tokens computed (chunked prefill)
    decode_tokens: int      # sequences that decoded one token
    context_tokens: int     # tokens already in the KV cache of the scheduled sequences
    attention_pairs: float = 0.0  # query-key pairs the step's attention computes (GPU model)
    # distinct tokens in the KV cache (blocks in use x block size): a prefix shared by many
    # sequences counts once here and once per sequence in context_tokens. Attention over a
    # shared prefix reads the same blocks again, which costs a CPU less (they stay in cache).
    kv_tokens: int = 0


class StepCost(Protocol):
    def seconds(self, work: StepWork) -> float: ...


# --- the fitted CPU model ------------------------------------------------------------------

FEATURES = ("prefill_tokens", "decode_tokens", "context_tokens", "kv_tokens")


@dataclass(frozen=True)
class LinearStepCost:
    """time = intercept + sum(coefficient * feature); fitted by least squares on measured steps."""

    intercept_s: float
    per_prefill_token_s: float
    per_decode_token_s: float
    per_context_token_s: float
    fitted_on: dict = field(default_factory=dict)  # CPU, engine settings, rows, error of the fit
    per_kv_token_s: float = 0.0  # fits of this machine (machine_fits.py); 0 in the shipped ones

    def seconds(self, work: StepWork) -> float:
        return (self.intercept_s + self.per_prefill_token_s * work.prefill_tokens
                + self.per_decode_token_s * work.decode_tokens + self.per_context_token_s * work.context_tokens
                + self.per_kv_token_s * work.kv_tokens)

    def kind(self) -> tuple:
        """The engine kind it was fitted on: (dtype, enforce_eager)."""
        return self.fitted_on.get("dtype"), self.fitted_on.get("enforce_eager")

    def save(self, path: Path = FITTED_PATH) -> Path:
        """Keep this fit in `path`, replacing an older fit of the same engine kind only."""
        fits = [fit for fit in read_fits(path) if fit.kind() != self.kind()] if path.is_file() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"fits": [asdict(fit) for fit in [*fits, self]]}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path = FITTED_PATH, dtype: str | None = None,
             enforce_eager: bool | None = None) -> "LinearStepCost":
        """The fit for this engine kind, else the first one kept (check `kind()` against yours)."""
        fits = read_fits(path)
        for fit in fits:
            if fit.kind() == (dtype, enforce_eager):
                return fit
        return fits[0]


def read_fits(path: Path = FITTED_PATH) -> list[LinearStepCost]:
    """Every step-cost fit kept in `path` (one per engine kind)."""
    if not path.is_file():
        raise BatchBinError(f"no fitted step costs at {path}; run `batchbin simulate fit --db DB` on a database "
                            "with measured runs")
    try:
        fits = [LinearStepCost(**values) for values in json.loads(path.read_text())["fits"]]
    except (TypeError, KeyError, ValueError) as error:
        raise BatchBinError(f"{path} is not a step-cost fit ({error}); fit again with `batchbin simulate fit`")
    if not fits:
        raise BatchBinError(f"{path} holds no step-cost fit; fit one with `batchbin simulate fit`")
    return fits


def _solve(rows: list[list[float]], targets: list[float], weights: list[float] | None = None) -> list[float]:
    """(Weighted) least squares by the normal equations (a handful of columns; Gaussian elimination)."""
    n = len(rows[0])
    w = weights or [1.0] * len(rows)
    a = [[sum(wk * r[i] * r[j] for r, wk in zip(rows, w)) for j in range(n)] for i in range(n)]
    b = [sum(wk * r[i] * t for r, t, wk in zip(rows, targets, w)) for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) < 1e-300:
            raise BatchBinError("the measured steps cannot separate the step-cost terms (a feature never varies)")
        a[col], a[pivot], b[col], b[pivot] = a[pivot], a[col], b[pivot], b[col]
        for r in range(n):
            if r != col and a[r][col]:
                factor = a[r][col] / a[col][col]
                a[r] = [x - factor * y for x, y in zip(a[r], a[col])]
                b[r] -= factor * b[col]
    return [b[i] / a[i][i] for i in range(n)]


def _fit_nonnegative(rows: list[list[float]], targets: list[float], weights: list[float] | None) -> list[float]:
    """Least squares in which no coefficient is negative (a cost cannot fall with more work): a
    term the data makes negative is dropped and the rest refitted. A column that never varies
    (no prefill in any step, say) is not fitted: its cost is 0."""
    active = [0] + [i for i in range(1, len(rows[0])) if len({row[i] for row in rows}) > 1]
    while True:
        solution = _solve([[r[i] for i in active] for r in rows], targets, weights)
        negative = [i for i, value in zip(active, solution) if value < 0]
        if not negative or len(active) == 1:
            break
        active.remove(min(negative, key=lambda i: solution[active.index(i)]))
    coefficients = [0.0] * len(rows[0])
    for i, value in zip(active, solution):
        coefficients[i] = max(0.0, value)
    return coefficients


ROBUST_ROUNDS = 30  # reweighting rounds of the least-absolute-deviations fit
ROBUST_FLOOR_S = 0.001  # residuals below this count as this (the weights stay finite)


def fit_linear_step_cost(steps: Sequence[dict], fitted_on: dict | None = None, robust: bool = False) -> LinearStepCost:
    """Fit time = a + b*prefill + c*decode + d*context on measured steps (dicts with the
    engine_steps columns and `duration_s`), no coefficient negative: by least squares, so that
    summed times come out right, or (`robust`) by least absolute deviations (reweighted least
    squares), the typical step, which steps slowed down by another process cannot drag.
    `fitted_on` records the median absolute error per step and the error of the summed time."""
    if len(steps) < 8:
        raise BatchBinError(f"{len(steps)} measured steps are too few to fit a step cost (at least 8)")
    # scale the columns so that the normal equations stay well conditioned
    scale = [1.0] + [max(1.0, max(float(s.get(name) or 0) for s in steps)) for name in FEATURES]
    rows = [[1.0] + [float(s.get(name) or 0) / scale[i + 1] for i, name in enumerate(FEATURES)] for s in steps]
    targets = [float(s["duration_s"]) for s in steps]
    solution = _fit_nonnegative(rows, targets, None)
    for _ in range(ROBUST_ROUNDS if robust else 0):
        weights = [1.0 / max(ROBUST_FLOOR_S, abs(t - sum(c * x for c, x in zip(solution, r))))
                   for r, t in zip(rows, targets)]
        solution = _fit_nonnegative(rows, targets, weights)
    coefficients = [value / scale[i] for i, value in enumerate(solution)]
    model = LinearStepCost(*coefficients[:4], per_kv_token_s=coefficients[4])
    predicted = [model.seconds(step_work(s)) for s in steps]
    errors = sorted(abs(p - t) for p, t in zip(predicted, targets))
    total = sum(targets)
    summary = {**(fitted_on or {}), "steps": len(steps), "measured_s": round(total, 3),
               "median_abs_error_ms": round(1000 * errors[len(errors) // 2], 3),
               "sum_error": round(sum(predicted) / total - 1, 4) if total else None}
    return LinearStepCost(*coefficients[:4], fitted_on=summary, per_kv_token_s=coefficients[4])


def step_work(row: dict) -> StepWork:
    """A StepWork from a row of engine_steps."""
    return StepWork(running=int(row.get("running") or 0), prefill_tokens=int(row["prefill_tokens"]),
                    decode_tokens=int(row["decode_tokens"]), context_tokens=int(row["context_tokens"]),
                    kv_tokens=int(row.get("kv_tokens") or 0))


# --- model shapes and GPUs ------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    """What the cost of a transformer depends on (a Llama-style decoder)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool = False

    @property
    def params(self) -> int:
        attention = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * (attention + mlp) + embeddings

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Keys and values of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        return self.params * dtype_bytes

    @classmethod
    def from_config(cls, config: dict, name: str = "model") -> "ModelShape":
        """From a Hugging Face config.json (Llama-style names)."""
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            return cls(name=name, layers=int(config["num_hidden_layers"]), hidden=hidden, heads=heads,
                       kv_heads=int(config.get("num_key_value_heads") or heads),
                       head_dim=int(config.get("head_dim") or hidden // heads),
                       intermediate=int(config["intermediate_size"]), vocab=int(config["vocab_size"]),
                       tied_embeddings=bool(config.get("tie_word_embeddings", False)))
        except KeyError as error:
            raise BatchBinError(f"the model's config.json has no {error}: cannot size its KV cache")

    @classmethod
    def from_folder(cls, folder: str | Path) -> "ModelShape":
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise BatchBinError(f"no config.json in {folder}: cannot size the model's KV cache and weights")
        return cls.from_config(json.loads(path.read_text()), name=Path(folder).name)


# Published shapes (Llama 3.x configs; SmolLM2-135M is BatchBin's default model).
MODEL_SIZES = {
    "135m": ModelShape("SmolLM2-135M", layers=30, hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536,
                       vocab=49152, tied_embeddings=True),
    "1b": ModelShape("Llama-3.2-1B", layers=16, hidden=2048, heads=32, kv_heads=8, head_dim=64, intermediate=8192,
                     vocab=128256, tied_embeddings=True),
    "3b": ModelShape("Llama-3.2-3B", layers=28, hidden=3072, heads=24, kv_heads=8, head_dim=128, intermediate=8192,
                     vocab=128256, tied_embeddings=True),
    "8b": ModelShape("Llama-3.1-8B", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
                     vocab=128256),
    "70b": ModelShape("Llama-3.1-70B", layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128, intermediate=28672,
                      vocab=128256),
}


@dataclass(frozen=True)
class Gpu:
    """A GPU's datasheet numbers: HBM bandwidth, dense bf16 tensor throughput, memory."""

    name: str
    hbm_bytes_per_s: float
    bf16_flops: float
    memory_bytes: float


GPUS = {
    "h100": Gpu("H100 SXM", 3.35e12, 989e12, 80e9),
    "h200": Gpu("H200", 4.8e12, 989e12, 141e9),
    "a100": Gpu("A100 80GB SXM", 2.039e12, 312e12, 80e9),
    "l4": Gpu("L4", 300e9, 121e12, 24e9),
}

# Share of the datasheet peak a serving engine reaches (assumptions, not measured here: decode
# kernels commonly reach 70-85% of HBM bandwidth, large prefills 50-70% of tensor throughput).
BANDWIDTH_EFFICIENCY = 0.8
COMPUTE_EFFICIENCY = 0.6
# Scheduling, sampling and kernel launches around each step (CUDA graphs on): an assumption.
GPU_STEP_OVERHEAD_S = 0.002
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default share of GPU memory
GPU_ACTIVATION_RESERVE_BYTES = 2e9  # activations and CUDA graphs, outside the KV cache


@dataclass(frozen=True)
class GpuStepCost:
    """Roofline time of a step: max(bytes / bandwidth, FLOPs / throughput) + overhead."""

    gpu: Gpu
    model: ModelShape
    dtype_bytes: int = 2
    bandwidth_efficiency: float = BANDWIDTH_EFFICIENCY
    compute_efficiency: float = COMPUTE_EFFICIENCY
    overhead_s: float = GPU_STEP_OVERHEAD_S

    def step_bytes(self, work: StepWork) -> float:
        """Weights once, the KV of every context token read, the new tokens' KV written."""
        new_tokens = work.prefill_tokens + work.decode_tokens
        return (self.model.weight_bytes(self.dtype_bytes)
                + self.model.kv_bytes_per_token(self.dtype_bytes) * (work.context_tokens + new_tokens))

    def step_flops(self, work: StepWork) -> float:
        """2 FLOPs per parameter per token, plus attention: 4 x layers x heads x head_dim per
        query-key pair (QK^T and PV)."""
        new_tokens = work.prefill_tokens + work.decode_tokens
        attention = 4 * self.model.layers * self.model.heads * self.model.head_dim * work.attention_pairs
        return 2 * self.model.params * new_tokens + attention

    def seconds(self, work: StepWork) -> float:
        memory_s = self.step_bytes(work) / (self.gpu.hbm_bytes_per_s * self.bandwidth_efficiency)
        compute_s = self.step_flops(work) / (self.gpu.bf16_flops * self.compute_efficiency)
        return self.overhead_s + max(memory_s, compute_s)

    def kv_cache_bytes(self) -> float:
        """vLLM's KV cache on this GPU: its memory share less weights and activations."""
        free = (self.gpu.memory_bytes * GPU_MEMORY_UTILIZATION - self.model.weight_bytes(self.dtype_bytes)
                - GPU_ACTIVATION_RESERVE_BYTES)
        if free <= 0:
            raise BatchBinError(f"{self.model.name} ({self.model.weight_bytes(self.dtype_bytes) / 1e9:.0f} GB of "
                                f"weights) does not fit on one {self.gpu.name} ({self.gpu.memory_bytes / 1e9:.0f} GB)")
        return free


def named_gpu(name: str) -> Gpu:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise BatchBinError(f"unknown GPU '{name}'; choose one of {', '.join(GPUS)}") from None


def named_model_size(name: str) -> ModelShape:
    try:
        return MODEL_SIZES[name.lower()]
    except KeyError:
        raise BatchBinError(f"unknown model size '{name}'; choose one of {', '.join(MODEL_SIZES)}") from None


def kv_blocks(cache_bytes: float, model: ModelShape, block_size: int, dtype_bytes: int) -> int:
    """How many KV blocks of `block_size` tokens fit in `cache_bytes`."""
    blocks = math.floor(cache_bytes / (model.kv_bytes_per_token(dtype_bytes) * block_size))
    if blocks < 1:
        raise BatchBinError(f"a KV cache of {cache_bytes / GIB:.2f} GiB holds no block of {block_size} tokens "
                            f"of {model.name}")
    return blocks
