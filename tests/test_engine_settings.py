"""Engine settings chosen from the machine: CPU flags -> dtype, cores -> threads, overrides."""

from __future__ import annotations

import os
import platform

import pytest

from batchbin.bench.baseline import vllm_default_settings
from batchbin.config import EngineOptions
from batchbin.engine.settings import CPU_COMPILE_MIN_REQUESTS, CPU_COMPILE_MIN_REQUESTS_BF16, choose_engine_settings, core_ranges
from batchbin.engine.machine import MachineInfo, detect_machine
from batchbin.engine.preload import find_preload_libs

INTEL = MachineInfo("Intel Xeon", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}), (0, 1), 20.0)
AMD = MachineInfo("AMD EPYC", frozenset({"avx2"}), (0, 1), 20.0)
GPU = MachineInfo("any", frozenset({"avx2"}), (0, 1), 20.0, gpu="NVIDIA L4")


def test_bf16_only_where_the_cpu_has_it():
    assert choose_engine_settings(INTEL).dtype == "bfloat16"
    assert choose_engine_settings(AMD).dtype == "float32"
    assert "lacks" in choose_engine_settings(AMD).reasons["dtype"]


def test_threads_bind_every_core():
    assert choose_engine_settings(AMD).threads == "0-1"
    assert choose_engine_settings(AMD).environment()["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert core_ranges((0, 1, 2, 5, 7, 8)) == "0-2,5,7-8"
    assert core_ranges((3,)) == "3"


def test_kv_cache_from_free_memory_within_bounds():
    assert choose_engine_settings(AMD).kv_cache_gib == 5.0  # a quarter of 20 GiB
    assert choose_engine_settings(MachineInfo("x", frozenset(), (0,), 23.4)).kv_cache_gib == 5.0  # whole GiB
    small = MachineInfo("x", frozenset(), (0,), 2.0)
    assert choose_engine_settings(small).kv_cache_gib == 1.0
    big = MachineInfo("x", frozenset(), (0,), 200.0)
    assert choose_engine_settings(big).kv_cache_gib == 8.0
    idle = MachineInfo("x", frozenset(), (0,), 20.0, mem_available_gib=18.0)
    assert choose_engine_settings(idle).kv_cache_gib == 5.0  # the total share decides
    busy = MachineInfo("x", frozenset(), (0,), 20.0, mem_available_gib=6.5)
    settings = choose_engine_settings(busy)
    assert settings.kv_cache_gib == 3.0 and "free" in settings.reasons["kv_cache_gib"]  # half of 6.5, whole GiB


def test_torch_compile_only_for_jobs_that_repay_it():
    large = choose_engine_settings(INTEL, requests=CPU_COMPILE_MIN_REQUESTS_BF16)
    assert large.enforce_eager is False and "torch.compile" in large.reasons["enforce_eager"]
    # the compile cache vllm-cpu 0.32 can load again (its AOT cache fails to load)
    assert large.environment()["VLLM_USE_AOT_COMPILE"] == "0"
    small = choose_engine_settings(INTEL, requests=CPU_COMPILE_MIN_REQUESTS_BF16 - 1)
    assert small.enforce_eager is True and "eager" in small.reasons["enforce_eager"]
    assert "VLLM_USE_AOT_COMPILE" not in small.environment()
    assert choose_engine_settings(INTEL).enforce_eager is False  # size unknown: a large job
    # a CPU without bf16 generates ~10x slower: compiling pays for ~10x smaller jobs
    assert choose_engine_settings(AMD, requests=CPU_COMPILE_MIN_REQUESTS).enforce_eager is False
    assert choose_engine_settings(AMD, requests=CPU_COMPILE_MIN_REQUESTS - 1).enforce_eager is True
    assert CPU_COMPILE_MIN_REQUESTS < CPU_COMPILE_MIN_REQUESTS_BF16
    forced = choose_engine_settings(INTEL, EngineOptions(enforce_eager=False), requests=5)
    assert forced.enforce_eager is False and forced.reasons["enforce_eager"] == "set by the user"


def test_user_options_win_and_say_so():
    settings = choose_engine_settings(INTEL, EngineOptions(dtype="float32", max_num_seqs=8, threads="1"))
    assert (settings.dtype, settings.max_num_seqs, settings.threads) == ("float32", 8, "1")
    assert settings.reasons["dtype"] == "set by the user"
    kwargs = settings.engine_kwargs()
    assert kwargs["max_num_seqs"] == 8 and kwargs["kv_cache_memory_bytes"] == int(5.0 * 1024**3)


def test_gpu_keeps_vllm_defaults():
    settings = choose_engine_settings(GPU)
    assert settings.device == "gpu" and settings.threads is None
    assert settings.engine_kwargs() == {"dtype": "auto", "enforce_eager": False}


def test_plain_vllm_baseline_only_fixes_what_cannot_run():
    assert vllm_default_settings(INTEL).dtype == "bfloat16"
    assert vllm_default_settings(AMD).dtype == "float32"
    assert vllm_default_settings(AMD).threads is None
    assert vllm_default_settings(AMD).max_num_seqs is None
    assert vllm_default_settings(AMD).enforce_eager is False  # vLLM compiles by default


def test_this_machine_is_detected():
    machine = detect_machine()
    assert machine.cores and machine.mem_total_gib > 0
    assert choose_engine_settings(machine).dtype in ("bfloat16", "float32", "auto")


def test_tcmalloc_and_intel_openmp_are_preloaded_where_found():
    libs = ("/venv/lib/libtcmalloc_minimal.so.4", "/venv/lib/libiomp5.so")
    machine = MachineInfo("x", frozenset({"avx2"}), (0, 1), 20.0, preload_libs=libs)
    chosen = choose_engine_settings(machine)
    assert chosen.preload == "/venv/lib/libtcmalloc_minimal.so.4:/venv/lib/libiomp5.so"
    assert chosen.environment()["LD_PRELOAD"] == chosen.preload
    assert "libiomp5.so" in chosen.reasons["preload"]
    off = choose_engine_settings(machine, EngineOptions(preload=False))
    assert off.preload is None and "LD_PRELOAD" not in off.environment() and off.reasons["preload"] == "turned off by the user"
    assert choose_engine_settings(AMD).preload is None and "none found" in choose_engine_settings(AMD).reasons["preload"]
    assert vllm_default_settings(machine).preload is None  # the plain baseline runs as vLLM ships


def test_preload_libraries_are_found_in_the_venv(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    assert not any(path.startswith(str(tmp_path)) for path in find_preload_libs(str(tmp_path)))
    (lib / "libtcmalloc_minimal.so.4").write_bytes(b"")
    (lib / "libiomp5.so").write_bytes(b"")
    found = find_preload_libs(str(tmp_path))
    assert found[0] == str(lib / "libtcmalloc_minimal.so.4")
    if platform.machine() == "x86_64":
        assert found[1] == str(lib / "libiomp5.so")


def test_each_engine_gets_its_own_preload_and_keeps_the_users(monkeypatch):
    from batchbin.engine.pool import apply_environment

    machine = MachineInfo("x", frozenset({"avx2"}), (0, 1), 20.0, preload_libs=("/lib/libtcmalloc_minimal.so.4",))
    for name in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_USE_AOT_COMPILE"):  # restored after the test
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "/left/by/an/earlier/engine.so")
    apply_environment(choose_engine_settings(machine), user_preload="")
    assert os.environ["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4"
    apply_environment(vllm_default_settings(machine), user_preload="")
    assert "LD_PRELOAD" not in os.environ and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ
    apply_environment(choose_engine_settings(machine), user_preload="/users/own.so")
    assert os.environ["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4:/users/own.so"


def test_a_block_size_vllm_cpu_refuses_is_a_clear_error():
    from batchbin.errors import BatchBinError

    with pytest.raises(BatchBinError, match="multiple of 32"):
        choose_engine_settings(INTEL, EngineOptions(block_size=16))
    assert choose_engine_settings(INTEL, EngineOptions(block_size=64)).block_size == 64
    assert choose_engine_settings(GPU, EngineOptions(block_size=16)).block_size == 16  # GPUs take 16


def test_the_engine_runs_in_this_process_where_that_keeps_the_preload():
    libs = ("/venv/lib/libtcmalloc_minimal.so.4", "/venv/lib/libiomp5.so")
    nothing_to_preload = choose_engine_settings(AMD)
    assert nothing_to_preload.in_process is True
    assert nothing_to_preload.environment()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    started_with_it = choose_engine_settings(MachineInfo("x", frozenset(), (0, 1), 20.0, preload_libs=libs,
                                                         preload_loaded=True))
    assert started_with_it.in_process is True and "has the preload" in started_with_it.reasons["in_process"]
    started_without = choose_engine_settings(MachineInfo("x", frozenset(), (0, 1), 20.0, preload_libs=libs))
    assert started_without.in_process is False and started_without.preload  # the new process gets the preload
    assert started_without.environment()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"
    forced = choose_engine_settings(AMD, EngineOptions(in_process=False))
    assert forced.in_process is False and forced.reasons["in_process"] == "set by the user"
    assert choose_engine_settings(GPU).in_process is False  # vLLM's default on GPU
    assert vllm_default_settings(AMD).environment()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"


def test_detected_cores_do_not_shrink_once_an_engine_pins_this_thread():
    before = detect_machine().cores
    os.sched_setaffinity(0, {before[0]})  # what vLLM's in-process engine does to its thread
    try:
        assert detect_machine().cores == before
    finally:
        os.sched_setaffinity(0, set(before))


def test_an_engine_core_in_its_own_process_runs_the_model_itself():
    from batchbin.engine.pool import executor_kwargs

    libs = ("/venv/lib/libtcmalloc_minimal.so.4",)
    own_process = choose_engine_settings(MachineInfo("x", frozenset(), (0, 1), 20.0, preload_libs=libs))
    assert own_process.in_process is False and own_process.worker_in_core is True
    assert own_process.environment()["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1"  # vllm.LLM: core in its own process
    assert own_process.environment(async_engine=True)["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # run-batch: model in it
    executor = executor_kwargs(own_process)["distributed_executor_backend"]
    assert executor.__name__ == "UniProcExecutor"  # the class: vLLM's CPU platform rewrites the name "uni"
    assert executor_kwargs(choose_engine_settings(AMD)) == {}  # in process: vLLM picks it by itself
    assert executor_kwargs(vllm_default_settings(AMD)) == {}  # the plain baseline keeps vLLM's third process
    assert executor_kwargs(choose_engine_settings(GPU)) == {}
    off = choose_engine_settings(MachineInfo("x", frozenset(), (0, 1), 20.0, preload_libs=libs),
                                 EngineOptions(worker_in_core=False))
    assert executor_kwargs(off) == {} and off.reasons["worker_in_core"] == "set by the user"


def test_speculative_decoding_is_off_unless_asked_for():
    for settings in (choose_engine_settings(INTEL), choose_engine_settings(AMD), choose_engine_settings(GPU)):
        assert settings.speculative_tokens == 0 and "speculative_config" not in settings.engine_kwargs()
    assert choose_engine_settings(AMD).reasons["speculative_tokens"].startswith("off")


def test_speculation_drafts_n_grams_only_while_the_batch_is_small():
    config = choose_engine_settings(AMD, EngineOptions(speculative_tokens=3)).engine_kwargs()["speculative_config"]
    assert config["method"] == "ngram" and config["num_speculative_tokens"] == 3
    # vLLM's per-batch-size schedule: 3 drafts up to 48 running sequences, none above
    assert config["num_speculative_tokens_per_batch_size"] == [[1, 48, 3], [49, 256, 0]]
    mine = choose_engine_settings(AMD, EngineOptions(speculative_tokens=2, speculative_max_batch=8))
    assert mine.engine_kwargs()["speculative_config"]["num_speculative_tokens_per_batch_size"] == [[1, 8, 2], [9, 256, 0]]
    assert mine.reasons["speculative_max_batch"] == "set by the user"
    gpu = choose_engine_settings(GPU, EngineOptions(speculative_tokens=3))
    assert "num_speculative_tokens_per_batch_size" not in gpu.engine_kwargs()["speculative_config"]  # every batch size


def test_vllm_accepts_the_speculative_config(default_model_path):
    """vLLM's own engine configuration (no model weights loaded) takes the schedule."""
    from vllm.engine.arg_utils import EngineArgs

    settings = choose_engine_settings(detect_machine(), EngineOptions(speculative_tokens=3))
    config = EngineArgs(model=default_model_path, max_model_len=2048, **settings.engine_kwargs()).create_engine_config()
    assert config.speculative_config.method == "ngram"
    assert config.speculative_config.num_speculative_tokens == 3
    assert config.speculative_config.num_speculative_tokens_per_batch_size == [(1, 48, 3), (49, 256, 0)]


def test_run_batch_gets_the_speculative_config_as_json():
    import json

    from batchbin.bench.harness import run_batch_command

    command = run_batch_command("model", choose_engine_settings(AMD, EngineOptions(speculative_tokens=3)), 2048)
    config = json.loads(command[command.index("--speculative-config") + 1])
    assert config["num_speculative_tokens"] == 3
