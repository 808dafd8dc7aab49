"""Benchmark workloads: reproducible request files in BatchBin's input format.

Each workload is a list of request dicts (`id`, `messages`, `max_tokens`, `metadata`), built
from a seed, in shuffled order (so plain vLLM gets no grouping for free):

- `prefix-heavy`: a few dozen real documents of ~600-900 tokens (long ShareGPT answers), each
  followed by 8-12 short questions about it, in the spirit of vLLM's prefix-repetition benchmark.
- `mixed-length`: no shared prefix beyond the chat template; tasks asking for one word, a short
  list, a paragraph or an essay, with `max_tokens` to match.
- `chat-mix`: five system prompts (6 to ~400 tokens) with varied user tasks and lengths.
- `sharegpt`: real multi-turn ShareGPT conversations, every turn with its history.

    python -m batchbin.bench.workloads prefix-heavy prompts.jsonl [n_requests] [seed]
"""

from __future__ import annotations

import itertools
import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

from batchbin.bench.sharegpt import load_conversations, prompt_chars, sharegpt_requests

WORKLOADS = ("prefix-heavy", "mixed-length", "chat-mix", "sharegpt")

# Default sizes: a few minutes per variant on the slow 2-core CPU (see /work/shared/ENVIRONMENT.md).
DEFAULT_SIZES = {"prefix-heavy": 240, "mixed-length": 160, "chat-mix": 160, "sharegpt": 120}


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
    else:
        rows = _sharegpt(n, seed)
    if shuffle:
        rng.shuffle(rows)
    if max_tokens is not None:
        for row in rows:
            row["max_tokens"] = max_tokens
    return rows


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


# ---------------------------------------------------------------------------------------------
# prefix-heavy

DOCUMENT_SYSTEM_PROMPT = (
    "You answer questions about the document the user gives you. "
    "Use only the document, and answer briefly."
)
# Plain English prose runs ~4.4 characters per token with the default model's tokenizer.
DOCUMENT_CHARS = (2900, 3900)  # ~600-900 tokens
QUESTIONS_PER_DOCUMENT = (8, 12)

# (question, max_tokens choices): short answers, 16-48 tokens.
DOCUMENT_QUESTIONS = [
    ("In one word, what is the main topic of the document?", (16,)),
    ("Give the document a short title.", (16, 24)),
    ("Summarize the document in one sentence.", (32, 48)),
    ("Who is the intended audience of the document?", (24, 32)),
    ("Is the tone of the document formal or informal? Answer in one word.", (16,)),
    ("List three key terms from the document.", (24, 32)),
    ("What is the first point the document makes?", (32, 48)),
    ("What is the last point the document makes?", (32, 48)),
    ("Does the document mention any numbers? Answer yes or no.", (16,)),
    ("What is one question a reader might still have after reading the document?", (32, 48)),
    ("Name one example given in the document.", (24, 32)),
    ("How many main points does the document make? Answer with a number.", (16,)),
    ("What does the document recommend doing?", (32, 48)),
    ("Rate the document's clarity from 1 to 10. Answer with the number only.", (16,)),
    ("Which sentence of the document is the most important? Quote it.", (32, 48)),
    ("Does the document argue for something, or only describe? Answer in a few words.", (16, 24)),
]
TERM_QUESTIONS = [
    ("What does the document say about {term}?", (32, 48)),
    ("Is {term} presented positively or negatively in the document? Answer in a few words.", (16, 24)),
]
_STOPWORDS = set(
    "about above after again against because before being below between both could does doing "
    "during each further having here itself just more most other ought ourselves over same should "
    "some such than that their theirs them themselves then there these they this those through under "
    "until very what when where which while whom with would your yours yourself also into only "
    "will were been have from make like well many must need used using include including "
    "following example important provide different however overall additionally finally sure "
    "first second third another each every help ensure".split()
)


def _documents(count: int, rng: random.Random) -> list[str]:
    """`count` long, plain-English assistant answers from ShareGPT with distinct openings."""
    conversations = load_conversations()
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

TOPICS = [
    "Photosynthesis", "Black holes", "The French Revolution", "Sourdough bread", "Plate tectonics",
    "Quantum entanglement", "The Roman aqueducts", "Jazz improvisation", "Honeybee colonies",
    "Compound interest", "The printing press", "Coral reefs", "Public-key cryptography",
    "Volcanic eruptions", "The Silk Road", "Vaccines", "Origami", "Glaciers", "Chess openings",
    "The human heart", "Solar panels", "Ancient Egyptian pyramids", "Machine translation",
    "Monarch butterfly migration", "Inflation", "The Great Barrier Reef", "Renaissance painting",
    "Nuclear fusion", "Tea ceremonies in Japan", "Rainforests", "The Moon landing", "Fermentation",
    "Electric cars", "Shakespeare's sonnets", "Antibiotic resistance", "Desert ecosystems",
    "The stock market", "Bicycle gears", "Sleep cycles", "Recycling plastics", "Wind turbines",
    "The Olympic Games", "Octopus intelligence", "Impressionism", "GPS satellites", "Earthquakes",
    "The immune system", "Cheese making", "Lighthouses", "Medieval castles", "Tides",
    "Bird song", "Supply chains", "Opera", "Typography", "Hydroponic farming", "The Amazon River",
    "Telescopes", "Ballet", "Container shipping", "DNA replication", "Habits", "Beekeeping",
    "Climate models", "Bridges", "Meditation", "The Hubble constant", "Minimalist architecture",
    "Elephant memory", "Wildfires", "The metric system", "Libraries", "Submarines", "Mushrooms",
    "Video game design", "Rivers and deltas", "The Cold War", "Penguins", "Spreadsheets",
    "Mount Everest", "Hurricanes", "Calligraphy", "Marathon training", "Blockchains",
    "Ancient Greek theater", "Wolves", "Batteries", "Urban gardening", "Comets", "Microplastics",
    "Sign languages", "The Industrial Revolution", "Kites", "Antarctica", "Clocks", "Coffee",
    "Robotics", "Fossils", "Democracy in Athens", "Skyscrapers", "Whales", "Volunteering",
    "Auroras", "Paper money", "Camouflage in animals", "Sushi", "The Internet", "Tsunamis",
    "Violins", "Genetic engineering", "Lightning", "Public transport", "Mars rovers", "Chocolate",
    "Ocean currents", "Stained glass", "Ants", "Vertical farming", "Weather balloons", "Podcasts",
    "Cave paintings", "Space stations", "Composting", "Magnetism", "Knitting", "Dinosaurs",
    "Cloud computing", "The Byzantine Empire", "Rainbows", "Hot air balloons", "Mangroves",
]

# (kind, max_tokens choices, templates): the topic comes first, so requests share no prefix.
LENGTH_CLASSES = [
    ("word", (8, 12, 16), [
        "{topic}: which field of knowledge does this belong to? Reply with one word only.",
        "{topic}. On a scale of 1 to 10, how hard is this for a beginner to learn? Reply with a single number.",
        "{topic} - give the one word that best describes it. Only the word.",
        "{topic}: roughly how many years ago did people first know about it? Answer with a number only.",
    ]),
    ("list", (32, 48, 64), [
        "{topic}: list five key facts, one short line each.",
        "{topic} - name three common misconceptions as a short bulleted list.",
        "{topic}. Give a numbered list of four terms a beginner should know.",
    ]),
    ("paragraph", (96, 128, 160), [
        "{topic}: explain it in one paragraph for a curious teenager.",
        "{topic} - write a short paragraph on why it matters today.",
        "{topic}. Describe how it works in a single paragraph.",
    ]),
    ("essay", (224, 256, 320), [
        "{topic}: write a detailed essay of at least five paragraphs covering its history, how it "
        "works, why it matters and the open questions.",
        "{topic} - write a long, thorough guide for a beginner, with an introduction, several "
        "sections and a conclusion.",
        "{topic}. Write an in-depth article of about 600 words about it.",
    ]),
]
LENGTH_WEIGHTS = (0.3, 0.3, 0.25, 0.15)


def _mixed_length(n: int, rng: random.Random) -> list[dict]:
    rows: list[dict] = []
    used: set[tuple[str, str]] = set()
    combinations = len(TOPICS) * sum(len(templates) for _, _, templates in LENGTH_CLASSES)
    for index in range(n):
        kind, choices, templates = rng.choices(LENGTH_CLASSES, weights=LENGTH_WEIGHTS)[0]
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

PERSONAS: dict[str, str] = {
    "plain": "You are a helpful assistant.",
    "support": (
        "You are Max, the technical support agent of Brightline Internet, a home broadband provider. "
        "Be calm and concise. Ask for the customer's router model if it matters. Give numbered steps "
        "for anything the customer has to do, one action per step. Never promise refunds or visits "
        "by an engineer; offer to open a ticket instead. End with one short question that checks "
        "whether the problem is solved."
    ),
    "travel": (
        "You are Ines, a travel planner at Wayfarer & Co., a small agency that designs trips for "
        "independent travellers.\n\n"
        "How you work:\n"
        "- Start from the traveller's constraints: dates, budget, pace, mobility, diet, and who "
        "they travel with. If something important is missing, state the assumption you make.\n"
        "- Prefer public transport, walking and trains over flights for distances under 600 km, "
        "and say how long each leg takes.\n"
        "- Suggest at most three things a day, with a quiet option for the evening.\n"
        "- Name neighbourhoods rather than specific hotels, and give a price range per night in "
        "the local currency.\n"
        "- Mention one seasonal detail (weather, festivals, closures) when it matters.\n\n"
        "Style: warm but efficient, second person, short paragraphs, no exclamation marks, no "
        "emojis. Use headings only for itineraries longer than three days. Never invent opening "
        "hours or prices you cannot know; say 'check before you go' instead."
    ),
    "tutor": (
        "You are Ada, a patient programming tutor for adult beginners learning Python. Your goal "
        "is understanding, not finished homework.\n\n"
        "Teaching rules:\n"
        "1. First restate the learner's problem in one sentence, so they can correct you.\n"
        "2. Explain the underlying idea before showing code. Use everyday analogies (recipes, "
        "shopping lists, post boxes) when a concept is abstract.\n"
        "3. Keep code examples short: at most 15 lines, standard library only, with comments on "
        "the lines that matter. Use descriptive variable names, never single letters except loop "
        "counters.\n"
        "4. When the learner shares broken code, point to the line that fails and explain the "
        "error message in plain words before suggesting a fix. Do not rewrite their whole program.\n"
        "5. End with a small exercise that practises the same idea, and offer a hint, not the "
        "answer.\n\n"
        "Style guide:\n"
        "- Friendly and encouraging, never condescending; do not say 'simply' or 'just'.\n"
        "- Prefer short paragraphs and bullet points. Put code in fenced blocks marked python.\n"
        "- If a question is outside Python or programming, answer briefly and steer back.\n"
        "- If you are unsure about a library's behaviour, say so and suggest how to check it in "
        "the interactive interpreter.\n"
        "- Mention common pitfalls (mutable default arguments, off-by-one errors, integer "
        "division, indentation) when they are relevant to the question, but not otherwise."
    ),
    "bookshop": (
        "You are the customer service assistant of Marginalia Books, an independent online "
        "bookshop based in Bristol that ships new and second-hand books across the UK and to the "
        "EU. Answer customers' emails and chat messages.\n\n"
        "Policies you must apply exactly:\n"
        "- Shipping: standard UK delivery takes 2-4 working days and costs 3.50 GBP, free above 30 "
        "GBP. Express UK delivery (next working day if ordered before 1 pm) costs 6.90 GBP. EU "
        "delivery takes 5-10 working days and costs 9.50 GBP; customs charges may apply and are "
        "paid by the customer.\n"
        "- Returns: new books can be returned within 30 days in unread condition for a full "
        "refund; the customer pays return postage unless the book is faulty or we sent the wrong "
        "item. Second-hand books can be returned within 14 days if their condition does not match "
        "the description.\n"
        "- Damaged or lost parcels: ask for the order number and a photo of the damage; offer a "
        "replacement or a refund, the customer's choice. A parcel counts as lost 10 working days "
        "after dispatch (20 for the EU).\n"
        "- Special orders: out-of-print books can be searched for at no charge; we quote a price "
        "before buying. Special orders cannot be returned unless faulty.\n"
        "- Gift cards are valid for two years and cannot be exchanged for cash.\n"
        "- We never share customers' data and never ask for card numbers by email or chat.\n\n"
        "Tone and format:\n"
        "- Address the customer by name if they give it; sign off as 'The Marginalia team'.\n"
        "- Be friendly and precise, in British English. Keep replies under 150 words unless the "
        "customer asks for a detailed explanation.\n"
        "- When a request falls outside these policies, say what you can do and offer to pass the "
        "question to the shop manager, who replies within two working days.\n"
        "- Recommend books only when asked; then suggest at most three titles, each with one "
        "sentence on why it fits, and say whether it is usually in stock new or second-hand."
    ),
}
PERSONA_WEIGHTS = {"plain": 0.15, "support": 0.2, "travel": 0.2, "tutor": 0.25, "bookshop": 0.2}

SLOTS = {
    "device": ["router", "mesh extender", "smart TV", "laptop", "games console", "phone"],
    "symptom": ["drops out every evening", "is very slow upstairs", "will not connect at all",
                "keeps asking for the password", "shows a red light", "works only near the router"],
    "city": ["Lisbon", "Kyoto", "Edinburgh", "Vienna", "Oaxaca", "Copenhagen", "Istanbul", "Seville",
             "Montreal", "Hanoi", "Krakow", "Cape Town"],
    "days": ["two", "three", "five", "seven", "ten"],
    "who": ["a family with two young children", "a retired couple", "a solo traveller on a budget",
            "two friends who love food", "a wheelchair user", "a photographer"],
    "concept": ["list comprehensions", "dictionaries", "for loops", "functions with default arguments",
                "classes", "exceptions", "reading files", "f-strings", "recursion", "sets", "slicing",
                "while loops", "modules and imports", "sorting with a key"],
    "error": ["IndexError: list index out of range", "TypeError: can only concatenate str (not \"int\") to str",
              "KeyError: 'name'", "IndentationError: unexpected indent", "NameError: name 'total' is not defined",
              "ZeroDivisionError: division by zero"],
    "genre": ["historical fiction", "Scandinavian crime", "popular science", "poetry", "travel writing",
              "graphic novel", "cookery", "teenage fantasy"],
    "problem": ["my parcel arrived with a torn cover", "I ordered the wrong edition",
                "my order has not arrived after two weeks", "I was charged twice",
                "the second-hand book has notes in it that were not described",
                "I want to change my delivery address"],
}

# (template, kind): kind sets max_tokens (see TASK_TOKENS).
PERSONA_TASKS: dict[str, list[tuple[str, str]]] = {
    "support": [
        ("My {device} {symptom}. What should I try first?", "medium"),
        ("Is it normal that my {device} {symptom}? Yes or no, and why in one sentence.", "short"),
        ("Write me a complete troubleshooting checklist: my {device} {symptom}.", "long"),
        ("What does it mean when the {device} {symptom}?", "medium"),
        ("Can you send an engineer? My {device} {symptom}.", "short"),
    ],
    "travel": [
        ("Plan {days} days in {city} for {who}.", "long"),
        ("What is the best neighbourhood to stay in {city} for {who}? One sentence.", "short"),
        ("How do I get from the airport to the centre of {city}?", "medium"),
        ("Write a detailed day-by-day itinerary for {days} days in {city}, for {who}.", "long"),
        ("Is {city} worth visiting in winter? Answer briefly.", "short"),
        ("What should {who} pack for {days} days in {city}?", "medium"),
    ],
    "tutor": [
        ("Can you explain {concept} to me?", "long"),
        ("I get {error}. What does it mean?", "medium"),
        ("In one sentence: when should I use {concept}?", "short"),
        ("Give me a small exercise about {concept}.", "medium"),
        ("Write a complete lesson on {concept} with examples and exercises.", "long"),
        ("Is {concept} something a beginner needs? Yes or no.", "short"),
    ],
    "bookshop": [
        ("Hello, {problem}. What can you do?", "medium"),
        ("Can you recommend three {genre} books?", "medium"),
        ("How much is express delivery?", "short"),
        ("Please explain your full returns policy in detail: {problem}.", "long"),
        ("Do you ship {genre} books to Germany, and how long does it take?", "short"),
        ("Hi, I'm Sam, and {problem}. Can I get a refund?", "medium"),
    ],
}
TASK_TOKENS = {"short": (16, 32), "medium": (48, 64, 96), "long": (128, 192, 256)}
SHAREGPT_TASK_SHARE = 0.4  # the rest are persona tasks (all of "plain" come from ShareGPT)
_NEEDS_CONTEXT = re.compile(r"\b(above|previous|earlier|continue|same)\b", re.I)  # first turns only
_LONG_TASK = re.compile(r"\b(write|essay|article|story|blog|explain|describe|create|generate|plan|code|list)\b", re.I)


def _sharegpt_tasks(rng: random.Random) -> list[str]:
    """Short, plain-English first user turns of ShareGPT conversations, shuffled by `rng`."""
    tasks = []
    seen = set()
    for conversation in load_conversations():
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
