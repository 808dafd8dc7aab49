"""Stage 1, load: read a JSONL, Parquet or CSV file of requests, validate every row with
pydantic, store valid rows in `prompts` and every invalid one in `rejects` with its row number,
field and reason. Nothing a user sent is silently dropped.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchbin.db import CHUNK_ROWS, registered, scan_once, transaction
from batchbin.errors import BatchBinError
from batchbin.sqlfiles import one, run
from batchbin.tasks.common import (RunRef, chunk_progress, clear_stages, mark_stage_done, open_run_db, stage_is_done,
                                   stage_task_options)
from batchbin.tasks.openai_batch import OpenAIBatchLineError, batch_line_field, is_openai_batch_line, request_from_batch_line

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
JSON_COLUMNS = ("messages", "metadata", "stop", "response_format")  # arrive as JSON text from CSV files


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
        return json.dumps({"type": "json_schema", "schema": self.json_schema.json_schema})


class Request(BaseModel):
    """One row of the input file."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[Message] | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
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


def file_format(path: str | Path) -> str | None:
    """"jsonl", "parquet" or "csv" by the file's suffix; None for any other."""
    return FORMATS.get(Path(path).suffix.lower())


def detect_format(path: Path) -> str:
    kind = file_format(path)
    if kind is None:
        raise BatchBinError(f"unknown input format '{path.suffix}' for {path}: use .jsonl, .parquet or .csv")
    return kind


def is_openai_batch_file(path: str | Path) -> bool:
    """True when the first line of a JSONL file is an OpenAI batch request line."""
    if file_format(path) != "jsonl":
        return False
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    return is_openai_batch_line(json.loads(line))
                except json.JSONDecodeError:
                    return False
    return False


def read_rows(path: str | Path) -> list[tuple[int, dict | None, str, str | None]]:
    """Every row of the file at once (small files: tests, the benchmark's reader)."""
    return list(iter_rows(path))


def iter_rows(path: str | Path) -> Iterator[tuple[int, dict | None, str, str | None]]:
    """(row number, row dict or None, raw text, parse error) for every row of the file, streamed."""
    path = Path(path)
    if not path.exists():
        raise BatchBinError(f"input file not found: {path}")
    kind = detect_format(path)
    if kind == "jsonl":
        yield from _jsonl_rows(path)
        return
    if kind == "csv":
        yield from _csv_rows(path)
        return
    number = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS):
            for row in batch.to_pylist():
                number += 1
                yield _table_row(number, row)
    except (pa.ArrowException, OSError) as error:
        raise BatchBinError(f"cannot read {path} as parquet: {error}") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | None, str, str | None]]:
    with open(path, "rb") as handle:
        for number, data in enumerate(handle, start=1):
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as error:
                yield number, None, data.decode("utf-8", errors="replace").rstrip("\r\n"), \
                    f"not valid UTF-8: byte {error.start + 1} of the line"
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                yield number, None, line.rstrip("\r\n"), f"not valid JSON: {error.msg} at column {error.colno}"
                continue
            if not isinstance(value, dict):
                yield number, None, line.rstrip("\r\n"), "a line must be a JSON object"
                continue
            yield number, value, line.rstrip("\r\n"), None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict | None, str, str | None]]:
    """A CSV file's data rows (row 1 is the first after the header), every cell as text. A
    quoted cell may span lines. A row whose cells do not match the header, or that is not
    UTF-8, is a reject."""
    csv.field_size_limit(2**31 - 1)  # a long prompt is one cell; the default limit is 128 KiB
    number = 0
    # bytes that are not UTF-8 come through as lone surrogates, so only their row is rejected
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, [])
            if not _is_utf8(header):
                raise BatchBinError(f"cannot read {path} as csv: its header is not valid UTF-8")
            for cells in reader:
                if not cells:
                    continue  # a blank line
                number += 1
                if not _is_utf8(cells):
                    shown = [cell.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for cell in cells]
                    yield number, None, json.dumps(shown, ensure_ascii=False), "not valid UTF-8"
                    continue
                if len(cells) != len(header):
                    yield number, None, json.dumps(cells, ensure_ascii=False), \
                        f"{len(cells)} cells, but the header has {len(header)}"
                    continue
                yield _table_row(number, dict(zip(header, cells)))
        except csv.Error as error:
            raise BatchBinError(f"cannot read {path} as csv after data row {number}: {error}") from None


def _is_utf8(cells: list[str]) -> bool:
    """False when a cell holds bytes that were not UTF-8 (read as lone surrogates)."""
    try:
        "".join(cells).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _table_row(number: int, row: dict) -> tuple[int, dict, str, str | None]:
    """One Parquet/CSV row: empty cells dropped, JSON columns (text in a CSV file) parsed."""
    row = {key: value for key, value in row.items() if value is not None and value != ""}
    parse_error = None
    for column in JSON_COLUMNS:
        if isinstance(row.get(column), str) and (column != "stop" or row[column].startswith("[")):
            try:
                row[column] = json.loads(row[column])
            except json.JSONDecodeError as error:
                parse_error = f"column '{column}' is not valid JSON: {error.msg}"
    return number, row, json.dumps(row, default=str), parse_error


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
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stop": request.stop,
        "metadata": None if request.metadata is None else json.dumps(request.metadata),
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


PROMPT_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("row_number", pa.int32()), ("prompt", pa.string()), ("messages", pa.string()),
    ("max_tokens", pa.int32()), ("temperature", pa.float64()), ("top_p", pa.float64()), ("seed", pa.int64()),
    ("stop", pa.list_(pa.string())), ("metadata", pa.string()), ("response_format", pa.string()),
])
REJECT_SCHEMA = pa.schema([
    ("row_number", pa.int32()), ("request_id", pa.string()), ("field", pa.string()), ("reason", pa.string()), ("raw", pa.string()),
])


def load_requests(con: duckdb.DuckDBPyConnection, run_id: str, input_path: str, chunk_rows: int = CHUNK_ROWS,
                  progress: Callable[[int], None] | None = None) -> dict:
    """Read, validate and store one input file, `chunk_rows` rows at a time, in place of the run's
    prompts and load-time rejects; return how many rows were valid / rejected.

    One transaction: a file that cannot be read to its end leaves the run's stored rows as they were."""
    counts = {"requests": 0, "rejects": 0}
    with transaction(con):
        run(con, "load.clear_requests", {"run_id": run_id})
        for valid, rejects in validated_chunks(iter_rows(input_path), chunk_rows):
            with registered(con, incoming_prompts=scan_once(pa.Table.from_pylist(valid, schema=PROMPT_SCHEMA)),
                            incoming_rejects=scan_once(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA))):
                run(con, "load.insert_requests", {"run_id": run_id})
            counts["requests"] += len(valid)
            counts["rejects"] += len(rejects)
            if progress:
                progress(counts["requests"] + counts["rejects"])
    return counts


def no_valid_request_message(input_path: str, rejects: list[tuple]) -> str:
    """The error for a file in which no row is valid (rejects: row, id, field, reason)."""
    if not rejects:
        return f"no request in {input_path}: the file is empty"
    examples = "; ".join(f"row {row}: {reason}" for row, _, _, reason in rejects[:3])
    return f"no valid request in {input_path} ({examples}); every row is in the rejects table"


class LoadResult(RunRef):
    requests: int
    rejects: int


@task(**stage_task_options("load"))
def load(ref: RunRef, input_path: str, input_fingerprint: str) -> LoadResult:
    """Load and validate the input file into prompts/rejects."""
    params = {"input": input_fingerprint}
    with open_run_db(ref) as con:
        if not stage_is_done(con, ref.run_id, "load", params):
            counts = load_requests(con, ref.run_id, input_path,
                                   progress=chunk_progress(get_run_logger().info, "rows read"))
            clear_stages(con, ref.run_id, ["tokenize", "group_prefixes", "predict_lengths", "schedule"])
            mark_stage_done(con, ref.run_id, "load", params, counts["requests"])
        requests, rejects = one(con, "load.counts", {"run_id": ref.run_id})
    return LoadResult(db_path=ref.db_path, run_id=ref.run_id, requests=requests, rejects=rejects)
