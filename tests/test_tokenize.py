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
