"""Read an input file (JSONL, Parquet or CSV) row by row, streamed: each row comes with its
number, its raw text and, where it could not be read, why. Nothing here decides whether a row
is a valid request (batchbin/io/request_schema.py does).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from batchbin.store.db import CHUNK_ROWS
from batchbin.errors import BatchBinError
from batchbin.io.openai_batch import is_openai_batch_line

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
JSON_COLUMNS = ("messages", "metadata", "stop", "response_format")  # arrive as JSON text from CSV files
# JSON nested deeper is a reject: Python's json (and whatever walks a value after it) recurses,
# and fails near 1000 levels with a RecursionError
MAX_JSON_DEPTH = 100
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \ud800-\udfff: half of a pair, unless paired


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
    with open(path, "rb") as handle:  # bytes: a line that is not UTF-8 is the load stage's reject, not an error here
        for data in handle:
            if data.strip():
                return is_openai_batch_line(parse_json(data.decode("utf-8-sig", errors="replace"))[0])
    return False


def parse_json(text: str) -> tuple[Any, str | None]:
    """(value, None) for JSON text BatchBin can store, else (None, why not): not JSON, nested more
    than MAX_JSON_DEPTH levels, a number too long for Python, or text that is not UTF-8 (a \\u
    escape of half a surrogate pair)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"not valid JSON: {error.msg} at column {error.colno}"
    except RecursionError:
        return None, f"JSON nested more than {MAX_JSON_DEPTH} levels deep"
    except ValueError:  # Python converts no integer of more than 4300 digits
        return None, "not valid JSON: a number with too many digits"
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH or SURROGATE_ESCAPE.search(text):
        return (None, problem) if (problem := _json_problem(value)) else (value, None)
    return value, None


def _json_problem(value: Any) -> str | None:
    """Why a parsed JSON value cannot be stored (too deep, or half a surrogate pair), or None;
    walked without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str) and not _is_utf8([item]):
            return "not valid UTF-8: a \\u escape is half of a surrogate pair"
        if isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return f"JSON nested more than {MAX_JSON_DEPTH} levels deep"
            stack.extend((child, depth + 1) for child in ([*item, *item.values()] if isinstance(item, dict) else item))
    return None


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
                line = data.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark is no content
            except UnicodeDecodeError as error:
                yield number, None, data.decode("utf-8", errors="replace").rstrip("\r\n"), \
                    f"not valid UTF-8: byte {error.start + 1} of the line"
                continue
            if not line.strip():
                continue
            value, parse_error = parse_json(line)
            if parse_error:
                yield number, None, line.rstrip("\r\n"), parse_error
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
            value, problem = parse_json(row[column])
            if problem:
                parse_error = f"column '{column}': {problem}"  # the text stays in the row, for its raw
            else:
                row[column] = value
    return number, row, json.dumps(row, default=str), parse_error
