"""What a table job's field order changes, measured: the prefix reuse of the prompts in the
query's column order against the chosen order (`batchbin plan`), and the answers' agreement
(`--check-agreement N`: N rows generated again in the query's column order, greedy, and the
share of identical answers; the batch flow calls it after generation).

Both render the rows again in the user's order (batchbin/io/query_jobs.py).
"""

from __future__ import annotations

import json
import os
import time

from batchbin.config import JobConfig
from batchbin.engine.settings import EngineSettings
from batchbin.io.query_jobs import QueryJob, query_requests
from batchbin.store import db
from batchbin.store.queries import fetch_arrow
from batchbin.store.runs import RunRef


def reusable_tokens(token_lists: list[list[int]], block: int) -> int:
    """Prompt tokens a prefix cache of whole `block`-token blocks can skip when the prompts run
    sorted: each prompt's common prefix with the one before it, rounded down to whole blocks
    (and never the prompt's last token, which vLLM always computes)."""
    ordered = sorted(token_lists)
    total = 0
    for previous, current in zip(ordered, ordered[1:]):
        shared = min(len(os.path.commonprefix([previous, current])), len(current) - 1)
        total += shared // block * block
    return total


def prompt_token_lists(job: QueryJob, field_order: str, model_path: str) -> list[list[int]]:
    """The token ids of a table job's prompts with `{fields}` in `field_order`."""
    from batchbin.tasks.tokenize import load_tokenizer, render_token_ids

    rows = [row for _, row, _, problem in query_requests(job, field_order=field_order) if row and not problem]
    texts = [json.dumps(row["messages"]) if "messages" in row else None for row in rows]
    return render_token_ids(load_tokenizer(model_path), [row.get("prompt") for row in rows], texts)


def field_order_reuse(config: JobConfig, model_path: str, block: int) -> dict | None:
    """For `batchbin plan` of a table job with `--field-order auto`: prompt tokens and the tokens
    whole-block prefix caching skips, in the query's column order and in the chosen one."""
    job = config.query_job()
    if job is None or job.field_order != "auto" or job.template is None:
        return None
    chosen = query_requests(job)
    result = {"fields_user": [name for name in chosen.columns if name in chosen.fields], "fields_chosen": chosen.fields,
              "block": block}
    for name, order in (("user", "input"), ("chosen", "auto")):
        tokens = prompt_token_lists(job, order, model_path)
        result[f"prompt_tokens_{name}"] = sum(len(ids) for ids in tokens)
        result[f"reusable_tokens_{name}"] = reusable_tokens(tokens, block)
    return result


def answer_agreement(ref: RunRef, config: JobConfig, model_path: str, settings: EngineSettings) -> dict:
    """`config.check_agreement` answered rows generated again with `{fields}` in the query's
    column order (greedy): the share whose answer is identical to the run's."""
    from vllm import SamplingParams

    from batchbin.engine.pool import get_engine
    from batchbin.tasks.tokenize import load_tokenizer, render_token_ids

    job = config.query_job()
    if job is None or job.field_order != "auto" or not config.check_agreement:
        return {}
    started = time.perf_counter()
    with db.connect(ref.db_path, read_only=True) as con:
        sample = fetch_arrow(con, "query_jobs.agreement_sample",
                             {"run_id": ref.run_id, "rows": config.check_agreement}).to_pylist()
    wanted = {row["request_id"]: row for row in sample}
    user_rows = {str(row["id"]).strip(): row for _, row, _, problem in query_requests(job, field_order="input")
                 if row and not problem and str(row.get("id", "")).strip() in wanted}
    ids = [request_id for request_id in wanted if request_id in user_rows]
    if not ids:
        return {"answer_agreement": None, "answer_agreement_rows": 0}
    prompts = render_token_ids(load_tokenizer(model_path), [None] * len(ids),
                               [json.dumps(user_rows[i]["messages"]) for i in ids])
    params = [SamplingParams(temperature=0.0, max_tokens=wanted[i]["max_tokens"] or config.max_tokens,
                             stop=wanted[i]["stop"] or None) for i in ids]
    engine = get_engine(model_path, settings, config.max_model_len)
    outputs = engine.llm.generate([{"prompt_token_ids": ids_} for ids_ in prompts], params, use_tqdm=False)
    same = sum(out.outputs[0].text == wanted[i]["output_text"] for i, out in zip(ids, outputs))
    same_label = sum(first_word(out.outputs[0].text) == first_word(wanted[i]["output_text"])
                     for i, out in zip(ids, outputs))
    return {"answer_agreement": round(same / len(ids), 4), "answer_agreement_rows": len(ids),
            "answer_first_word_agreement": round(same_label / len(ids), 4),
            "answer_agreement_s": round(time.perf_counter() - started, 2)}


def first_word(text: str) -> str:
    """An answer's first word, case and punctuation left out: the label of a short-answer task."""
    words = text.split()
    return words[0].strip(".,:;!?\"'()[]").casefold() if words else ""
