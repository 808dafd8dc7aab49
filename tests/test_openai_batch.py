"""OpenAI batch files: their request lines load as BatchBin requests (or are rejected naming the
field in the line), and results go back out as their output lines."""

from __future__ import annotations

import json

import pytest

from batchbin.io.openai_batch import OpenAIBatchLineError, output_line, request_from_batch_line
from batchbin.io.readers import is_openai_batch_file
from batchbin.tasks.load import load_requests

CHAT = {"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "max_completion_tokens": 16, "temperature": 0.2, "seed": 4,
                 "messages": [{"role": "developer", "content": "Be brief."},
                              {"role": "user", "content": [{"type": "text", "text": "Capital"},
                                                           {"type": "text", "text": "of France?"}]}]}}
COMPLETION = {"custom_id": 2, "url": "/v1/completions",
              "body": {"model": "x", "prompt": "Once upon a time", "max_tokens": 8, "stop": "\n", "n": 1}}


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def test_chat_line_becomes_a_chat_request():
    assert request_from_batch_line(CHAT) == {
        "id": "c1", "max_tokens": 16, "temperature": 0.2, "seed": 4,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital\nof France?"}],
    }


def test_completion_line_becomes_a_prompt_request():
    assert request_from_batch_line(COMPLETION) == {"id": 2, "prompt": "Once upon a time", "max_tokens": 8, "stop": "\n"}


def test_vllms_extra_parameters_for_a_fixed_length_pass_through():
    line = {"custom_id": "L", "body": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40,
                                       "min_tokens": 40, "ignore_eos": True}}
    assert request_from_batch_line(line) == {"id": "L", "max_tokens": 40, "min_tokens": 40, "ignore_eos": True,
                                             "messages": [{"role": "user", "content": "hi"}]}


def test_endpoint_follows_the_body_without_url():
    line = {"custom_id": "a", "body": {"messages": [{"role": "user", "content": "hi"}]}}
    assert request_from_batch_line(line)["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("change, field, words", [
    ({"method": "GET"}, "method", "POST"),
    ({"url": "/v1/embeddings"}, "url", "/v1/chat/completions"),
    ({"body": "text"}, "body", "JSON object"),
    ({"body": {**CHAT["body"], "n": 3}}, "body.n", "not supported"),
    ({"body": {**CHAT["body"], "tools": [{"type": "function"}]}}, "body.tools", "not supported"),
    ({"body": {**CHAT["body"], "mystery": 1}}, "body.mystery", "unknown field"),
    ({"body": {**CHAT["body"], "prompt": "x"}}, "body.prompt", "takes 'messages'"),
    ({"body": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}},
     "body.messages.0.content.0", "only text parts"),
])
def test_lines_batchbin_cannot_run_name_the_field(change, field, words):
    with pytest.raises(OpenAIBatchLineError) as raised:
        request_from_batch_line({**CHAT, **change})
    assert raised.value.field == field
    assert words in str(raised.value)


def test_unused_fields_at_their_neutral_value_are_accepted():
    body = {**CHAT["body"], "n": 1, "stream": False, "presence_penalty": 0, "logprobs": False, "tools": []}
    assert request_from_batch_line({**CHAT, "body": body})["id"] == "c1"


def test_a_prompt_list_is_rejected():
    with pytest.raises(OpenAIBatchLineError, match="one prompt per line"):
        request_from_batch_line({**COMPLETION, "body": {"prompt": ["a", "b"]}})


def test_batch_file_loads_with_rejects_naming_the_line_field(fresh_db, tmp_path):
    path = write_lines(tmp_path / "batch.jsonl", [
        CHAT, COMPLETION,
        {"custom_id": "c1", "body": {"messages": [{"role": "user", "content": "again"}]}},
        {"custom_id": "bad", "body": {"messages": [{"role": "user", "content": "q"}], "temperature": -1}},
        {"body": {"prompt": "no custom id"}},
        {"custom_id": "emb", "url": "/v1/embeddings", "body": {"input": "x"}},
    ])
    assert is_openai_batch_file(path)
    assert load_requests(fresh_db, "r", path) == {"requests": 2, "rejects": 4}
    assert fresh_db.execute("select request_id, prompt is null, max_tokens from prompts order by row_number").fetchall() == [
        ("c1", True, 16), ("2", False, 8)]
    rejects = fresh_db.execute("select row_number, request_id, field, reason from rejects order by row_number").fetchall()
    assert [(row, request_id, field) for row, request_id, field, _ in rejects] == [
        (3, "c1", "custom_id"), (4, "bad", "body.temperature"), (5, None, "custom_id"), (6, "emb", "url")]
    assert "duplicate custom_id 'c1' (first on row 1)" in rejects[0][3]


def test_a_plain_request_file_is_not_a_batch_file(tmp_path):
    assert not is_openai_batch_file(write_lines(tmp_path / "plain.jsonl", [{"id": "a", "prompt": "hi"}]))
    assert not is_openai_batch_file(write_lines(tmp_path / "broken.jsonl", ["not json", CHAT]))


ROW = {"run_id": "run1", "row_number": 3, "custom_id": "c1", "is_chat": True, "output_text": "Paris.",
       "finish_reason": "stop", "prompt_tokens": 20, "output_tokens": 3, "error": None, "rejected": False}


def test_output_line_of_a_chat_completion():
    line = output_line(ROW, "SmolLM2-135M-Instruct", 1700000000)
    assert line["custom_id"] == "c1" and line["error"] is None
    assert line["response"]["status_code"] == 200
    body = line["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "SmolLM2-135M-Instruct"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                                "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}


def test_output_line_of_a_text_completion():
    body = output_line({**ROW, "is_chat": False}, "m", 0)["response"]["body"]
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "Paris."


@pytest.mark.parametrize("rejected, code", [(True, "invalid_request"), (False, "generation_failed")])
def test_output_line_of_a_failed_request(rejected, code):
    line = output_line({**ROW, "error": "body.n: not supported", "rejected": rejected}, "m", 0)
    assert line["response"] is None
    assert line["error"] == {"code": code, "message": "row 3: body.n: not supported"}


def test_response_format_carries_over_and_a_bad_one_names_the_body_field(fresh_db, tmp_path):
    schema = {"type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "object"}}}
    assert request_from_batch_line({**CHAT, "body": {**CHAT["body"], "response_format": schema}})["response_format"] == schema
    path = write_lines(tmp_path / "batch.jsonl", [
        {**CHAT, "body": {**CHAT["body"], "response_format": {"type": "json_object"}}},
        {**COMPLETION, "body": {**COMPLETION["body"], "response_format": {"type": "yaml"}}},
    ])
    assert load_requests(fresh_db, "r", path) == {"requests": 1, "rejects": 1}
    assert fresh_db.execute("select field from rejects").fetchall() == [("body.response_format.type",)]


def test_a_message_name_is_kept_for_the_chat_template(fresh_db, tmp_path):
    named = {"custom_id": "n1", "body": {"messages": [{"role": "user", "name": "ana", "content": "Hi"}]}}
    path = write_lines(tmp_path / "batch.jsonl", [named, {**named, "custom_id": "n2", "body": {"messages": [
        {"role": "user", "name": 5, "content": "Hi"}]}}])
    assert load_requests(fresh_db, "r", path) == {"requests": 1, "rejects": 1}
    stored = fresh_db.execute("SELECT messages::VARCHAR FROM prompts WHERE request_id = 'n1'").fetchone()[0]
    assert json.loads(stored) == [{"role": "user", "content": "Hi", "name": "ana"}]
    assert fresh_db.execute("SELECT field FROM rejects WHERE request_id = 'n2'").fetchone() == ("body.messages.0.name",)


def test_a_first_line_that_is_not_utf8_is_no_error_when_sniffing_the_format(fresh_db, tmp_path):
    """The format check reads the first line before load runs: a bad byte there is that line's
    reject (load), not a failed run."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "caf\xe9"}\n{"id": "b", "prompt": "fine"}\n')
    assert is_openai_batch_file(path) is False
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 1, "rejects": 1}
    path.write_bytes(b'{"custom_id": "a", "body": {"prompt": "caf\xe9"}}\n')
    assert is_openai_batch_file(path) is True
