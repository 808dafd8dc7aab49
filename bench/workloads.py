"""Benchmark workloads: reproducible request files in BatchBin's input format.

Each workload is a list of request dicts (`id`, `messages`, `max_tokens`, `metadata`), built
from a seed, in shuffled order (so plain vLLM gets no grouping for free):

- `prefix-heavy`: a few dozen real documents of ~600-900 tokens (long ShareGPT answers), each
  followed by 8-12 short questions about it, in the spirit of vLLM's prefix-repetition benchmark.
- `mixed-length`: no shared prefix beyond the chat template; tasks asking for one word, a short
  list, a paragraph or an essay, with `max_tokens` to match.
- `chat-mix`: five system prompts (6 to ~400 tokens) with varied user tasks and lengths.
- `sharegpt`: real multi-turn ShareGPT conversations, every turn with its history.
- `sharegpt-real`: the same kind of turns, each generating exactly as many tokens as the
  dataset's own answer (up to 1,024): a real chat job's lengths, long and varied.
- `evals-mix`: 25 real prompts from each of a few dozen tasks of OpenAI's evals registry
  (bench/evals_prompts.py), answers as long as the model makes them (up to 512 tokens): a job
  of a few templates, many rows each, on prompts the length predictor never saw.

The prompt texts (questions, topics, templates, personas) are data, in bench/data/WORKLOAD.json;
the numbers that shape a workload (sizes, weights, max_tokens choices) are here.

    python -m batchbin.bench.workloads prefix-heavy prompts.jsonl [n_requests] [seed]
"""

from __future__ import annotations

import itertools
import json
import random
import re
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

from batchbin.bench.evals_prompts import evals_requests
from batchbin.bench.sharegpt import benchmark_conversations, prompt_chars, sharegpt_real_requests, sharegpt_requests

WORKLOADS = ("prefix-heavy", "mixed-length", "chat-mix", "sharegpt", "sharegpt-real", "evals-mix")

# Default sizes: a few minutes per variant on the slow 2-core CPU (AMD, AVX2 only); sharegpt-real
# is sized for 8 waves of the engine at the benchmark's max_num_seqs for it (bench/harness.py).
DEFAULT_SIZES = {"prefix-heavy": 240, "mixed-length": 160, "chat-mix": 160, "sharegpt": 120, "sharegpt-real": 256,
                 "evals-mix": 400}


def default_size(name: str) -> int:
    """Default number of requests of a workload."""
    _check_name(name)
    return DEFAULT_SIZES[name]


def make_workload(
    name: str,
    n_requests: int | None = None,
    seed: int = 0,
    max_tokens: int | None = None,
    shuffle: bool = True,
) -> list[dict]:
    """The requests of workload `name`: `n_requests` rows (default: `default_size`), built from
    `seed`; `max_tokens` overrides every request's own limit; `shuffle=False` keeps generation
    order (prefix groups and conversations together)."""
    _check_name(name)
    n = default_size(name) if n_requests is None else n_requests
    if n < 0:
        raise ValueError(f"n_requests must be >= 0, got {n}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    rng = random.Random(f"{name}:{seed}")
    if name == "prefix-heavy":
        rows = _prefix_heavy(n, rng)
    elif name == "mixed-length":
        rows = _mixed_length(n, rng)
    elif name == "chat-mix":
        rows = _chat_mix(n, rng)
    elif name == "sharegpt-real":
        rows = _sharegpt_real(n, seed)
    elif name == "evals-mix":
        rows = evals_requests(n, seed)
    else:
        rows = _sharegpt(n, seed)
    if shuffle:
        rng.shuffle(rows)
    if max_tokens is not None:
        for row in rows:
            row["max_tokens"] = max_tokens
            if "min_tokens" in row:
                row["min_tokens"] = min(row["min_tokens"], max_tokens)
    return rows


def has_fixed_lengths(rows: list[dict]) -> bool:
    """Whether the rows fix their own output lengths (sharegpt-real): then a length predictor
    must not see them, or it would read the answer off the request (bench/harness.py)."""
    return any(row.get("ignore_eos") or ("min_tokens" in row and row["min_tokens"] >= row.get("max_tokens", 0))
               for row in rows)


def natural_lengths(rows: list[dict], max_tokens: int) -> list[dict]:
    """The rows as a user's real job would give them: one output limit for all and no fixed
    length, so the model (or a predictor) decides where each answer ends."""
    return [{**{k: v for k, v in row.items() if k not in ("min_tokens", "ignore_eos")}, "max_tokens": max_tokens}
            for row in rows]


def _sharegpt_real(n: int, seed: int) -> list[dict]:
    """sharegpt-real rows; answer and prompt tokens counted with the default model's tokenizer."""
    from batchbin.engine.models import resolve_model
    from batchbin.tasks.tokenize import load_tokenizer

    tokenizer = load_tokenizer(resolve_model("default"))
    return sharegpt_real_requests(
        n, seed,
        count_tokens=lambda text: len(tokenizer.encode(text, add_special_tokens=False)),
        chat_tokens=lambda messages: len(tokenizer.apply_chat_template(messages, tokenize=True,
                                                                       add_generation_prompt=True)))


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write request rows as JSONL (one object a line, UTF-8); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _check_name(name: str) -> None:
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload '{name}': choose one of {', '.join(WORKLOADS)}")


def _texts(name: str) -> dict:
    """The prompt texts of workload `name`, from bench/data/NAME.json."""
    return json.loads(resources.files("batchbin.bench").joinpath("data", f"{name}.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# prefix-heavy

_PREFIX_HEAVY = _texts("prefix-heavy")
DOCUMENT_SYSTEM_PROMPT = _PREFIX_HEAVY["system_prompt"]
# Plain English prose runs ~4.4 characters per token with the default model's tokenizer.
DOCUMENT_CHARS = (2900, 3900)  # ~600-900 tokens
QUESTIONS_PER_DOCUMENT = (8, 12)

# (question, max_tokens choices): short answers, 16-48 tokens; TERM_QUESTIONS take a {term}.
DOCUMENT_QUESTIONS = [(q["text"], tuple(q["max_tokens"])) for q in _PREFIX_HEAVY["questions"]]
TERM_QUESTIONS = [(q["text"], tuple(q["max_tokens"])) for q in _PREFIX_HEAVY["term_questions"]]
_STOPWORDS = set(_PREFIX_HEAVY["stopwords"])


def _documents(count: int, rng: random.Random) -> list[str]:
    """`count` long, plain-English assistant answers from ShareGPT with distinct openings."""
    conversations = benchmark_conversations()
    order = list(range(len(conversations)))
    rng.shuffle(order)
    documents: list[str] = []
    openings: set[str] = set()
    for index in order:
        for message in conversations[index].get("conversations") or []:
            if message.get("from") != "gpt":
                continue
            text = message.get("value")
            if not isinstance(text, str):
                continue
            text = text.strip()
            if not DOCUMENT_CHARS[0] <= len(text) <= DOCUMENT_CHARS[1]:
                continue
            if not _is_prose(text):
                continue
            opening = text[:200]
            if opening in openings:
                continue
            openings.add(opening)
            documents.append(text)
            break  # one document per conversation
        if len(documents) >= count:
            return documents
    raise ValueError(f"ShareGPT holds only {len(documents)} usable documents, {count} asked for")


def _is_prose(text: str) -> bool:
    """English prose: ASCII, whole (ends a sentence), no code, few digits and symbols."""
    if "```" in text or "{" in text or "\\" in text or not text.isascii():
        return False
    if text[-1] not in ".!?\")":  # many ShareGPT answers stop mid-sentence
        return False
    letters = sum(char.isalpha() for char in text)
    return letters >= 0.75 * len(text.replace(" ", "").replace("\n", "")) and prompt_chars(text) <= 1.25 * len(text)


def _terms(document: str, rng: random.Random, count: int) -> list[str]:
    """A few frequent content words of the document (for document-specific questions)."""
    words = Counter(word.lower() for word in re.findall(r"[A-Za-z]{6,}", document))
    common = [word for word, freq in words.most_common(30) if word not in _STOPWORDS and freq >= 2]
    return rng.sample(common[:8], min(count, len(common[:8])))


def _prefix_heavy(n: int, rng: random.Random) -> list[dict]:
    rows: list[dict] = []
    if n == 0:
        return rows
    # Enough documents for n requests even if every one gets the fewest questions.
    documents = _documents(-(-n // QUESTIONS_PER_DOCUMENT[0]), rng)
    for doc_index, document in enumerate(documents):
        questions = [(text, choices, "generic") for text, choices in DOCUMENT_QUESTIONS]
        for term in _terms(document, rng, 2):
            text, choices = rng.choice(TERM_QUESTIONS)
            questions.append((text.format(term=term), choices, "term"))
        chosen = rng.sample(questions, rng.randint(*QUESTIONS_PER_DOCUMENT))
        for q_index, (question, choices, kind) in enumerate(chosen):
            rows.append({
                "id": f"prefix-d{doc_index:03d}-q{q_index:02d}",
                "messages": [
                    {"role": "system", "content": DOCUMENT_SYSTEM_PROMPT},
                    {"role": "user", "content": f"Document:\n{document}\n\nQuestion: {question}"},
                ],
                "max_tokens": rng.choice(choices),
                "metadata": {"workload": "prefix-heavy", "document": doc_index, "question": kind},
            })
            if len(rows) >= n:
                return rows
    return rows


# ---------------------------------------------------------------------------------------------
# mixed-length

_MIXED_LENGTH = _texts("mixed-length")
TOPICS = _MIXED_LENGTH["topics"]

# kind -> max_tokens choices, and how often each kind comes
LENGTH_TOKENS = {"word": (8, 12, 16), "list": (32, 48, 64), "paragraph": (96, 128, 160), "essay": (224, 256, 320)}
LENGTH_WEIGHTS = {"word": 0.3, "list": 0.3, "paragraph": 0.25, "essay": 0.15}
# (kind, max_tokens choices, templates): the topic comes first, so requests share no prefix.
LENGTH_CLASSES = [(kind, LENGTH_TOKENS[kind], templates) for kind, templates in _MIXED_LENGTH["length_classes"].items()]


def _mixed_length(n: int, rng: random.Random) -> list[dict]:
    rows: list[dict] = []
    used: set[tuple[str, str]] = set()
    combinations = len(TOPICS) * sum(len(templates) for _, _, templates in LENGTH_CLASSES)
    weights = [LENGTH_WEIGHTS[kind] for kind, _, _ in LENGTH_CLASSES]
    for index in range(n):
        kind, choices, templates = rng.choices(LENGTH_CLASSES, weights=weights)[0]
        for _ in range(50):  # avoid repeating a prompt while there are fresh ones
            topic, template = rng.choice(TOPICS), rng.choice(templates)
            if (topic, template) not in used or len(used) >= combinations:
                break
        used.add((topic, template))
        rows.append({
            "id": f"mixed-{index:05d}",
            "messages": [{"role": "user", "content": template.format(topic=topic)}],
            "max_tokens": rng.choice(choices),
            "metadata": {"workload": "mixed-length", "kind": kind},
        })
    return rows


# ---------------------------------------------------------------------------------------------
# chat-mix

_CHAT_MIX = _texts("chat-mix")
# system prompts by name (each a list of lines in the JSON file)
PERSONAS: dict[str, str] = {name: "\n".join(lines) for name, lines in _CHAT_MIX["personas"].items()}
PERSONA_WEIGHTS = {"plain": 0.15, "support": 0.2, "travel": 0.2, "tutor": 0.25, "bookshop": 0.2}

SLOTS: dict[str, list[str]] = _CHAT_MIX["slots"]  # the values of a template's {slot}

# (template, kind): kind sets max_tokens (see TASK_TOKENS).
PERSONA_TASKS: dict[str, list[tuple[str, str]]] = {
    persona: [(task["template"], task["kind"]) for task in tasks] for persona, tasks in _CHAT_MIX["persona_tasks"].items()
}
TASK_TOKENS = {"short": (16, 32), "medium": (48, 64, 96), "long": (128, 192, 256)}
SHAREGPT_TASK_SHARE = 0.4  # the rest are persona tasks (all of "plain" come from ShareGPT)
_NEEDS_CONTEXT = re.compile(r"\b(above|previous|earlier|continue|same)\b", re.I)  # first turns only
_LONG_TASK = re.compile(r"\b(write|essay|article|story|blog|explain|describe|create|generate|plan|code|list)\b", re.I)


def _sharegpt_tasks(rng: random.Random) -> list[str]:
    """Short, plain-English first user turns of ShareGPT conversations, shuffled by `rng`."""
    tasks = []
    seen = set()
    for conversation in benchmark_conversations():
        messages = conversation.get("conversations") or []
        if not messages or messages[0].get("from") != "human":
            continue
        text = messages[0].get("value")
        if not isinstance(text, str):
            continue
        text = text.strip()
        if not 20 <= len(text) <= 500 or not text.isascii() or text in seen:
            continue
        if prompt_chars(text) > 1.3 * len(text) or _NEEDS_CONTEXT.search(text):  # code; "the above"
            continue
        seen.add(text)
        tasks.append(text)
    rng.shuffle(tasks)
    return tasks


def _task_kind(text: str) -> str:
    if _LONG_TASK.search(text):
        return "long"
    if text.endswith("?") and len(text) < 120:
        return "short"
    return "medium"


def _chat_mix(n: int, rng: random.Random) -> list[dict]:
    rows: list[dict] = []
    if n == 0:
        return rows
    names = list(PERSONAS)
    weights = [PERSONA_WEIGHTS[name] for name in names]
    sharegpt = itertools.cycle(_sharegpt_tasks(rng))  # thousands: repeats only for huge n
    used: set[tuple[str, str]] = set()
    for index in range(n):
        persona = rng.choices(names, weights=weights)[0]
        source = "sharegpt" if persona == "plain" or rng.random() < SHAREGPT_TASK_SHARE else "persona"
        if source == "sharegpt":
            task = next(sharegpt)
            kind = _task_kind(task)
        else:
            for _ in range(50):  # avoid repeating a (persona, task) while there are fresh ones
                template, kind = rng.choice(PERSONA_TASKS[persona])
                task = re.sub(r"\{(\w+)\}", lambda match: rng.choice(SLOTS[match.group(1)]), template)
                if (persona, task) not in used:
                    break
        used.add((persona, task))
        rows.append({
            "id": f"chat-{index:05d}",
            "messages": [
                {"role": "system", "content": PERSONAS[persona]},
                {"role": "user", "content": task},
            ],
            "max_tokens": rng.choice(TASK_TOKENS[kind]),
            "metadata": {"workload": "chat-mix", "persona": persona, "task": source, "kind": kind},
        })
    return rows


# ---------------------------------------------------------------------------------------------
# sharegpt


def _sharegpt(n: int, seed: int) -> list[dict]:
    rows = sharegpt_requests(n, seed=seed)
    for row in rows:
        row["metadata"] = {"workload": "sharegpt", "conversation": row["id"].rsplit("-t", 1)[0]}
    return rows


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(f"usage: python -m batchbin.bench.workloads {{{'|'.join(WORKLOADS)}}} OUT.jsonl [n] [seed]")
    workload, out = sys.argv[1], sys.argv[2]
    size = int(sys.argv[3]) if len(sys.argv) > 3 else None
    seed_arg = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    written = write_jsonl(make_workload(workload, size, seed_arg), out)
    print(f"wrote {written}")
