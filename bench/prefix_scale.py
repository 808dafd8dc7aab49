"""Scale check of stage 3 (prefix grouping): N synthetic prompts of about 200 token ids with
nested sharing, grouped by assign_prefix_groups, timed.

    python -m batchbin.bench.prefix_scale --prompts 1000000

The prompts are generated inside DuckDB (deterministic for a --seed) into a database file:
- a few system prompts of different lengths (some shorter than one KV block, some longer),
- many documents (20-80 tokens) under a system prompt, picked with a skewed popularity,
- then a question: for most prompts one of a few instruction templates, always random tokens,
- and 5% of prompts are random throughout (nothing to share).
Prints one line: the time of the grouping (and of the generation), the CPU and the stats.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from batchbin.store import db
from batchbin.tasks.prefixes import DEFAULT_MIN_SHARED_TOKENS, assign_prefix_groups

RUN_ID = "bench-prefix-scale"
VOCAB = 32000
SYSTEM_LENGTHS = [150, 140, 60, 30, 170, 130]  # tokens of each system prompt
TEMPLATES = 40  # instruction templates a question may start with

# Kept here rather than in sql/: this is a benchmark's data generator, not pipeline SQL.
GENERATE = """
DELETE FROM tokens WHERE run_id = $run_id;
CREATE OR REPLACE TABLE prefix_bench_systems AS
SELECT s AS system_id,
       list_transform(range(len), lambda i: (hash($seed, 'sys', s, i) % $vocab)::INTEGER) AS ids
FROM (SELECT unnest(range(len($lengths))) AS s, unnest($lengths) AS len);
CREATE OR REPLACE TABLE prefix_bench_docs AS
SELECT d AS doc_id, hash($seed, 'doc-sys', d) % len($lengths) AS system_id,
       list_transform(range((20 + hash($seed, 'doc-len', d) % 61)::BIGINT),
                      lambda i: (hash($seed, 'doc', d, i) % $vocab)::INTEGER) AS ids
FROM range($docs) t(d);
CREATE OR REPLACE TABLE prefix_bench_templates AS
SELECT t AS template_id,
       list_transform(range(3 + t % 6), lambda i: (hash($seed, 'tpl', t, i) % $vocab)::INTEGER) AS ids
FROM range($templates) r(t);
INSERT INTO tokens (run_id, request_id, token_ids, prompt_tokens)
SELECT $run_id, 'q' || q, ids, len(ids)
FROM (
    SELECT q,
           CASE WHEN hash($seed, 'solo', q) % 100 < 5
                THEN list_transform(range(200), lambda i: (hash($seed, 'solo-tok', q, i) % $vocab)::INTEGER)
                ELSE list_concat(s.ids, d.ids,
                                 CASE WHEN hash($seed, 'tpl-use', q) % 100 < 70 THEN t.ids ELSE []::INTEGER[] END,
                                 list_transform(range((5 + hash($seed, 'q-len', q) % 36)::BIGINT),
                                                lambda i: (hash($seed, 'q', q, i) % $vocab)::INTEGER))
           END AS ids
    FROM (
        -- skewed document popularity: u^2 puts more questions on the low document ids
        SELECT q, floor(pow((hash($seed, 'pick', q) % 1000003) / 1000003.0, 2) * $docs)::BIGINT AS doc_id,
               hash($seed, 'tpl-pick', q) % $templates AS template_id
        FROM range($prompts) r(q)
    ) p
    JOIN prefix_bench_docs d USING (doc_id)
    JOIN prefix_bench_systems s USING (system_id)
    JOIN prefix_bench_templates t USING (template_id)
);
DROP TABLE prefix_bench_systems;
DROP TABLE prefix_bench_docs;
DROP TABLE prefix_bench_templates;
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def generate(con, prompts: int, docs: int, seed: int) -> None:
    params = {
        "run_id": RUN_ID, "seed": seed, "vocab": VOCAB, "lengths": SYSTEM_LENGTHS,
        "docs": docs, "templates": TEMPLATES, "prompts": prompts,
    }
    for statement in (s.strip() for s in GENERATE.split(";\n")):
        if statement:
            names = {name for name in params if f"${name}" in statement}
            con.execute(statement, {name: params[name] for name in names})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1_000_000)
    parser.add_argument("--docs", type=int, default=None, help="documents (default: prompts / 50)")
    parser.add_argument("--min-shared-tokens", type=int, default=DEFAULT_MIN_SHARED_TOKENS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", default=None, help="database file to use and keep (default: a temporary file)")
    args = parser.parse_args(argv)
    docs = args.docs or max(1, args.prompts // 50)

    with tempfile.TemporaryDirectory(prefix="prefix_scale_") as tmp:
        path = args.db or os.path.join(tmp, "prefix_scale.duckdb")
        con = db.connect(path)
        try:
            started = time.perf_counter()
            generate(con, args.prompts, docs, args.seed)
            generated = time.perf_counter() - started
            started = time.perf_counter()
            stats = assign_prefix_groups(con, RUN_ID, args.min_shared_tokens)
            grouped = time.perf_counter() - started
        finally:
            con.close()

    saved = stats["ideal_cached_tokens"] / stats["prompt_tokens"] if stats["prompt_tokens"] else 0.0
    print(
        f"prefix_scale: {stats['prompts']} prompts, {stats['prompt_tokens']} tokens grouped in {grouped:.1f} s "
        f"(generated in {generated:.1f} s; {os.cpu_count()} cores, {cpu_name()}): "
        f"groups={stats['groups']} distinct_tokens={stats['distinct_tokens']} "
        f"ideal_cached_tokens={stats['ideal_cached_tokens']} ({saved:.1%}) "
        f"min_shared_tokens={args.min_shared_tokens}"
    )
    return {**stats, "seconds": grouped, "generate_seconds": generated}


if __name__ == "__main__":
    main()
