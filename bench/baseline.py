"""The plain-vLLM baseline of the benchmark: the engine settings a user gets from
`vllm.LLM(model)` with no engine options, made runnable on this machine and nothing more.

    from batchbin.bench.baseline import vllm_default_settings
    plain = vllm_default_settings(detect_machine())
"""

from __future__ import annotations

from batchbin.engine.settings import EngineSettings
from batchbin.engine.machine import MachineInfo


def vllm_default_settings(machine: MachineInfo) -> EngineSettings:
    """What a user gets from `vllm.LLM(model)` with no engine options (the plain baseline).

    Two changes are unavoidable on CPU, and only those are made:
    - dtype: vLLM takes the model's bf16 even where the CPU lacks bf16, which does not finish in
      reasonable time there, so such CPUs get float32;
    - memory: vLLM reserves 0.9 of *all* memory by default and refuses to start when less is
      free; its own error message suggests `gpu_memory_utilization=0.5`, which is used here.
    Everything else, torch.compile included, is vLLM's default.
    """
    if machine.gpu:
        return EngineSettings(device="gpu", dtype="auto", threads=None, kv_cache_gib=None,
                              gpu_memory_utilization=None, max_num_seqs=None, max_num_batched_tokens=None,
                              block_size=None, enforce_eager=False, reasons={"all": "vLLM defaults"})
    return EngineSettings(
        device="cpu",
        dtype="bfloat16" if machine.has_bf16 else "float32",
        threads=None, kv_cache_gib=None, gpu_memory_utilization=0.5,
        max_num_seqs=None, max_num_batched_tokens=None, block_size=None, enforce_eager=False,
        reasons={"all": "vLLM defaults, but float32 where bf16 is unsupported, gpu_memory_utilization 0.5 as "
                        "vLLM's error suggests (0.9 of all memory is more than is free)"},
    )
