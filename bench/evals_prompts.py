"""Prompts from OpenAI's evals registry: real tasks, none of them ShareGPT.

The `evals` package (PyPI, 46 MB wheel; installed with `--no-deps` by `make setup`: only its
data files are read, the package is never imported) ships the samples of ~300 evaluation tasks
as chat-format JSONL (`{"input": [{"role": ..., "content": ...}, ...], "ideal": ...}`):
translation, exams, puzzles, summaries, code, maths, in many languages. A batch job made of a
few dozen such tasks, each with its own instructions (often a shared system prompt), is what an
offline job looks like: a handful of templates, many rows each.

The length predictor never trained on these prompts (it learnt ShareGPT), so they measure how
it does on prompts it never saw, and what a probe of the job's own requests buys
(`batchbin.predictors.probe`).

    python -m batchbin.bench.evals_prompts 12     # print 12 requests as JSONL
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import sys
from pathlib import Path

from batchbin.bench.sharegpt import DEFAULT_MAX_PROMPT_CHARS, MESSAGE_OVERHEAD_CHARS, prompt_chars

ROLES = {"system", "user", "assistant"}
PER_TASK = 25          # requests per task: a job of a few dozen templates, many rows each
MIN_TASK_ROWS = 10     # a task with fewer usable rows is left out
MAX_LINES = 2000       # rows read of a task's file (some hold 100,000+)


def registry_data() -> Path:
    """The folder of the evals registry's data files (the package is located, not imported)."""
    spec = importlib.util.find_spec("evals")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the evals-mix workload needs the 'evals' package's data: "
                           "pip install --no-deps 'evals==3.0.1.post1' (make setup does this)")
    return Path(next(iter(spec.submodule_search_locations))) / "registry" / "data"


def chat_messages(row: dict, max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS) -> list[dict] | None:
    """The row's messages as a chat request, or None: not chat-format, an unknown role or named
    few-shot message, empty text, a last message that is not the user's, or too long a prompt."""
    messages = row.get("input")
    if not isinstance(messages, list) or not messages:
        return None
    out = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES or "name" in message:
            return None
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            return None
        out.append({"role": message["role"], "content": content})
    if out[-1]["role"] != "user":
        return None
    if sum(prompt_chars(m["content"]) + MESSAGE_OVERHEAD_CHARS for m in out) > max_prompt_chars:
        return None
    return out


def task_rows(path: Path) -> list[list[dict]]:
    """The usable chat requests among the first MAX_LINES rows of one samples file, in file order."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in itertools.islice(handle, MAX_LINES):
            try:
                messages = chat_messages(json.loads(line))
            except (json.JSONDecodeError, AttributeError):
                messages = None
            if messages is not None:
                rows.append(messages)
    return rows


def task_files(data: Path) -> dict[str, Path]:
    """One samples file per task (the task's folder name): the first in name order."""
    files: dict[str, Path] = {}
    for path in sorted(data.rglob("*.jsonl")):
        files.setdefault(path.relative_to(data).parts[0], path)
    return files


def evals_requests(n: int, seed: int = 0, max_tokens: int = 512, per_task: int = PER_TASK) -> list[dict]:
    """`n` requests from ceil(n / per_task) tasks drawn by `seed`, `per_task` rows each (drawn by
    `seed` too), task by task; `metadata.task` names the task."""
    rng = random.Random(f"evals-mix:{seed}")
    files = task_files(registry_data())
    names = sorted(files)
    rng.shuffle(names)
    requests: list[dict] = []
    for name in names:
        if len(requests) >= n:
            break
        rows = task_rows(files[name])
        if len(rows) < MIN_TASK_ROWS:
            continue
        for index in sorted(rng.sample(range(len(rows)), min(per_task, len(rows), n - len(requests)))):
            requests.append({"id": f"evals-{name}-{index}", "messages": rows[index], "max_tokens": max_tokens,
                             "metadata": {"workload": "evals-mix", "task": name}})
    return requests


if __name__ == "__main__":
    for request in evals_requests(int(sys.argv[1]) if len(sys.argv) > 1 else 12):
        print(json.dumps(request, ensure_ascii=False))
