"""What a valid request is: the pydantic schema of one input row (BatchBin's own format, or an
OpenAI batch line read as one), and the validation of rows into requests and rejects.

Pure logic, no I/O: the load stage (tasks/load.py) stores what this returns.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchbin.store.db import CHUNK_ROWS
from batchbin.io.openai_batch import OpenAIBatchLineError, batch_line_field, is_openai_batch_line, request_from_batch_line

INT32_MAX = 2**31 - 1  # prompts.max_tokens and prompts.seed are INTEGER columns


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None  # OpenAI's participant name; the chat template sees it, as in vLLM's server


class JsonSchemaFormat(BaseModel):
    """OpenAI's `json_schema` response format: the schema the output must follow."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)  # `name`, `strict`, `description`: no effect here
    json_schema: dict[str, Any] = Field(alias="schema")


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: free text, any JSON object, or JSON following a schema."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def schema_with_json_schema(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("give 'json_schema' (with its 'schema') exactly when type is 'json_schema'")
        return self

    def stored(self) -> str | None:
        """The JSON kept in prompts.response_format (None for free text)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return json.dumps({"type": "json_object"})
        return json.dumps({"type": "json_schema", "schema": self.json_schema.json_schema}, default=str)


class Request(BaseModel):
    """One row of the input file."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # NaN and Infinity (JSON in Python) are no numbers

    id: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[Message] | None = None
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    min_tokens: int | None = Field(None, ge=0, le=INT32_MAX)  # vLLM's: no end-of-sequence before this many
    ignore_eos: bool | None = None  # vLLM's: generate on past end-of-sequence, up to max_tokens
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-INT32_MAX - 1, le=INT32_MAX)
    stop: list[str] | None = None
    metadata: dict[str, Any] | None = None
    response_format: ResponseFormat | None = None

    @field_validator("id", mode="before")
    @classmethod
    def id_as_text(cls, value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return value
        return str(value).strip() if isinstance(value, (int, str)) else value

    @field_validator("stop", mode="before")
    @classmethod
    def stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("prompt")
    @classmethod
    def prompt_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the prompt is empty")
        return value

    @field_validator("messages")
    @classmethod
    def messages_end_with_user(cls, value: list[Message] | None) -> list[Message] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("the message list is empty")
        if value[-1].role != "user":
            raise ValueError("the last message must have role 'user'")
        if not value[-1].content.strip():
            raise ValueError("the last user message is empty")
        return value

    @model_validator(mode="after")
    def prompt_or_messages(self) -> "Request":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' (text) or 'messages' (chat)")
        return self

    @model_validator(mode="after")
    def min_tokens_within_max_tokens(self) -> "Request":
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) is larger than max_tokens ({self.max_tokens})")
        return self


def validate_row(number: int, row: dict | None, raw: str, parse_error: str | None,
                 first_seen: dict[str, int]) -> tuple[dict | None, dict | None]:
    """(valid request, None) or (None, reject with row, id, field, reason, raw) for one row.

    `first_seen` (id -> row number) is shared by all rows of a file, so a repeated id is caught."""
    batch_line = is_openai_batch_line(row)
    given_id = row.get("custom_id" if batch_line else "id") if row else None
    request_id = str(given_id) if given_id is not None else None

    def reject(field: str | None, reason: str, rejected_id: str | None = request_id) -> tuple[None, dict]:
        return None, {"row_number": number, "request_id": rejected_id, "field": field, "reason": reason, "raw": raw}

    if parse_error:
        return reject(None, parse_error)
    try:
        request = Request.model_validate(request_from_batch_line(row) if batch_line else row)
    except OpenAIBatchLineError as error:
        return reject(error.field, str(error))
    except ValidationError as error:
        problems = error.errors()
        fields = [".".join(str(part) for part in problem["loc"]) or "prompt/messages" for problem in problems]
        if batch_line:  # name the field where the user wrote it
            fields = [batch_line_field(field) if field != "prompt/messages" else "body.messages/body.prompt"
                      for field in fields]
        reason = "; ".join(
            f"{field}: {problem['msg']}" if field else problem["msg"] for field, problem in zip(fields, problems)
        )
        return reject(fields[0], reason)
    if request.id in first_seen:
        id_field = "custom_id" if batch_line else "id"
        return reject(id_field, f"duplicate {id_field} '{request.id}' (first on row {first_seen[request.id]})", request.id)
    first_seen[request.id] = number
    return {
        "request_id": request.id,
        "row_number": number,
        "prompt": request.prompt,
        "messages": None if request.messages is None else json.dumps([m.model_dump(exclude_none=True) for m in request.messages]),
        "max_tokens": request.max_tokens,
        "min_tokens": request.min_tokens,
        "ignore_eos": request.ignore_eos,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stop": request.stop,
        # a Parquet file's values may be dates, times or decimals, which JSON has as text
        "metadata": None if request.metadata is None else json.dumps(request.metadata, default=str),
        "response_format": None if request.response_format is None else request.response_format.stored(),
    }, None


def validated_chunks(rows: Iterable[tuple[int, dict | None, str, str | None]],
                     chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[list[dict], list[dict]]]:
    """(valid requests, rejects) of every `chunk_rows` rows; ids are checked for repeats across all."""
    first_seen: dict[str, int] = {}
    valid: list[dict] = []
    rejects: list[dict] = []
    for count, (number, row, raw, parse_error) in enumerate(rows, start=1):
        request, rejected = validate_row(number, row, raw, parse_error, first_seen)
        if request is not None:
            valid.append(request)
        else:
            rejects.append(rejected)
        if count % chunk_rows == 0:
            yield valid, rejects
            valid, rejects = [], []
    if valid or rejects:
        yield valid, rejects


def validate_rows(rows) -> tuple[list[dict], list[dict]]:
    """Split rows into valid requests and rejects (row, id, field, reason, raw), all at once."""
    valid: list[dict] = []
    rejects: list[dict] = []
    for chunk_valid, chunk_rejects in validated_chunks(rows):
        valid += chunk_valid
        rejects += chunk_rejects
    return valid, rejects
