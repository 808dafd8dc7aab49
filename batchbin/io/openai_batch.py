"""OpenAI batch files, the format of OpenAI's Batch API and of `vllm run-batch`: read their
request lines as BatchBin requests, and write results back as their output lines.

An input line looks like
    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "...", "messages": [...], "max_tokens": 64}}
and its output line like
    {"id": "...", "custom_id": "r1", "error": null,
     "response": {"status_code": 200, "request_id": "...", "body": {"object": "chat.completion", ...}}}

Pure functions, no I/O: the load and report stages call them.
"""

from __future__ import annotations

from typing import Any

ENDPOINTS = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role
# body fields BatchBin carries over as they are
PASSED_THROUGH = ("temperature", "top_p", "seed", "stop", "response_format",
                  "min_tokens", "ignore_eos")  # the last two: vLLM's extra parameters, as its server takes them
# body fields that change nothing BatchBin does (the job's --model serves every request)
IGNORED = ("model", "user", "store", "metadata", "service_tier")
# body fields BatchBin does not support, accepted only at the value that means "not used"
UNUSED_VALUES: dict[str, tuple] = {
    "n": (1,), "stream": (False,), "logprobs": (False, None), "top_logprobs": (0, None), "echo": (False,),
    "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": ({}, None),
    "tools": ([], None), "tool_choice": ("none", None), "parallel_tool_calls": (True, False, None), "functions": ([], None),
    "stream_options": (None,), "best_of": (1, None), "suffix": (None, ""),
}

KNOWN_FIELDS = {*PASSED_THROUGH, *IGNORED, *UNUSED_VALUES, "messages", "prompt", "max_tokens", "max_completion_tokens"}


class OpenAIBatchLineError(ValueError):
    """A batch line BatchBin cannot run; `field` names where, as a path in the line."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def shown(value: Any, limit: int = 60) -> str:
    """A value for an error message, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_openai_batch_line(row: Any) -> bool:
    """True for a line in OpenAI's batch format: it carries `custom_id`, or a `body` and no `id`."""
    return isinstance(row, dict) and ("custom_id" in row or ("body" in row and "id" not in row))


def _role(role: Any) -> Any:
    """A message's role under BatchBin's name for it; anything but text as it is, for validation to name."""
    return ROLE_ALIASES.get(role, role) if isinstance(role, str) else role


def message_text(content: Any, where: str) -> Any:
    """A message's content as text: a string, or the text of a list of text parts."""
    if not isinstance(content, list):
        return content  # a string, or something the request's own validation names
    texts = []
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise OpenAIBatchLineError(f"{where}.{number}", f"only text parts are supported (got {kind or type(part).__name__})")
        texts.append(part["text"])
    return "\n".join(texts)


def request_from_batch_line(line: dict) -> dict:
    """The BatchBin request (the fields of tasks.load.Request) of one OpenAI batch line."""
    method = line.get("method", "POST")
    if method != "POST":
        raise OpenAIBatchLineError("method", f"must be POST (got {method!r})")
    body = line.get("body")
    if not isinstance(body, dict):
        raise OpenAIBatchLineError("body", "must be a JSON object with the request")
    url = line.get("url") or ("/v1/chat/completions" if "messages" in body else "/v1/completions")
    if not isinstance(url, str) or url not in ENDPOINTS:
        raise OpenAIBatchLineError("url", f"must be one of {', '.join(ENDPOINTS)} (got {url!r})")
    for field, unused in UNUSED_VALUES.items():
        if field in body and body[field] not in unused:
            raise OpenAIBatchLineError(f"body.{field}", f"not supported by BatchBin (got {shown(body[field])})")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise OpenAIBatchLineError(f"body.{unknown[0]}", "unknown field (not supported by BatchBin)")

    request: dict[str, Any] = {"id": line.get("custom_id")}
    if ENDPOINTS[url] == "messages":
        if "prompt" in body:
            raise OpenAIBatchLineError("body.prompt", f"{url} takes 'messages', not 'prompt'")
        messages = body.get("messages")
        if isinstance(messages, list):
            messages = [
                {**message, "role": _role(message.get("role")),
                 "content": message_text(message.get("content"), f"body.messages.{number}.content")}
                if isinstance(message, dict) else message
                for number, message in enumerate(messages)
            ]
        request["messages"] = messages
    else:
        if "messages" in body:
            raise OpenAIBatchLineError("body.messages", f"{url} takes 'prompt', not 'messages'")
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            raise OpenAIBatchLineError("body.prompt", "one prompt per line (a list of prompts or of token ids is not supported)")
        request["prompt"] = prompt
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        request["max_tokens"] = limit
    for field in PASSED_THROUGH:
        if body.get(field) is not None:
            request[field] = body[field]
    return request


def batch_line_field(field: str) -> str:
    """Where a field of the translated request sits in the batch line (for error messages)."""
    return "custom_id" if field == "id" else f"body.{field}"


def output_line(row: dict, model: str, created: int) -> dict:
    """The OpenAI batch output line of one row of `report.export_openai_rows`.

    A completed request gets a 200 response whose body is a chat.completion (chat requests) or a
    text_completion; a request that failed in generation or was rejected at load gets `error`."""
    key = f"{row['run_id']}-{row['row_number']}"
    line = {"id": f"batch_req_{key}", "custom_id": row["custom_id"], "response": None, "error": None}
    if row["error"] is not None:
        code = "invalid_request" if row["rejected"] else "generation_failed"
        line["error"] = {"code": code, "message": f"row {row['row_number']}: {row['error']}"}
        return line
    usage = {"prompt_tokens": row["prompt_tokens"], "completion_tokens": row["output_tokens"],
             "total_tokens": row["prompt_tokens"] + row["output_tokens"]}
    if row["is_chat"]:
        choice = {"index": 0, "message": {"role": "assistant", "content": row["output_text"]},
                  "logprobs": None, "finish_reason": row["finish_reason"]}
        body = {"id": f"chatcmpl-{key}", "object": "chat.completion"}
    else:
        choice = {"index": 0, "text": row["output_text"], "logprobs": None, "finish_reason": row["finish_reason"]}
        body = {"id": f"cmpl-{key}", "object": "text_completion"}
    body.update({"created": created, "model": model, "choices": [choice], "usage": usage})
    line["response"] = {"status_code": 200, "request_id": key, "body": body}
    return line
