"""The key under which a request's answer can be reused by a later run: the same model
(engine/fingerprint.py), the same prompt token ids and the same output parameters as vLLM gets
them (step_loop.output_params: max_tokens within the context's room, min_tokens, ignore_eos,
stop, temperature, top_p, response_format, and the seed where the request samples).

Greedy requests (temperature 0) ignore the seed; a sampled request is reusable only with a
seed (its own, or the one derived from the job's seed and its id): an unseeded sampled request
has no key, and is never answered from another run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterator

import numpy as np
import pyarrow as pa

from batchbin.engine.step_loop import SamplingDefaults, output_params


def normalized(params: dict) -> dict:
    """The output parameters in one spelling: a response format's JSON with sorted keys, floats as floats."""
    params = dict(params)
    if params.get("response_format"):
        params["response_format"] = json.dumps(json.loads(params["response_format"]), sort_keys=True)
    params["temperature"] = float(params["temperature"])
    params["top_p"] = float(params["top_p"])
    params["stop"] = list(params["stop"]) if params.get("stop") else None
    return params


def reuse_key(model_fingerprint: str | None, token_ids, params: dict) -> str | None:
    """The key of one request (`params`: step_loop.output_params of it); None: never reused
    (no model fingerprint, or a sampled request without a seed)."""
    if model_fingerprint is None or (params["temperature"] != 0 and params["seed"] is None):
        return None
    prompt = hashlib.sha256(np.asarray(token_ids, dtype=np.int32).tobytes()).hexdigest()
    text = json.dumps([model_fingerprint, prompt, normalized(params)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def keys_of_rows(model_fingerprint: str | None, rows: pa.Table, defaults: SamplingDefaults) -> Iterator[tuple[str, str | None]]:
    """(request_id, key) of every row of `rows` (columns of generate.work_in_order: request_id,
    token_ids, max_tokens, min_tokens, ignore_eos, temperature, top_p, seed, stop, response_format).
    The token ids are read straight from Arrow's buffers, not as Python lists."""
    tokens = rows.column("token_ids").combine_chunks()
    flat = tokens.values.to_numpy(zero_copy_only=False)
    offsets = tokens.offsets.to_numpy()
    others = rows.drop_columns(["token_ids"]).to_pylist()
    for i, row in enumerate(others):
        ids = flat[offsets[i]:offsets[i + 1]]
        params = output_params({**row, "token_ids": ids}, defaults)
        yield row["request_id"], reuse_key(model_fingerprint, ids, params)
