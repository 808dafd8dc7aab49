"""Features of one request for the output-length predictor: pure functions over plain Python.

A request is a dict with the columns that sql/predictors.sql returns:
    {"prompt": str | None, "messages": str | list | None, "max_tokens": int,
     "prompt_tokens": int | None, "group_size": int | None}
`messages` is the chat as JSON text or as the parsed list of {role, content}.

The feature vector is, in order:
  - NUMERIC_FEATURES: log prompt tokens, log max_tokens, the last user message's length, turns,
    prefix-group size, the length explicitly asked for ("in 50 words", "3 paragraphs"), and the
    lengths of the chat's earlier answers (the strongest single cue in multi-turn chats);
  - CUES: 0/1 flags for words that announce a short or a long answer ("one word", "briefly",
    "essay", "list", "explain", "step by step", ...), read in the last user message;
  - n_buckets signed hashed counts of the last user message's words and word bigrams
    (blake2b, so the same text gives the same vector in every process; Python's hash() is salted).

    from batchbin.predictors.features import FeatureSettings, feature_matrix
    X = feature_matrix([{"prompt": "Name one colour.", "max_tokens": 64}], FeatureSettings())
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

FEATURES_VERSION = 3  # bump when the meaning of a column changes (old checkpoints then refuse to load)


@dataclass(frozen=True)
class FeatureSettings:
    n_buckets: int = 256       # hashed bag-of-words width
    bigrams: bool = True       # hash word bigrams too
    head_chars: int = 1500     # only the head and the tail of a long message are hashed and
    tail_chars: int = 500      # searched for cues: instructions sit there, pasted documents between
    version: int = FEATURES_VERSION


NUMERIC_FEATURES = [
    "log_prompt_tokens",
    "log_max_tokens",
    "log_user_words",
    "log_user_chars",
    "log_turns",
    "has_system",
    "log_group_size",
    "asked_length",        # log1p of the tokens an explicit "N words/sentences/..." asks for
    "has_asked_length",
    "ends_with_question",
    "log_prev_answer_chars",   # the chat's last assistant message: answers in one chat run alike
    "log_mean_answer_chars",   # mean log length of the chat's assistant messages
    "log_history_chars",       # everything before the last user message
    "prev_answer_code",        # the last answer held code (```)
    "prev_answer_list",        # ... a numbered or bulleted list
    "prev_answer_cut",         # ... stopped without ending a sentence (a "continue" follows)
    "asks_to_continue",        # a short "continue" / "go on" / "more" / "next"
    "user_code",               # the last user message holds code (```)
    "log_prev_answer_lines",
    "log_user_lines",
]

# Cue flags: a regex over the lower-cased last user message. Short-answer cues first.
CUES: dict[str, str] = {
    "one_word": r"\b(?:one|single|1)[- ]word\b|\bone or two words\b|\bin a word\b",
    "yes_no": r"\byes or no\b|\btrue or false\b|\byes/no\b",
    "brief": r"\b(?:brief(?:ly)?|short(?:ly)?|concise(?:ly)?|succinct(?:ly)?|quick(?:ly)?|tl;?dr)\b",
    "one_sentence": r"\b(?:one|single|a|1) sentence\b|\bone line\b",
    "only_answer": r"\b(?:only|just) (?:the )?(?:answer|number|name|result)\b|\banswer only\b",
    "classify": r"\b(?:classify|categori[sz]e|sentiment|label|which (?:one|of))\b",
    "translate": r"\btranslat(?:e|ion)\b",
    "list": r"\b(?:list|enumerate|bullet|bullets|items|ideas|tips|examples|reasons|ways)\b",
    "explain": r"\b(?:explain|describe|discuss|compare|why|how (?:does|do|can|to))\b",
    "step_by_step": r"\bstep[- ]by[- ]step\b|\bsteps\b",
    "long_form": r"\b(?:essay|story|article|blog|report|letter|speech|poem|chapter|script)\b",
    "detailed": r"\b(?:detailed|in detail|comprehensive|thorough(?:ly)?|elaborate|in depth|long)\b",
    "code": r"\b(?:code|function|program|implement|python|javascript|sql|class)\b|```",
    "summarize": r"\b(?:summari[sz]e|summary)\b",
}
SHORT_CUES = ("one_word", "yes_no", "brief", "one_sentence", "only_answer", "classify")
LONG_CUES = ("list", "step_by_step", "long_form", "detailed", "code")

_CUE_RE = {name: re.compile(pattern) for name, pattern in CUES.items()}
# One pattern per cue kind: "is there any short (long) cue" in one pass instead of one per cue.
_SHORT_RE = re.compile("|".join(f"(?:{CUES[name]})" for name in SHORT_CUES))
_LONG_RE = re.compile("|".join(f"(?:{CUES[name]})" for name in LONG_CUES))
_LIST_LINE = re.compile(r"^\s*(?:\d+\.|[-*])\s", re.M)
_CONTINUE = re.compile(r"\b(?:continue|go on|more|next)\b")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30,
    "fifty": 50, "hundred": 100, "a few": 3, "several": 4,
}
# Rough output tokens per unit asked for ("5 sentences" -> 5 * 22 tokens).
_TOKENS_PER_UNIT = {
    "word": 1.4, "words": 1.4, "sentence": 22, "sentences": 22, "line": 12, "lines": 12,
    "paragraph": 90, "paragraphs": 90, "page": 500, "pages": 500,
    "item": 15, "items": 15, "point": 15, "points": 15, "bullet": 15, "bullets": 15,
    "tip": 25, "tips": 25, "idea": 25, "ideas": 25, "example": 25, "examples": 25,
    "reason": 25, "reasons": 25, "way": 25, "ways": 25, "step": 25, "steps": 25,
    "question": 20, "questions": 20, "fact": 20, "facts": 20, "name": 3, "names": 3,
}
_ASKED = re.compile(
    r"\b(\d{1,5}|" + "|".join(sorted((re.escape(w) for w in _NUMBER_WORDS), key=len, reverse=True)) + r")"
    r"(?:\s+(?:\w+\s+){0,2}?)?\s*(" + "|".join(sorted(_TOKENS_PER_UNIT, key=len, reverse=True)) + r")\b"
)


def n_features(settings: FeatureSettings) -> int:
    """Width of the feature vector."""
    return len(NUMERIC_FEATURES) + len(CUES) + settings.n_buckets


def feature_names(settings: FeatureSettings) -> list[str]:
    return NUMERIC_FEATURES + [f"cue_{name}" for name in CUES] + [f"bow_{i}" for i in range(settings.n_buckets)]


def parse_messages(messages) -> list[dict]:
    """Chat messages as a list of {role, content} with content as text (parts joined)."""
    if messages is None:
        return []
    if isinstance(messages, str):
        messages = json.loads(messages)
    out = []
    for message in messages or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, list):  # OpenAI-style parts: [{"type": "text", "text": ...}]
            content = " ".join(str(part.get("text", "")) if isinstance(part, dict) else str(part) for part in content)
        out.append({"role": str(message.get("role", "")), "content": "" if content is None else str(content)})
    return out


def last_user_text(request: dict) -> str:
    """The plain prompt, or the last user message of a chat (the last message if no user turn)."""
    if request.get("prompt") is not None:
        return str(request["prompt"])
    messages = parse_messages(request.get("messages"))
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    return messages[-1]["content"] if messages else ""


def instruction_window(text: str, settings: FeatureSettings) -> str:
    """The head and tail of a long text, where the instructions are."""
    if len(text) <= settings.head_chars + settings.tail_chars:
        return text
    return text[: settings.head_chars] + " \n " + text[-settings.tail_chars:]


def cue_flags(text: str) -> dict[str, bool]:
    """Which cue patterns occur in a (lower-cased) text."""
    return {name: bool(pattern.search(text)) for name, pattern in _CUE_RE.items()}


def has_short_cue(text: str) -> bool:
    """Whether a (lower-cased) text has any of SHORT_CUES."""
    return _SHORT_RE.search(text) is not None


def has_long_cue(text: str) -> bool:
    """Whether a (lower-cased) text has any of LONG_CUES."""
    return _LONG_RE.search(text) is not None


def asked_length(text: str) -> float | None:
    """Output tokens an explicit request asks for ("in 100 words", "three paragraphs"), else None.

    The largest such request wins; "under 50 words" counts as 50 words.
    """
    best = None
    for match in _ASKED.finditer(text):
        count_text, unit = match.group(1), match.group(2)
        count = int(count_text) if count_text.isdigit() else _NUMBER_WORDS[count_text]
        if count <= 0 or count > 10_000:
            continue
        tokens = count * _TOKENS_PER_UNIT[unit]
        best = tokens if best is None else max(best, tokens)
    return best


@lru_cache(maxsize=1 << 16)
def _bucket(term: str, n_buckets: int) -> tuple[int, float]:
    """Deterministic bucket and sign of a term (the same in every process)."""
    digest = int.from_bytes(hashlib.blake2b(term.encode(), digest_size=8).digest(), "little")
    return digest % n_buckets, (1.0 if (digest >> 63) & 1 else -1.0)


def hashed_bag(text: str, settings: FeatureSettings) -> np.ndarray:
    """Signed hashed counts of words (and bigrams), scaled to unit length."""
    words = _WORD.findall(text)
    terms = list(words)
    if settings.bigrams:
        terms += [f"{a} {b}" for a, b in zip(words, words[1:])]
    if not terms:
        return np.zeros(settings.n_buckets, dtype=np.float32)
    indices, signs = zip(*(_bucket(term, settings.n_buckets) for term in terms))
    vector = np.bincount(indices, weights=signs, minlength=settings.n_buckets).astype(np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def request_features(request: dict, settings: FeatureSettings) -> np.ndarray:
    """The feature vector of one request (see the module docstring for its layout)."""
    user_text = last_user_text(request)
    lowered = instruction_window(user_text, settings).lower()
    messages = parse_messages(request.get("messages")) if request.get("prompt") is None else []
    prompt_tokens = request.get("prompt_tokens")
    if prompt_tokens is None:  # not tokenized: about four characters a token
        all_text = user_text if not messages else " ".join(m["content"] for m in messages)
        prompt_tokens = len(all_text) / 4
    asked = asked_length(lowered)
    answers = [math.log1p(len(m["content"])) for m in messages if m["role"] == "assistant"]
    history_chars = sum(len(m["content"]) for m in messages) - len(user_text) if messages else 0
    previous = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
    ending = previous.rstrip()[-1:]
    numeric = [
        math.log1p(max(0.0, float(prompt_tokens))),
        math.log1p(max(1, int(request["max_tokens"]))),
        math.log1p(len(user_text.split())),
        math.log1p(len(user_text)),
        math.log1p(max(1, len(messages))),
        float(any(m["role"] == "system" for m in messages)),
        math.log1p(request.get("group_size") or 1),
        math.log1p(asked) if asked is not None else 0.0,
        float(asked is not None),
        float(user_text.rstrip().endswith("?")),
        answers[-1] if answers else 0.0,
        sum(answers) / len(answers) if answers else 0.0,
        math.log1p(max(0, history_chars)),
        float("```" in previous),
        float(_LIST_LINE.search(previous) is not None),
        float(bool(ending) and ending not in ".!?)\"'`"),
        float(len(user_text.strip()) < 40 and _CONTINUE.search(user_text.lower()) is not None),
        float("```" in user_text),
        math.log1p(previous.count("\n")),
        math.log1p(user_text.count("\n")),
    ]
    flags = cue_flags(lowered)
    cues = [float(flags[name]) for name in CUES]
    return np.concatenate([np.asarray(numeric + cues, dtype=np.float32), hashed_bag(lowered, settings)])


def feature_matrix(requests: list[dict], settings: FeatureSettings) -> np.ndarray:
    """Feature vectors of many requests, one row each (float32, shape [n, n_features])."""
    if not requests:
        return np.zeros((0, n_features(settings)), dtype=np.float32)
    return np.stack([request_features(request, settings) for request in requests])
