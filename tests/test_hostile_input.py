"""Hostile input, generated (#26): hypothesis writes JSONL, CSV and Parquet files of valid rows
mixed with hostile ones (wrong types, huge and empty fields, invalid UTF-8, deep nesting,
NaN/Infinity, byte-order marks, CRLF, duplicate and missing ids, OpenAI batch lines among plain
ones) and checks the load stage: every row ends in exactly one of `prompts` or `rejects`, each
reject with a reason, the valid rows in `prompts` under their id, and never a traceback.

Run: .venv/bin/pytest -q tests/test_hostile_input.py
(a longer search: BATCHBIN_HOSTILE_EXAMPLES=1000 .venv/bin/pytest -q tests/test_hostile_input.py)
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchbin.store import db
from batchbin.errors import BatchBinError
from batchbin.io.readers import is_openai_batch_file
from batchbin.tasks.load import load_requests

# A character hypothesis never generates: where it stands in a CSV cell, the file gets bytes
# that are not UTF-8.
BAD_BYTES_MARK = "\ue000"
BAD_BYTES = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xc3"]
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=BAD_BYTES_MARK), max_size=20)
GOOD_TEXT = TEXT.filter(lambda text: text.strip())
HUGE_TEXT = st.builds(lambda piece, size: (piece * (size // len(piece) + 1))[:size],
                      st.text("ab c\n", min_size=1, max_size=5).filter(str.strip), st.integers(1_000, 100_000))
# 60 files of each format run in ~15 s of CPU; a longer search finds rarer combinations
HOSTILE_SETTINGS = settings(max_examples=int(os.environ.get("BATCHBIN_HOSTILE_EXAMPLES", "60")), deadline=None,
                            database=None,  # no .hypothesis/ directory in the work tree
                            # a file of 20 rows takes up to ~0.1 s to draw on a busy 2-core machine
                            suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Raw:
    """JSON text written as it is, for what json.dumps cannot write."""

    text: str


RAW = st.one_of(
    st.sampled_from([50, 995, 100_000]).map(lambda n: Raw("[" * n + "]" * n)),  # Python's json fails near 1000
    st.just(Raw('{"a": ' * 500 + "1" + "}" * 500)),
    st.sampled_from([4_300, 4_301, 6_000]).map(lambda n: Raw("9" * n)),  # Python's int limit is 4300 digits
    st.sampled_from(["1e400", "-1e400", "NaN", "-Infinity"]).map(Raw),
    # text with a \u escape of half a surrogate pair (or of a whole one, which is fine)
    st.builds(lambda before, escape, after: Raw(json.dumps(before)[:-1] + escape + json.dumps(after)[1:]),
              TEXT, st.sampled_from(["\\ud800", "\\udfff", "\\uDBFF", "\\ud83d\\ude00"]), TEXT),
)
# values of the wrong type (RAW comes in one field at a time, as it makes the whole line a reject)
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(2**31 - 2, 2**70), st.floats(), TEXT),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(TEXT, children, max_size=3)),
    max_leaves=6,
)
IDS = st.one_of(st.sampled_from(["a", " a ", "7", "", "  ", "valid"]), st.integers(), st.floats(), st.booleans(),
                st.none(), TEXT.filter(lambda text: not text.strip().startswith("valid-")), HUGE_TEXT, JUNK)
PROMPTS = st.one_of(TEXT, st.sampled_from(["", " ", "\n\t"]), HUGE_TEXT, JUNK)
EDGES = st.sampled_from([0, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**63, 2**64,  # around the column types
                         1e308, -0.0, math.inf, -math.inf, math.nan])
NUMBERS = st.one_of(EDGES, st.integers(-5, 5_000), st.integers(2**31 - 2, 2**64), st.floats(),
                    st.sampled_from(["8", "x", "NaN", "inf", "1e3"]), JUNK)
CONTENT = st.one_of(TEXT, HUGE_TEXT, JUNK, st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": st.one_of(TEXT, JUNK)}), max_size=2))
MESSAGE = st.one_of(st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "system", "assistant", "developer", "robot", "", ["user"], {}]), JUNK),
     "content": CONTENT}, optional={"name": st.one_of(TEXT, JUNK), "extra": JUNK}), JUNK)
MESSAGES = st.one_of(st.lists(MESSAGE, max_size=3), JUNK)
FIELDS = {
    "prompt": PROMPTS, "messages": MESSAGES, "max_tokens": NUMBERS, "temperature": NUMBERS, "top_p": NUMBERS,
    "seed": NUMBERS, "stop": st.one_of(TEXT, st.lists(TEXT, max_size=3), JUNK),
    "metadata": st.one_of(st.dictionaries(TEXT, JUNK, max_size=3), JUNK),
    "response_format": st.one_of(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
        optional={"json_schema": st.one_of(st.fixed_dictionaries({"schema": JUNK}), JUNK)}), JUNK),
}
HOSTILE_PLAIN = st.builds(lambda row, extra: {**extra, **row},
                          st.fixed_dictionaries({}, optional={"id": IDS, **FIELDS}),
                          st.dictionaries(TEXT, JUNK, max_size=2))
HOSTILE_BATCH = st.fixed_dictionaries({}, optional={
    "custom_id": IDS, "id": IDS, "method": st.one_of(st.just("POST"), JUNK),
    "url": st.one_of(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]), JUNK),
    "body": st.one_of(JUNK, st.fixed_dictionaries({}, optional={
        **FIELDS, "model": TEXT, "max_completion_tokens": NUMBERS, "n": NUMBERS, "stream": JUNK, "mystery": JUNK})),
})


def valid_fields(chat: bool) -> st.SearchStrategy[dict]:
    """The fields of a valid request (no id)."""
    text = st.one_of(GOOD_TEXT, HUGE_TEXT)
    turn = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT})
    main = ({"messages": st.builds(lambda before, last: before + [{"role": "user", "content": last}],
                                   st.lists(turn, max_size=2), text)} if chat else {"prompt": text})
    return st.fixed_dictionaries(main, optional={
        "max_tokens": st.integers(1, 2**31 - 1), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
        "seed": st.integers(-(2**31), 2**31 - 1), "stop": st.lists(GOOD_TEXT, max_size=2),
        "metadata": st.dictionaries(TEXT, st.one_of(TEXT, st.integers(-10**9, 10**9)), max_size=2)})


def valid_plain(request_id: str) -> st.SearchStrategy[dict]:
    """A valid BatchBin row with this id."""
    return st.booleans().flatmap(valid_fields).map(lambda fields: {"id": request_id, **fields})


def valid_batch(request_id: str) -> st.SearchStrategy[dict]:
    """A valid OpenAI batch line with this custom_id."""
    def line(chat: bool, fields: dict) -> dict:
        body = {"model": "m", **fields}  # the body's metadata is OpenAI's, which BatchBin ignores
        url = "/v1/chat/completions" if chat else "/v1/completions"
        return {"custom_id": request_id, "method": "POST", "url": url, "body": body}
    return st.booleans().flatmap(lambda chat: valid_fields(chat).map(lambda fields: line(chat, fields)))


def bad_fields(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy[dict]:
    """One or two of these fields with hostile values: put into a valid row, each shows what it does alone."""
    return st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=2, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: st.one_of(RAW, EDGES, fields[name]) for name in names}))


# a chat whose first message may be hostile, and whose last is a valid user message
ONE_BAD_MESSAGE = st.builds(lambda message, last: [message, {"role": "user", "content": last}], MESSAGE, GOOD_TEXT)


def mutated_plain(request_id: str) -> st.SearchStrategy[dict]:
    """A valid BatchBin row with one or two fields made hostile, or a chat with one hostile message."""
    return st.one_of(
        st.builds(lambda row, bad: {**row, **bad}, valid_plain(request_id), bad_fields({"id": IDS, **FIELDS})),
        ONE_BAD_MESSAGE.map(lambda messages: {"id": request_id, "messages": messages}))


def mutated_batch(request_id: str) -> st.SearchStrategy[dict]:
    """A valid OpenAI batch line with one or two fields of the line or of its body made hostile, or a
    chat with one hostile message."""
    line_fields = {"custom_id": IDS, "method": st.one_of(st.sampled_from(["GET", ["POST"]]), JUNK),
                   "url": st.one_of(st.sampled_from(["/v1/embeddings", ["/v1/completions"], {}]), JUNK), "body": JUNK}
    return st.one_of(
        st.builds(lambda line, bad: {**line, **bad}, valid_batch(request_id), bad_fields(line_fields)),
        st.builds(lambda line, bad: {**line, "body": {**line["body"], **bad}}, valid_batch(request_id),
                  bad_fields({**FIELDS, "max_completion_tokens": NUMBERS, "n": NUMBERS, "mystery": JUNK})),
        ONE_BAD_MESSAGE.map(lambda messages: {"custom_id": request_id, "url": "/v1/chat/completions",
                                              "body": {"messages": messages}}))


def to_json(value, ensure_ascii: bool = True) -> str:
    """json.dumps, with each Raw written as its text (NaN and Infinity as Python writes them)."""
    fragments: list[str] = []

    def mark(raw: Raw) -> str:
        fragments.append(raw.text)
        return f"@@raw{len(fragments) - 1}@@"

    text = json.dumps(value, default=mark, ensure_ascii=ensure_ascii)
    return re.sub(r'"@@raw(\d+)@@"', lambda found: fragments[int(found.group(1))], text)


@dataclass
class Expected:
    """What loading a file must give: every row number once, some rows with a known outcome."""

    rows: list[int]
    valid: dict[int, str]  # row number -> request id, for rows that must be in prompts
    duplicates: dict[int, int]  # row number -> the earlier row whose id it repeats
    error: str | None = None  # instead: a whole-file BatchBinError matching this


def expected_from(numbered: list[tuple[int, str | None, str | None]]) -> Expected:
    """The Expected of (row number, id if the row is valid, id of an earlier valid row it repeats)."""
    first = {valid_id: number for number, valid_id, _ in numbered if valid_id is not None}
    return Expected(rows=[number for number, _, _ in numbered],
                    valid={number: valid_id for valid_id, number in first.items()},
                    duplicates={number: first[repeats] for number, _, repeats in numbered if repeats in first})


@st.composite
def generated_rows(draw, batch_lines: bool) -> list[tuple[dict, str | None, str | None]]:
    """(row, id if valid, id of an earlier valid row it repeats) in file order."""
    kinds = ["hostile", "mutated", "mutated", "valid", "repeat"]
    kinds += ["batch", "mutated_batch", "mutated_batch", "valid_batch"] if batch_lines else []
    rows: list[tuple[dict, str | None, str | None]] = []
    for index in range(draw(st.integers(0, 20))):
        kind = draw(st.sampled_from(kinds))
        earlier = [valid_id for _, valid_id, _ in rows if valid_id is not None]
        if kind == "repeat" and earlier:
            repeated = draw(st.sampled_from(earlier))
            rows.append((draw(valid_plain(repeated)), None, repeated))
        elif kind in ("valid", "valid_batch", "repeat"):
            make = valid_batch if kind == "valid_batch" else valid_plain
            rows.append((draw(make(f"valid-{index}")), f"valid-{index}", None))
        elif kind.startswith("mutated"):
            make = mutated_batch if kind == "mutated_batch" else mutated_plain
            rows.append((draw(make(f"mutated-{index}")), None, None))
        else:
            rows.append((draw(HOSTILE_BATCH if kind == "batch" else HOSTILE_PLAIN), None, None))
    return rows


JUNK_LINES = st.one_of(
    st.sampled_from([b"", b"  ", b"\t", b"\r", b"\x0c", "\u2028".encode(),  # blank once decoded and stripped
                     b"{not json", b"}", b"null", b"[1, 2]", b'"text"', b"42", b"NaN", b'{"id": "x",', b"\xef\xbb\xbf"]),
    st.integers(1_000, 200_000).map(lambda n: b"x" * n),  # a very long line
    RAW.map(lambda raw: raw.text.encode()),
)


@st.composite
def jsonl_files(draw) -> tuple[bytes, Expected]:
    """A JSONL file of valid, hostile and OpenAI batch rows among junk lines, with byte damage."""
    lines = [(to_json(row, ensure_ascii=draw(st.booleans())).encode(), valid_id, repeats)
             for row, valid_id, repeats in draw(generated_rows(batch_lines=True))]
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), (draw(JUNK_LINES), None, None))
    for number, (line, valid_id, repeats) in enumerate(lines):
        if draw(st.integers(0, 19)) == 0:  # bytes that are not UTF-8, anywhere in the line
            at = draw(st.integers(0, len(line)))
            lines[number] = (line[:at] + draw(st.sampled_from(BAD_BYTES)) + line[at:], None, None)
    ends = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in lines]
    if ends and draw(st.booleans()):
        ends[-1] = b""  # no newline at the end of the file
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    data = bom + b"".join(line + end for (line, _, _), end in zip(lines, ends))

    def blank(line: bytes) -> bool:
        try:
            return not line.decode("utf-8").strip()
        except UnicodeDecodeError:
            return False

    if lines:  # the reader takes one byte-order mark off line 1 (a junk line may be one more)
        lines[0] = ((bom + lines[0][0]).removeprefix(b"\xef\xbb\xbf"), *lines[0][1:])
    return data, expected_from([(number, valid_id, repeats) for number, (line, valid_id, repeats)
                                in enumerate(lines, start=1) if not blank(line)])


CSV_COLUMNS = ["id", "prompt", "messages", "max_tokens", "temperature", "top_p", "seed", "stop", "metadata",
               "response_format", "note"]


def cell(value) -> str:
    """A row's value as a CSV cell: text as it is, nothing as empty, anything else as JSON."""
    return "" if value is None else value if isinstance(value, str) else to_json(value)


@st.composite
def csv_files(draw) -> tuple[bytes, Expected]:
    """A CSV file of valid and hostile rows, with rows of too many or few cells, blank lines,
    bytes that are not UTF-8, a byte-order mark and any line end."""
    header = draw(st.permutations(CSV_COLUMNS))
    rows: list[tuple[list[str], str | None, str | None]] = []
    for row, valid_id, repeats in draw(generated_rows(batch_lines=False)):
        cells = [cell(row.get(column)) for column in header]
        shape = draw(st.sampled_from(["same"] * 8 + ["fewer", "more"]))
        if shape == "fewer":
            cells, valid_id, repeats = cells[:draw(st.integers(1, len(cells) - 1))], None, None
        elif shape == "more":
            cells, valid_id, repeats = cells + draw(st.lists(TEXT, min_size=1, max_size=3)), None, None
        if draw(st.integers(0, 19)) == 0:  # bytes that are not UTF-8 in one cell
            column = draw(st.integers(0, len(cells) - 1))
            at = draw(st.integers(0, len(cells[column])))
            cells[column], valid_id, repeats = cells[column][:at] + BAD_BYTES_MARK + cells[column][at:], None, None
        rows.append((cells, valid_id, repeats))
    for _ in range(draw(st.integers(0, 3))):
        rows.insert(draw(st.integers(0, len(rows))), ([], None, None))  # a blank line
    bad_header = draw(st.integers(0, 19)) == 0
    if bad_header:
        header = [header[0] + BAD_BYTES_MARK] + header[1:]
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = io.StringIO()
    writer = csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator=end)
    for cells in [header] + [cells for cells, _, _ in rows]:
        writer.writerow(cells)
    data = text.getvalue().encode("utf-8").replace(BAD_BYTES_MARK.encode(), draw(st.sampled_from(BAD_BYTES)))
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    expected = expected_from([(number, valid_id, repeats) for number, (_, valid_id, repeats)
                              in enumerate([row for row in rows if row[0]], start=1)])
    expected.error = "header is not valid UTF-8" if bad_header else None
    return data, expected


def nullable(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), values)


INT64 = st.integers(-(2**63), 2**63 - 1)
JSON_TEXT = st.one_of(TEXT, st.sampled_from(["{not json", "[", "null", "NaN"]), RAW.map(lambda raw: raw.text),
                      MESSAGES.map(to_json), FIELDS["metadata"].map(to_json), FIELDS["response_format"].map(to_json))
# column -> the types it may have in a Parquet file, each with the values it may hold
PARQUET_COLUMNS: dict[str, dict[str, tuple[pa.DataType, st.SearchStrategy]]] = {
    "id": {"string": (pa.string(), st.one_of(st.sampled_from(["a", " a ", "7", ""]), HUGE_TEXT,
                                               TEXT.filter(lambda text: not text.strip().startswith("valid-")))),
           "int64": (pa.int64(), INT64), "float64": (pa.float64(), st.floats()), "bool": (pa.bool_(), st.booleans()),
           "binary": (pa.binary(), st.binary(max_size=8))},
    "prompt": {"string": (pa.string(), st.one_of(TEXT, HUGE_TEXT, st.sampled_from(["", "  "]))),
               "int64": (pa.int64(), INT64), "binary": (pa.binary(), st.binary(max_size=8)),
               "list": (pa.list_(pa.string()), st.lists(TEXT, max_size=2))},
    "messages": {"string": (pa.string(), JSON_TEXT),
                 "list": (pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])), st.lists(
                     st.fixed_dictionaries({"role": st.sampled_from(["user", "robot"]), "content": nullable(TEXT)}),
                     max_size=2))},
    "max_tokens": {"int64": (pa.int64(), INT64), "float64": (pa.float64(), st.floats()),
                   "string": (pa.string(), st.one_of(TEXT, st.sampled_from(["8", "NaN", "-1", "1e9", "99999999999"])))},
    "temperature": {"float64": (pa.float64(), st.floats()), "string": (pa.string(), st.sampled_from(["0.5", "inf", "x"]))},
    "top_p": {"float64": (pa.float64(), st.floats())},
    "seed": {"int64": (pa.int64(), INT64)},
    "stop": {"list": (pa.list_(pa.string()), st.lists(nullable(TEXT), max_size=2)), "string": (pa.string(), JSON_TEXT)},
    "metadata": {"string": (pa.string(), JSON_TEXT),
                 "timestamp": (pa.struct([("k", pa.timestamp("us"))]), st.fixed_dictionaries({"k": st.datetimes()})),
                 "float64": (pa.struct([("k", pa.float64())]), st.fixed_dictionaries({"k": st.floats()})),
                 "map": (pa.map_(pa.string(), pa.int64()), st.lists(st.tuples(TEXT, INT64), max_size=2))},
    "response_format": {"string": (pa.string(), JSON_TEXT)},
    "note": {"date": (pa.date32(), st.dates()), "decimal": (pa.decimal128(10, 2), st.decimals(-10**7, 10**7, places=2))},
}


@st.composite
def parquet_files(draw) -> tuple[pa.Table, Expected]:
    """A Parquet table whose columns have mixed and wrong types, with valid rows where the types allow
    ("valid": id and prompt, nothing else; "mutated": a valid id and prompt, and one hostile column)."""
    kinds = {column: "string" if column in ("id", "prompt") and draw(st.integers(0, 3))  # mostly text, to be valid
                     else draw(st.sampled_from(sorted(choices)))
             for column, choices in PARQUET_COLUMNS.items() if column in ("id", "prompt") or draw(st.integers(0, 3))}
    can_be_valid = kinds["id"] == "string" and kinds["prompt"] == "string"
    plan = [draw(st.sampled_from(["hostile", "valid", "mutated", "mutated"] if can_be_valid else ["hostile"]))
            for _ in range(draw(st.integers(0, 20)))]
    others = sorted(set(kinds) - {"id", "prompt"})
    columns: dict[str, list] = {column: [] for column in kinds}
    for index, kind in enumerate(plan):
        hostile = set(kinds) if kind == "hostile" else set()
        if kind == "mutated" and others:
            hostile = {draw(st.sampled_from(others))}
        for column, choice in kinds.items():
            if column in hostile:
                values = PARQUET_COLUMNS[column][choice][1]
                value = draw(nullable(values) if kind == "hostile" else values)
            elif column == "id":
                value = f"{kind}-{index}"
            else:
                value = draw(st.one_of(GOOD_TEXT, HUGE_TEXT)) if column == "prompt" else None
            columns[column].append(value)
    table = pa.table({column: pa.array(values, type=PARQUET_COLUMNS[column][kinds[column]][0])
                      for column, values in columns.items()})
    return table, expected_from([(number, f"valid-{number - 1}" if kind == "valid" else None, None)
                                 for number, kind in enumerate(plan, start=1)])


def stored(con: duckdb.DuckDBPyConnection) -> tuple[list[tuple], list[tuple]]:
    """Every stored prompt and reject of run 'r', in row order."""
    prompts = con.execute("SELECT row_number, request_id, prompt, messages::VARCHAR, max_tokens, temperature, top_p, "
                          "seed, stop, metadata::VARCHAR, response_format::VARCHAR FROM prompts WHERE run_id = 'r' "
                          "ORDER BY row_number").fetchall()
    rejects = con.execute("SELECT row_number, request_id, field, reason, raw FROM rejects WHERE run_id = 'r' "
                          "ORDER BY row_number").fetchall()
    return prompts, rejects


def check_load(path: Path, expected: Expected) -> None:
    """Load the file twice and check every row is stored once, as expected, the same both times."""
    con = duckdb.connect(":memory:")
    db.ensure_schema(con)
    try:
        if expected.error:
            with pytest.raises(BatchBinError, match=expected.error):
                load_requests(con, "r", str(path))
            return
        counts = load_requests(con, "r", str(path))
        prompts, rejects = stored(con)
        assert load_requests(con, "r", str(path)) == counts  # loading again changes nothing
        assert stored(con) == (prompts, rejects)
    finally:
        con.close()
    assert counts == {"requests": len(prompts), "rejects": len(rejects)}
    assert sorted(row[0] for row in prompts + rejects) == sorted(expected.rows)  # every row, once, in one table
    assert all(reason and reason.strip() for _, _, _, reason, _ in rejects)
    for _, request_id, prompt, messages, max_tokens, temperature, top_p, *_ in prompts:  # what is stored can run
        assert request_id.strip() and (prompt is None) != (messages is None) and (prompt is None or prompt.strip())
        assert (max_tokens is None or max_tokens >= 1) and all(
            value is None or math.isfinite(value) for value in (temperature, top_p))
    ids = {row[0]: row[1] for row in prompts}
    assert {number: ids.get(number) for number in expected.valid} == expected.valid
    reasons = {row[0]: row[3] for row in rejects}
    for number, first in expected.duplicates.items():
        assert reasons.get(number, "").endswith(f"(first on row {first})"), reasons.get(number)
    for _, request_id, _, reason, _ in rejects:
        named = re.fullmatch(r"duplicate (?:custom_)?id '.*' \(first on row (\d+)\)", reason, flags=re.DOTALL)
        if named:
            assert ids[int(named.group(1))] == request_id


@HOSTILE_SETTINGS
@given(case=jsonl_files())
def test_every_jsonl_line_ends_in_prompts_or_rejects(tmp_path_factory, case):
    data, expected = case
    path = tmp_path_factory.mktemp("jsonl") / "in.jsonl"
    path.write_bytes(data)
    check_load(path, expected)


@HOSTILE_SETTINGS
@given(case=csv_files())
def test_every_csv_row_ends_in_prompts_or_rejects(tmp_path_factory, case):
    data, expected = case
    path = tmp_path_factory.mktemp("csv") / "in.csv"
    path.write_bytes(data)
    check_load(path, expected)


@HOSTILE_SETTINGS
@given(case=parquet_files())
def test_every_parquet_row_ends_in_prompts_or_rejects(tmp_path_factory, case):
    table, expected = case
    path = tmp_path_factory.mktemp("parquet") / "in.parquet"
    pq.write_table(table, path)
    check_load(path, expected)


# Regressions: each bug the tests above found, as a plain test.

def rejects_by_row(con) -> dict[int, tuple[str | None, str]]:
    return {row: (field, reason) for row, field, reason in
            con.execute("SELECT row_number, field, reason FROM rejects WHERE run_id = 'r'").fetchall()}


def test_json_nested_too_deep_is_a_reject_not_a_recursion_error(fresh_db, tmp_path):
    deep, over_limit = "[" * 100_000 + "]" * 100_000, "[" * 101 + "]" * 101  # Python's json fails near 1000
    path = tmp_path / "in.jsonl"
    path.write_text(f'{{"id": "a", "prompt": "x", "metadata": {{"k": {deep}}}}}\n'
                    f'{{"id": "b", "prompt": "x", "metadata": {{"k": {over_limit}}}}}\n{{"id": "c", "prompt": "x"}}\n')
    assert is_openai_batch_file(path) is False
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 1, "rejects": 2}
    assert rejects_by_row(fresh_db) == {1: (None, "JSON nested more than 100 levels deep"),
                                        2: (None, "JSON nested more than 100 levels deep")}
    path = tmp_path / "in.csv"
    path.write_text(f'id,prompt,metadata\na,x,"{deep}"\nb,x,\n')
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 1, "rejects": 1}
    assert rejects_by_row(fresh_db) == {1: (None, "column 'metadata': JSON nested more than 100 levels deep")}


def test_a_number_too_long_for_python_is_a_reject(fresh_db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": ' + "9" * 5000 + ', "prompt": "x"}\n{"id": "b", "prompt": "x"}\n')
    assert is_openai_batch_file(path) is False
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 1, "rejects": 1}
    assert rejects_by_row(fresh_db)[1] == (None, "not valid JSON: a number with too many digits")


def test_half_a_surrogate_pair_is_a_reject_and_a_whole_pair_is_text(fresh_db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "prompt": "\\ud800"}\n'
                    '{"id": "b", "messages": [{"role": "user", "content": "x\\udc00"}]}\n'
                    '{"id": "c", "prompt": "\\ud83d\\ude00"}\n')
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 1, "rejects": 2}
    assert {reason for _, reason in rejects_by_row(fresh_db).values()} == {
        "not valid UTF-8: a \\u escape is half of a surrogate pair"}
    assert fresh_db.execute("SELECT prompt FROM prompts").fetchone() == ("\U0001f600",)
    path = tmp_path / "in.csv"
    path.write_text('id,messages\na,"[{""role"": ""user"", ""content"": ""\\udfff""}]"\n')
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 0, "rejects": 1}
    assert rejects_by_row(fresh_db)[1][1].startswith("column 'messages': not valid UTF-8")


def test_max_tokens_and_seed_beyond_the_integer_columns_are_rejects(fresh_db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "prompt": "x", "max_tokens": 99999999999}\n'
                    '{"id": "b", "prompt": "x", "seed": -2147483649}\n'
                    '{"id": "c", "prompt": "x", "max_tokens": 2147483647, "seed": -2147483648}\n')
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 1, "rejects": 2}
    assert {row: field for row, (field, _) in rejects_by_row(fresh_db).items()} == {1: "max_tokens", 2: "seed"}


@pytest.mark.parametrize("value", ["Infinity", "1e400", "NaN"])
def test_a_temperature_that_is_no_finite_number_is_a_reject(fresh_db, tmp_path, value):
    path = tmp_path / "in.jsonl"
    path.write_text(f'{{"id": "a", "prompt": "x", "temperature": {value}}}\n')
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 0, "rejects": 1}
    assert rejects_by_row(fresh_db)[1] == ("temperature", "temperature: Input should be a finite number")


def test_a_byte_order_mark_on_the_first_jsonl_line_is_no_content(fresh_db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"custom_id": "a", "body": {"prompt": "x"}}\r\n'
                     b'{"custom_id": "b", "body": {"prompt": "y"}}\r\n')
    assert is_openai_batch_file(path) is True
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 2, "rejects": 0}


def test_a_batch_line_with_a_list_for_role_or_url_is_a_reject(fresh_db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"custom_id": "a", "body": {"messages": [{"role": ["user"], "content": "x"}]}}\n'
                    '{"custom_id": "b", "url": ["/v1/completions"], "body": {"prompt": "x"}}\n')
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 0, "rejects": 2}
    assert {row: field for row, (field, _) in rejects_by_row(fresh_db).items()} == {1: "body.messages.0.role", 2: "url"}


def test_parquet_metadata_with_a_timestamp_is_stored_with_it_as_text(fresh_db, tmp_path):
    moment = pa.array([{"at": datetime.datetime(2024, 5, 1, 12, 30)}], type=pa.struct([("at", pa.timestamp("us"))]))
    pq.write_table(pa.table({"id": ["a"], "prompt": ["x"], "metadata": moment}), tmp_path / "in.parquet")
    assert load_requests(fresh_db, "r", str(tmp_path / "in.parquet")) == {"requests": 1, "rejects": 0}
    assert fresh_db.execute("SELECT metadata->>'at' FROM prompts").fetchone() == ("2024-05-01 12:30:00",)
