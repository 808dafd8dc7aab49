"""Table jobs (batchbin/io/query_jobs.py, templates.py, field_order.py): a DuckDB query as the
job's input, prompt templates with {column} and {fields}, the field order that shares the most
prefix, and the load stage over a query. Pure logic and DuckDB; no engine."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchbin.config import JobConfig
from batchbin.errors import BatchBinError
from batchbin.flows.table_jobs import first_word, reusable_tokens
from batchbin.io.field_order import choose_field_order
from batchbin.io.query_jobs import QueryJob, query_fingerprint, query_requests
from batchbin.io.templates import Template, template_text
from batchbin.store.db import registered
from batchbin.tasks.load import load_requests

CITIES = {"a": "Amsterdam, capital of the Netherlands", "b": "Berlin, capital of Germany", "c": "Copenhagen, Denmark"}


@pytest.fixture
def people(tmp_path):
    """A Parquet table of 30 rows: a distinct note first, then a city code and its long name."""
    rows = [{"id": i, "note": f"note number {i} " * 3, "city": code, "city_name": CITIES[code], "age": 20 + i % 2}
            for i, code in zip(range(1, 31), "abc" * 10)]
    path = tmp_path / "people.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_a_template_renders_named_columns_and_the_fields_in_order():
    template = Template.parse("Hi {name}! {{literal}}\n{fields}\nDone.")
    assert template.columns == ["name"] and template.uses_fields
    text = template.render({"name": "Ann", "a": "1", "b": None}, ["b", "a"])
    assert text == "Hi Ann! {literal}\nb: \na: 1\nDone."


@pytest.mark.parametrize("text, problem", [("Hi {", "does not parse"), ("{x:>5}", "only plain"), ("{}", "empty field"),
                                           ("  ", "empty")])
def test_a_bad_template_is_one_clear_error(text, problem):
    with pytest.raises(BatchBinError, match=problem):
        Template.parse(text)


def test_a_template_comes_from_text_or_a_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Row:\n{fields}")
    assert template_text(str(path)) == "Row:\n{fields}"
    assert template_text("Row:\\n{fields}") == "Row:\n{fields}"  # \n typed on the command line
    with pytest.raises(BatchBinError, match="template file not found"):
        template_text(str(tmp_path / "missing.txt"))


def test_a_query_of_request_columns_gives_requests_with_their_options(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text("id,prompt,max_tokens\n1,Say hi,5\n2,Say bye,\n")
    requests = query_requests(QueryJob(f"from read_csv('{csv}')"))
    assert [row for _, row, _, _ in requests] == [{"id": 1, "prompt": "Say hi", "max_tokens": 5},
                                                  {"id": 2, "prompt": "Say bye"}]


def test_a_template_renders_plain_columns_into_chat_requests(people):
    job = QueryJob(f"select id, city, age, 4 as max_tokens from '{people}' order by id", "City {city}:\n{fields}")
    number, row, raw, problem = next(iter(query_requests(job)))
    assert number == 1 and problem is None and json.loads(raw)["city"] == "a"
    assert row == {"id": 1, "max_tokens": 4, "messages": [{"role": "user", "content": "City a:\nage: 21"}]}


@pytest.mark.parametrize("query, template, message", [
    ("select 1 as id, 'x' as name", "Hello {nmae}", "names the column 'nmae', which the query does not return "
                                                    r"\(its columns: id, name\)"),
    ("select 1 as id, 'x' as name where false", "{name}", "returned no rows"),
    ("select 'x' as name", "{name}", "no 'id' column"),
    ("select 1 as id, 'x' as name", None, "neither 'prompt' nor 'messages'"),
    ("select * from no_such_table", "{fields}", "^the query failed: Catalog Error: Table with name no_such_table"),
    ("create table t (a int)", "{fields}", "last statement must be a SELECT"),
])
def test_query_problems_are_one_line_before_any_work(query, template, message):
    with pytest.raises(BatchBinError, match=message) as caught:
        query_requests(QueryJob(query, template))
    assert "\n" not in str(caught.value)


def test_a_query_reads_another_duckdb_file_and_json(tmp_path):
    other = tmp_path / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("create table items as select 7 as id, 'blue' as color")
    con.close()
    lines = tmp_path / "more.json"
    lines.write_text('{"id": 8, "color": "red"}\n')
    job = QueryJob(f"attach '{other}' as src (read_only); select * from src.items union all "
                   f"select * from read_json('{lines}')", "Color: {color}")
    assert [row["messages"][0]["content"] for _, row, _, _ in query_requests(job)] == ["Color: blue", "Color: red"]


def test_auto_field_order_puts_shared_fields_first_and_groups_rows(people):
    job = QueryJob(f"from '{people}' order by id", "Person:\n{fields}\nAnswer:", "auto")
    chosen = query_requests(job)
    # the long city name shares most; its code and the age follow it; the distinct note comes last
    assert chosen.fields[0] == "city_name" and chosen.fields[-1] == "note"
    assert chosen.field_order.shared_chars_chosen > chosen.field_order.shared_chars_user == 0
    cities = [row["messages"][0]["content"].split("\n")[1] for _, row, _, _ in chosen]
    assert cities == sorted(cities)  # rows grouped by the chosen fields
    numbers = sorted(number for number, _, _, _ in chosen)
    assert numbers == list(range(1, 31))  # each row keeps its number in the query's result
    user = query_requests(job, field_order="input")
    assert user.fields == ["note", "city", "city_name", "age"]


def test_the_greedy_order_counts_what_a_field_shares_given_the_fields_before_it():
    """`b` alone shares more than `c` (fewer values, longer), but once rows are grouped by `a`,
    `c` (equal within each group of `a`) shares more than `b` (which differs within them)."""
    rows = [{"row_key": i, "a": f"group-{i % 4}" * 5, "b": f"{i % 3}" * 24, "c": f"{i % 4}-detail" * 2}
            for i in range(24)]
    con = duckdb.connect()
    with registered(con, job_fields=pa.Table.from_pylist(rows)):
        order = choose_field_order(con, ["b", "c", "a"])
    assert order.fields[:2] == ["a", "c"]
    con.close()


def test_the_fingerprint_follows_the_data_the_template_and_the_order(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,x\n1,a\n")
    job = QueryJob(f"from read_csv('{path}')", "{x}")
    first = query_fingerprint(job)
    assert query_fingerprint(job) == first
    assert query_fingerprint(QueryJob(job.query, "{x}!")) != first
    assert query_fingerprint(QueryJob(job.query, "{x}", "auto")) != first
    path.write_text("id,x\n1,b\n")
    assert query_fingerprint(job) != first  # a changed table is a new run


def test_job_config_takes_a_query_or_a_sql_file_and_a_template_only_with_one(tmp_path):
    sql_file = tmp_path / "job.sql"
    sql_file.write_text("select 1 as id, 'hi' as prompt")
    config = JobConfig(input_path=str(sql_file))
    assert config.query_job().query == "select 1 as id, 'hi' as prompt"
    assert JobConfig(query="select 1 as id, 'x' as p", template="{p}").query_job().template == "{p}"
    assert JobConfig(input_path="a.jsonl").query_job() is None
    with pytest.raises(ValueError, match="a file .* or a query"):
        JobConfig()
    with pytest.raises(ValueError, match="renders the rows of a table job"):
        JobConfig(input_path="a.jsonl", template="{fields}")
    assert JobConfig(query="select 1").resolved_output_path("r").name == "query-results.jsonl"


def test_the_load_stage_stores_a_query_jobs_rows_and_rejects_bad_ones(fresh_db, people):
    job = QueryJob(f"select id, city, case when id = 3 then -1 end as max_tokens from '{people}' order by id",
                   "City: {city}")
    counts = load_requests(fresh_db, "r1", None, query_job=job)
    assert counts == {"requests": 29, "rejects": 1}
    row, field, reason = fresh_db.execute("select row_number, field, reason from rejects where run_id = 'r1'").fetchone()
    assert (row, field) == (3, "max_tokens") and "greater than or equal to 1" in reason
    content = fresh_db.execute("select messages->>'$[0].content' from prompts where request_id = '2'").fetchone()[0]
    assert content == "City: b"


def test_reusable_tokens_count_whole_blocks_of_the_sorted_neighbours_prefix():
    prompts = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9, 9], [7, 7]]
    assert reusable_tokens(prompts, block=2) == 4  # the second shares 4 tokens with the first
    assert reusable_tokens(prompts, block=3) == 3
    assert reusable_tokens([[1, 2], [1, 2]], block=1) == 1  # the last token is always computed


def test_first_word_is_the_label_of_an_answer():
    assert first_word("EARLY: 15\nON") == first_word("early.") == "early"
    assert first_word("  ") == ""


def test_a_run_reads_its_query_once_and_the_next_run_reads_it_again(tmp_path):
    """Inside kept_query_results (one run) a query runs once; outside it, each call reads the
    tables as they are now (a nightly run sees today's rows)."""
    from batchbin.io.query_jobs import kept_query_results, run_query

    table = tmp_path / "rows.csv"
    table.write_text("id,text\n1,a\n")
    query = f"select * from read_csv('{table}')"
    with kept_query_results():
        first = run_query(query)
        table.write_text("id,text\n1,a\n2,b\n")
        assert run_query(query) is first and first.num_rows == 1
    assert run_query(query).num_rows == 2
