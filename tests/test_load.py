"""Stage 1: reading and validating input files; every row ends in prompts or rejects."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from batchbin.errors import BatchBinError
from batchbin.io.readers import read_rows
from batchbin.io.request_schema import validate_rows
from batchbin.tasks.load import load_requests

GOOD = [
    {"id": "a", "prompt": "Hello there"},
    {"id": 7, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
     "max_tokens": 5, "temperature": 0.5, "stop": "\n", "metadata": {"k": 1}},
]


def write_jsonl(path, rows, extra_lines=()):
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        for line in extra_lines:
            handle.write(line + "\n")
    return str(path)


def rejects_by_row(con, run_id="r"):
    return {row: (field, reason) for row, field, reason in
            con.execute("select row_number, field, reason from rejects where run_id = $r", {"r": run_id}).fetchall()}


def test_valid_rows_are_stored_with_their_fields(fresh_db, tmp_path):
    counts = load_requests(fresh_db, "r", write_jsonl(tmp_path / "in.jsonl", GOOD))
    assert counts == {"requests": 2, "rejects": 0}
    rows = fresh_db.execute(
        "select request_id, row_number, prompt, json_extract_string(messages, '$[1].content'), max_tokens, "
        "temperature, stop, metadata->>'k' from prompts order by row_number").fetchall()
    assert rows == [("a", 1, "Hello there", None, None, None, None, None),
                    ("7", 2, None, "Hi", 5, 0.5, ["\n"], "1")]


def test_a_fixed_length_is_stored_with_the_request(fresh_db, tmp_path):
    rows = [{"id": "f", "prompt": "Tell a story.", "max_tokens": 300, "min_tokens": 300, "ignore_eos": True},
            {"id": "g", "prompt": "Tell a story.", "min_tokens": 20}]
    load_requests(fresh_db, "r", write_jsonl(tmp_path / "in.jsonl", rows))
    assert fresh_db.execute("select request_id, max_tokens, min_tokens, ignore_eos from prompts order by request_id"
                            ).fetchall() == [("f", 300, 300, True), ("g", None, 20, None)]


@pytest.mark.parametrize("row, field, words", [
    ({"id": "x", "prompt": "   "}, "prompt", "empty"),
    ({"id": "x"}, "prompt/messages", "exactly one"),
    ({"id": "x", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "prompt/messages", "exactly one"),
    ({"prompt": "no id"}, "id", "required"),
    ({"id": "x", "prompt": "a", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"id": "x", "prompt": "a", "temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"id": "x", "messages": []}, "messages", "empty"),
    ({"id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages", "role 'user'"),
    ({"id": "x", "messages": [{"role": "robot", "content": "q"}]}, "messages.0.role", "Input should be"),
    ({"id": "x", "prompt": "a", "max_tokens": 4, "min_tokens": 5}, "prompt/messages", "min_tokens (5) is larger than max_tokens (4)"),
    ({"id": "x", "prompt": "a", "min_tokens": -1}, "min_tokens", "greater than or equal to 0"),
    ({"id": "x", "prompt": "a", "ignore_eos": "often"}, "ignore_eos", "valid boolean"),
])
def test_invalid_rows_are_rejected_with_field_and_reason(fresh_db, tmp_path, row, field, words):
    counts = load_requests(fresh_db, "r", write_jsonl(tmp_path / "in.jsonl", GOOD + [row]))
    assert counts == {"requests": 2, "rejects": 1}
    rejected_field, reason = rejects_by_row(fresh_db)[3]
    assert rejected_field == field
    assert words in reason


def test_duplicates_and_broken_json_lines_are_rejects(fresh_db, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", GOOD + [{"id": "a", "prompt": "again"}], ["{not json", "[1, 2]"])
    counts = load_requests(fresh_db, "r", path)
    assert counts == {"requests": 2, "rejects": 3}
    rejects = rejects_by_row(fresh_db)
    assert rejects[3] == ("id", "duplicate id 'a' (first on row 1)")
    assert "not valid JSON" in rejects[4][1]
    assert "JSON object" in rejects[5][1]
    raw = fresh_db.execute("select raw from rejects where row_number = 4").fetchone()[0]
    assert raw == "{not json"  # the user's input is kept as it was


def test_reloading_replaces_instead_of_duplicating(fresh_db, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", GOOD + [{"id": "bad"}])
    load_requests(fresh_db, "r", path)
    load_requests(fresh_db, "r", path)
    assert fresh_db.execute("select count(*) from prompts").fetchone()[0] == 2
    assert fresh_db.execute("select count(*) from rejects").fetchone()[0] == 1


def test_runs_are_isolated(fresh_db, tmp_path):
    load_requests(fresh_db, "r1", write_jsonl(tmp_path / "a.jsonl", GOOD))
    load_requests(fresh_db, "r2", write_jsonl(tmp_path / "b.jsonl", GOOD[:1]))
    assert fresh_db.execute("select run_id, count(*) from prompts group by all order by 1").fetchall() == [("r1", 2), ("r2", 1)]


def test_csv_and_parquet_have_the_same_columns(fresh_db, tmp_path):
    columns = {
        "id": ["c1", "c2", "c3"],
        "prompt": ["Tell me a joke", None, ""],
        "messages": [None, json.dumps([{"role": "user", "content": "Hi"}]), None],
        "max_tokens": ["8", "9", "x"],
    }
    pa_csv.write_csv(pa.table(columns), tmp_path / "in.csv")
    counts = load_requests(fresh_db, "csv", str(tmp_path / "in.csv"))
    assert counts == {"requests": 2, "rejects": 1}
    assert rejects_by_row(fresh_db, "csv")[3][0] in ("prompt/messages", "max_tokens")
    pq.write_table(pa.table({**columns, "max_tokens": [8, 9, None]}), tmp_path / "in.parquet")
    assert load_requests(fresh_db, "pq", str(tmp_path / "in.parquet")) == {"requests": 2, "rejects": 1}
    assert fresh_db.execute("select max_tokens from prompts where run_id='pq' and request_id='c2'").fetchone() == (9,)


def test_missing_file_and_unknown_format_are_clear_errors(tmp_path):
    with pytest.raises(BatchBinError, match="not found"):
        read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "in.txt").write_text("hello")
    with pytest.raises(BatchBinError, match="unknown input format"):
        read_rows(tmp_path / "in.txt")


def test_validate_rows_keeps_first_of_duplicate_ids():
    valid, rejects = validate_rows([(1, {"id": "a", "prompt": "x"}, "", None), (2, {"id": "a", "prompt": "y"}, "", None)])
    assert [v["prompt"] for v in valid] == ["x"]
    assert rejects[0]["row_number"] == 2


SCHEMA = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}


def test_response_format_is_stored_as_the_constraint_to_apply(fresh_db, tmp_path):
    rows = [{"id": "s", "prompt": "x", "response_format": {"type": "json_schema",
                                                          "json_schema": {"name": "c", "strict": True, "schema": SCHEMA}}},
            {"id": "o", "prompt": "x", "response_format": {"type": "json_object"}},
            {"id": "t", "prompt": "x", "response_format": {"type": "text"}},
            {"id": "n", "prompt": "x"}]
    assert load_requests(fresh_db, "r", write_jsonl(tmp_path / "in.jsonl", rows)) == {"requests": 4, "rejects": 0}
    stored = dict(fresh_db.execute("select request_id, response_format::varchar from prompts").fetchall())
    assert json.loads(stored["s"]) == {"type": "json_schema", "schema": SCHEMA}
    assert json.loads(stored["o"]) == {"type": "json_object"}
    assert stored["t"] is None and stored["n"] is None


@pytest.mark.parametrize("response_format, field", [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format"),
    ({"type": "json_object", "json_schema": {"schema": SCHEMA}}, "response_format"),
    ({"type": "json_schema", "json_schema": {"name": "no schema"}}, "response_format.json_schema.schema"),
])
def test_a_bad_response_format_is_rejected_naming_the_field(fresh_db, tmp_path, response_format, field):
    rows = [{"id": "a", "prompt": "x", "response_format": response_format}]
    assert load_requests(fresh_db, "r", write_jsonl(tmp_path / "in.jsonl", rows)) == {"requests": 0, "rejects": 1}
    assert rejects_by_row(fresh_db)[1][0] == field


def test_a_file_loads_in_chunks_with_ids_checked_across_them(fresh_db, tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"Question {i}"} for i in range(7)]
    rows[5] = {"id": "q1", "prompt": "the id of row 2 again"}  # a repeat three rows of chunk 3 later
    path = write_jsonl(tmp_path / "in.jsonl", rows, extra_lines=["{broken"])
    assert load_requests(fresh_db, "r", path, chunk_rows=3) == {"requests": 6, "rejects": 2}
    assert fresh_db.execute("select list(row_number order by row_number) from prompts where run_id = 'r'"
                            ).fetchone()[0] == [1, 2, 3, 4, 5, 7]
    assert rejects_by_row(fresh_db)[6] == ("id", "duplicate id 'q1' (first on row 2)")
    assert rejects_by_row(fresh_db)[8][1].startswith("not valid JSON")


def test_parquet_and_csv_stream_in_batches(fresh_db, tmp_path, monkeypatch):
    import batchbin.io.readers as readers_module

    monkeypatch.setattr(readers_module, "CHUNK_ROWS", 2)  # record batches of 2 rows
    table = pa.table({"id": [f"p{i}" for i in range(5)], "prompt": [f"line one\nline two of {i}" for i in range(5)]})
    pq.write_table(table, tmp_path / "in.parquet")
    pa_csv.write_csv(table, tmp_path / "in.csv")  # the prompts are quoted over two lines
    for name in ("in.parquet", "in.csv"):
        assert load_requests(fresh_db, name, str(tmp_path / name)) == {"requests": 5, "rejects": 0}
        assert fresh_db.execute("select prompt from prompts where run_id = $r and row_number = 5", {"r": name}
                                ).fetchone() == ("line one\nline two of 4",)


def test_a_file_that_breaks_halfway_leaves_the_stored_run_as_it_was(fresh_db, tmp_path, monkeypatch):
    import batchbin.tasks.load as load_module

    path = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "first"}, {"id": "b", "prompt": "second"}])
    assert load_requests(fresh_db, "r", path) == {"requests": 2, "rejects": 0}

    def breaks_after_three_rows(_path):
        for number in range(1, 4):
            yield number, {"id": f"new{number}", "prompt": "text"}, "", None
        raise BatchBinError("cannot read in.csv as csv: CSV parse error: Expected 2 columns, got 4")

    monkeypatch.setattr(load_module, "iter_rows", breaks_after_three_rows)
    with pytest.raises(BatchBinError, match="Expected 2 columns"):
        load_requests(fresh_db, "r", path, chunk_rows=1)  # three chunks were stored before the error
    assert fresh_db.execute("select list(request_id order by row_number) from prompts where run_id = 'r'"
                            ).fetchone()[0] == ["a", "b"]


def test_a_csv_row_that_does_not_fit_the_header_is_a_reject_and_the_rest_loads(fresh_db, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,prompt\na,first\nb,too,many,cells\n\nc,"a prompt\nover two lines"\nd\n')
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 2, "rejects": 2}
    assert rejects_by_row(fresh_db) == {2: (None, "4 cells, but the header has 2"), 4: (None, "1 cells, but the header has 2")}
    assert fresh_db.execute("select list(row_number order by row_number) from prompts").fetchone()[0] == [1, 3]


def test_a_csv_row_that_is_not_utf8_is_a_reject_and_the_rest_loads(fresh_db, tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,prompt\na,fine\nb,caf\xe9\nc,also fine\n")
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 2, "rejects": 1}
    assert rejects_by_row(fresh_db) == {2: (None, "not valid UTF-8")}
    assert fresh_db.execute("select raw from rejects").fetchone() == ('["b", "caf\ufffd"]',)
    path.write_bytes(b"id,pr\xe9mpt\na,fine\n")
    with pytest.raises(BatchBinError, match="header is not valid UTF-8"):
        read_rows(path)


def test_a_line_that_is_not_utf8_is_rejected_and_the_rest_loads(fresh_db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "caf\xe9"}\n{"id": "b", "prompt": "fine"}\n')
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 1, "rejects": 1}
    assert rejects_by_row(fresh_db)[1][1].startswith("not valid UTF-8")


def test_csv_text_that_looks_like_null_is_text(fresh_db, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("\ufeffid,prompt\nn1,NA\nn2,null\nn3,\n", encoding="utf-8")  # with a byte-order mark
    assert load_requests(fresh_db, "r", str(path)) == {"requests": 2, "rejects": 1}
    assert fresh_db.execute("select list(prompt order by row_number) from prompts").fetchone()[0] == ["NA", "null"]


def test_a_long_load_says_how_far_it_got(fresh_db, tmp_path):
    from batchbin.tasks.common import chunk_progress

    said: list[str] = []
    rows = [{"id": f"q{i}", "prompt": "text"} for i in range(5)]
    path = write_jsonl(tmp_path / "in.jsonl", rows, extra_lines=["not json"])
    load_requests(fresh_db, "r", path, chunk_rows=2, progress=chunk_progress(said.append, "rows read", every_s=0))
    assert said == ["2 rows read", "4 rows read", "6 rows read"]
    quiet: list[str] = []
    load_requests(fresh_db, "r", path, chunk_rows=2, progress=chunk_progress(quiet.append, "rows read", every_s=60))
    assert quiet == []  # at most one line every minute, and the load took less
    assert chunk_progress(said.append, "prompts", total=12_000, every_s=0)(8192) is None and said[-1] == "8,192 of 12,000 prompts"
