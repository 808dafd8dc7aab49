"""Benchmark workloads (bench/workloads.py): reproducible, valid BatchBin input, right shapes."""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

from batchbin.bench.workloads import (
    DEFAULT_SIZES,
    DOCUMENT_CHARS,
    PERSONAS,
    QUESTIONS_PER_DOCUMENT,
    WORKLOADS,
    default_size,
    make_workload,
    write_jsonl,
)
from batchbin.io.readers import read_rows
from batchbin.io.request_schema import validate_rows


@pytest.mark.parametrize("name", WORKLOADS)
def test_default_size_and_exact_sizes(name):
    assert len(make_workload(name)) == default_size(name) == DEFAULT_SIZES[name]
    for n in (0, 1, 13):
        assert len(make_workload(name, n_requests=n)) == n


@pytest.mark.parametrize("name", WORKLOADS)
def test_reproducible_from_the_seed(name):
    assert make_workload(name, 40, seed=5) == make_workload(name, 40, seed=5)
    assert make_workload(name, 40, seed=5) != make_workload(name, 40, seed=6)


@pytest.mark.parametrize("name", WORKLOADS)
def test_rows_are_valid_batchbin_input(name, tmp_path):
    rows = make_workload(name, 60, seed=2)
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert row["id"] and isinstance(row["max_tokens"], int) and row["max_tokens"] >= 1
        assert "prompt" not in row
        assert row["messages"][-1]["role"] == "user"
        assert all(message["content"].strip() for message in row["messages"])
        assert row["metadata"]["workload"] == name
    path = write_jsonl(rows, tmp_path / "sub" / f"{name}.jsonl")
    valid, rejects = validate_rows(read_rows(path))
    assert rejects == [] and len(valid) == len(rows)
    assert [entry["request_id"] for entry in valid] == [row["id"] for row in rows]


@pytest.mark.parametrize("name", WORKLOADS)
def test_max_tokens_override(name):
    assert {row["max_tokens"] for row in make_workload(name, 20, max_tokens=7)} == {7}


def test_unknown_workload_and_bad_sizes():
    with pytest.raises(ValueError, match="unknown workload"):
        make_workload("nope")
    with pytest.raises(ValueError):
        default_size("nope")
    with pytest.raises(ValueError):
        make_workload("chat-mix", -1)


def test_larger_sizes_keep_ids_unique():
    for name in ("mixed-length", "chat-mix"):
        rows = make_workload(name, 600)
        assert len({row["id"] for row in rows}) == 600


def test_rows_are_shuffled_unless_asked_not_to():
    shuffled = make_workload("prefix-heavy", 60)
    ordered = make_workload("prefix-heavy", 60, shuffle=False)
    assert sorted(row["id"] for row in shuffled) == [row["id"] for row in ordered]
    assert [row["id"] for row in shuffled] != [row["id"] for row in ordered]


def test_prefix_heavy_shape():
    rows = make_workload("prefix-heavy")
    documents = defaultdict(list)
    for row in rows:
        system, user = row["messages"]
        assert system["role"] == "system" and user["role"] == "user"
        document, question = user["content"].split("\n\nQuestion: ")
        assert document.startswith("Document:\n") and question
        documents[row["metadata"]["document"]].append((document, question))
        assert 16 <= row["max_tokens"] <= 48
    assert 20 <= len(documents) <= 30
    counts = sorted(len(members) for members in documents.values())
    assert all(QUESTIONS_PER_DOCUMENT[0] <= count <= QUESTIONS_PER_DOCUMENT[1] for count in counts[1:])
    texts = set()
    for members in documents.values():
        assert len({document for document, _ in members}) == 1  # one shared document per group
        assert len({question for _, question in members}) == len(members)
        text = members[0][0][len("Document:\n"):]
        assert DOCUMENT_CHARS[0] <= len(text) <= DOCUMENT_CHARS[1]
        texts.add(text[:200])
    assert len(texts) == len(documents)  # documents differ from the start
    assert len({row["max_tokens"] for row in rows}) >= 3


def common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def test_mixed_length_has_no_shared_prefix_and_varied_lengths():
    rows = make_workload("mixed-length")
    prompts = sorted(row["messages"][0]["content"] for row in rows)
    assert all(len(row["messages"]) == 1 for row in rows)
    assert len(set(prompts)) == len(prompts)
    # Neighbours in sorted order have the longest common prefixes: well under 32 tokens.
    assert max(common_prefix(a, b) for a, b in zip(prompts, prompts[1:])) < 60
    kinds = {row["metadata"]["kind"] for row in rows}
    assert kinds == {"word", "list", "paragraph", "essay"}
    limits = [row["max_tokens"] for row in rows]
    assert min(limits) <= 16 and max(limits) >= 256 and len(set(limits)) >= 8


def test_chat_mix_has_several_system_prompts_of_different_lengths():
    rows = make_workload("chat-mix")
    systems = {row["messages"][0]["content"] for row in rows}
    assert all(row["messages"][0]["role"] == "system" for row in rows)
    assert 4 <= len(systems) <= 6 and systems <= set(PERSONAS.values())
    lengths = sorted(len(system) for system in systems)
    assert lengths[0] < 100 and sum(length > 600 for length in lengths) >= 2  # 150-400+ tokens
    limits = {row["max_tokens"] for row in rows}
    assert min(limits) <= 32 and max(limits) >= 192 and len(limits) >= 5
    tasks = [row["messages"][1]["content"] for row in rows]
    assert len(set(tasks)) > 0.9 * len(tasks)


def test_sharegpt_workload_keeps_conversation_prefixes_after_shuffling():
    rows = make_workload("sharegpt")
    assert {row["max_tokens"] for row in rows} == {64}
    conversations = defaultdict(list)
    for row in rows:
        conversations[row["metadata"]["conversation"]].append(row)
    assert 20 <= len(conversations) <= 60
    for members in conversations.values():
        members.sort(key=lambda row: len(row["messages"]))
        for earlier, later in zip(members, members[1:]):
            assert later["messages"][: len(earlier["messages"])] == earlier["messages"]
