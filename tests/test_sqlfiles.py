"""The SQL loader: named queries, load-time errors, multi-statement execution."""

from __future__ import annotations

import pytest

from batchbin.store.queries import SQLFileError, all_queries, execute, parse_sql_file, statements


def test_every_sql_file_loads_and_names_are_qualified():
    queries = all_queries()
    assert "schema.create_tables" in queries
    assert "schedule.replace_schedule" in queries
    assert all(query.body for query in queries.values())


def test_docstring_and_body_are_split():
    parsed = parse_sql_file("-- name: q\n-- Says hello.\n-- Twice.\nSELECT 1;\n", "x.sql")
    assert parsed["q"].doc == "Says hello.\nTwice."
    assert parsed["q"].body == "SELECT 1;"
    assert parsed["q"].source == "x.sql:1"


@pytest.mark.parametrize("text, message", [
    ("SELECT 1;", "x.sql:1: SQL before the first '-- name:' line"),
    ("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;", "x.sql:3: query 'a' is defined twice"),
    ("-- name: a\n-- only a comment\n", "x.sql:1: query 'a' has no SQL body"),
])
def test_bad_files_fail_at_load_with_file_and_line(text, message):
    with pytest.raises(SQLFileError, match=message):
        parse_sql_file(text, "x.sql")


def test_run_executes_each_statement_with_its_parameters(fresh_db):
    assert len(statements("load.clear_requests")) == 2
    with pytest.raises(KeyError, match="run_id"):
        execute(fresh_db, "load.clear_requests", {})
    assert execute(fresh_db, "load.counts", {"run_id": "none"}).fetchone() == (0, 0)


def test_rows_stream_in_batches_while_the_connection_writes(db_path):
    """`row_batches` reads on a cursor of its own: generation stores results on the same
    connection while the work still streams in."""
    from batchbin.store import db
    from batchbin.store.queries import fetch_one, row_batches
    from batchbin.store.checkpoints import store_results

    con = db.connect(db_path)
    for position, request_id in enumerate(["e", "d", "c", "b", "a"]):
        con.execute("insert into prompts (run_id, request_id, row_number, prompt) values ('r', ?, ?, 'p')",
                    [request_id, position + 1])
        con.execute("insert into tokens (run_id, request_id, token_ids, prompt_tokens) values ('r', ?, [1, 2], 2)",
                    [request_id])
        con.execute("insert into schedule (run_id, request_id, bin, batch, position) values ('r', ?, 0, 0, ?)",
                    [request_id, position])
    assert fetch_one(con, "generate.count_work", {"run_id": "r"}) == (5, 1)  # 5 to do, in attempt 1
    seen = []
    for rows in row_batches(con, "generate.work_in_order", {"run_id": "r", "after": -1, "limit": 100}, rows_per_batch=2):
        assert len(rows) <= 2
        seen += [row["request_id"] for row in rows]
        store_results(con, "r", [{"request_id": row["request_id"], "output_text": "x", "batch": 0} for row in rows],
                      attempt=1)
    assert seen == ["e", "d", "c", "b", "a"]
    assert fetch_one(con, "generate.count_work", {"run_id": "r"}) == (0, 2)  # a resume would be attempt 2
    con.close()


def _queries(text: str) -> dict:
    return {f"x.{name}": query for name, query in parse_sql_file(text, "x.sql").items()}


def test_a_semicolon_inside_a_string_or_comment_does_not_split_a_statement(fresh_db):
    text = ("-- name: q\n"
            "CREATE TABLE notes (body VARCHAR);\n"
            "INSERT INTO notes VALUES ('first line;\nsecond; line;\n'), ($extra);  -- a comment; with a semicolon;\n"
            "/* a block comment;\n */ SELECT count(*) FROM notes;\n")
    parts = statements("x.q", _queries(text))
    assert len(parts) == 3
    assert parts[1][1] == {"extra"}
    assert "second; line;" in parts[1][0]
    for statement, names in parts:
        fresh_db.execute(statement, {"extra": "x;"} if names else None)
    assert fresh_db.execute("SELECT body FROM notes ORDER BY body").fetchall() == [("first line;\nsecond; line;\n",), ("x;",)]


def test_a_query_duckdb_cannot_parse_fails_with_file_and_line():
    with pytest.raises(SQLFileError, match=r"x.sql:3: query 'b' does not parse"):
        statements("x.b", _queries("-- name: a\nSELECT 1;\n-- name: b\nSELEC oops FROM;\n"))
