"""Stage 2's token ids are exactly what the model's tokenizer gives one request at a time."""

from __future__ import annotations

import json

from batchbin.tasks.tokenize import load_tokenizer, render_token_ids


def test_batched_token_ids_match_one_call_per_request(default_model_path):
    tokenizer = load_tokenizer(default_model_path)
    chats = [[{"role": "user", "content": "Name a colour."}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]]
    prompts = [None, "The three primary colors are", None, "Once upon a time"]
    messages = [json.dumps(chats[0]), None, json.dumps(chats[1]), None]

    ids = render_token_ids(tokenizer, prompts, messages)

    for chat, row_ids in ((chats[0], ids[0]), (chats[1], ids[2])):
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert row_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[1] == tokenizer("The three primary colors are")["input_ids"]
    assert ids[3] == tokenizer("Once upon a time")["input_ids"]
    assert render_token_ids(tokenizer, [], []) == []


def test_threads_encode_the_same_ids_in_the_same_order(default_model_path, monkeypatch):
    import batchbin.tasks.tokenize as tokenize_module

    tokenizer = load_tokenizer(default_model_path)
    texts = [f"Request number {i}: " + "word " * (i % 7) for i in range(9)]
    one_call = tokenizer(texts, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(tokenize_module, "MIN_TEXTS_PER_THREAD", 2)
    monkeypatch.setattr(tokenize_module.os, "sched_getaffinity", lambda pid: {0, 1, 2})  # 3 slices: 3, 3, 3
    assert tokenize_module.encode_on_all_cores(tokenizer, texts, add_special_tokens=False) == one_call


def test_tokenizing_in_chunks_stores_every_prompt_once_and_rejects_the_too_long(db_path, tmp_path, default_model_path):
    from batchbin.store import db
    from batchbin.tasks.load import load_requests
    from batchbin.tasks.tokenize import tokenize_run

    rows = [{"id": f"p{i}", "prompt": f"Count to {i}."} for i in range(4)]
    rows.append({"id": "long", "prompt": "word " * 40})
    rows.append({"id": "chat", "messages": [{"role": "user", "content": "Hi"}]})
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    con = db.connect(db_path)
    load_requests(con, "r", str(path))
    tokenizer = load_tokenizer(default_model_path)
    assert tokenize_run(con, "r", default_model_path, max_model_len=24, chunk=2) == {"tokenized": 4, "too_long": 2}
    # tokenizing again replaces the token ids, and the rejects stay as they are
    assert tokenize_run(con, "r", default_model_path, max_model_len=24, chunk=2) == {"tokenized": 4, "too_long": 0}
    stored = dict(con.execute("select request_id, token_ids from tokens where run_id = 'r'").fetchall())
    assert sorted(stored) == ["p0", "p1", "p2", "p3"]  # the chat turn's template alone is longer than 24
    assert stored["p2"] == tokenizer("Count to 2.")["input_ids"]
    rejected = con.execute("select request_id, field from rejects where run_id = 'r' order by request_id").fetchall()
    assert rejected == [("chat", "prompt_tokens"), ("long", "prompt_tokens")]
    load_requests(con, "r", str(path))  # loading again brings the long prompts back: rejected once more, not twice
    assert tokenize_run(con, "r", default_model_path, max_model_len=24, chunk=2) == {"tokenized": 4, "too_long": 2}
    assert con.execute("select count(*) from rejects where run_id = 'r'").fetchone()[0] == 2
    con.close()
