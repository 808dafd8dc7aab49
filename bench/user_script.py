"""The capable user's script, for the cold-start comparison (bench/cold.py): what someone writes
around vLLM alone. It imports nothing of BatchBin, so it pays only what such a script pays.

    python -m batchbin.bench.user_script IN.jsonl OUT.jsonl SPEC_JSON

SPEC_JSON: {"model": path, "max_model_len": n, "max_tokens": default output limit,
"engine": keyword arguments for vllm.LLM}. The caller sets the engine's environment (thread
binding, LD_PRELOAD) when it starts this process. The script reads the requests, builds the
engine, renders chat messages with the model's template, sorts the prompts by token ids (so
shared prefixes run back to back), generates once with greedy decoding, writes one
{"id", "output"} line per request, and ends like any Python program.
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    source, target, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec["model"], max_model_len=spec["max_model_len"], enable_prefix_caching=True, seed=0,
              **spec["engine"])
    tokenizer = llm.get_tokenizer()
    with open(source, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    prompts = []
    for row in rows:
        if row.get("messages"):
            text = tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
            prompts.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            prompts.append(tokenizer(row["prompt"])["input_ids"])
    order = sorted(range(len(rows)), key=lambda i: prompts[i])
    limit = spec["max_model_len"]
    params = [SamplingParams(max_tokens=min(rows[i].get("max_tokens") or spec["max_tokens"], limit - len(prompts[i])),
                             temperature=0.0) for i in order]
    outputs = llm.generate([{"prompt_token_ids": prompts[i]} for i in order], params, use_tqdm=False)
    with open(target, "w", encoding="utf-8") as handle:
        for i, output in zip(order, outputs):
            handle.write(json.dumps({"id": rows[i]["id"], "output": output.outputs[0].text}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
