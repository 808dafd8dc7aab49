"""Jobs defined in SQL: a DuckDB query over anything DuckDB reads (Parquet, CSV, JSON, another
DuckDB file through ATTACH, the extensions a user installs) returns the requests.

    batchbin run --query "select id, prompt from 'prompts.parquet'"
    batchbin run labels.sql --template "Label this flight.\\n{fields}\\nLabel:" --field-order auto

The query runs in a DuckDB of its own (in memory; never BatchBin's database). It returns either
request columns (`id`, `prompt` or `messages`, options such as `max_tokens`), or `id` and plain
columns that a template renders (batchbin/io/templates.py) into a chat request's user message;
option columns still apply. Rows come out as the file readers' rows (number, row, raw text,
problem), so the load stage validates them the same way (batchbin/io/request_schema.py).

Problems found before any work, each one line: the query fails, returns no rows, has no `id`
column, or the template names a column it does not return.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import duckdb
import pyarrow as pa

from batchbin.errors import BatchBinError
from batchbin.io.field_order import FieldOrder, choose_field_order
from batchbin.io.readers import JSON_COLUMNS, parse_json
from batchbin.io.templates import FIELDS, Template, template_text
from batchbin.store.db import registered
from batchbin.store.queries import fetch_arrow

FieldOrderChoice = Literal["input", "auto"]
# columns that are a request's options, not its fields (batchbin/io/request_schema.py)
OPTION_COLUMNS = ("max_tokens", "min_tokens", "ignore_eos", "temperature", "top_p", "seed", "stop", "metadata",
                  "response_format")
REQUEST_TEXT_COLUMNS = ("prompt", "messages")


@dataclass(frozen=True)
class QueryJob:
    """A table job: the query's text, the template (text; None: the query returns prompts) and
    the order of the `{fields}` lines ("input": the query's column order; "auto": chosen)."""

    query: str
    template: str | None = None
    field_order: FieldOrderChoice = "input"

    @classmethod
    def of(cls, query: str | None, input_path: str | None, template: str | None,
           field_order: FieldOrderChoice = "input") -> "QueryJob":
        """The job from `--query` text, or from a `.sql` input file (its text is the query)."""
        if query is None:
            path = Path(input_path or "")
            if not path.is_file():
                raise BatchBinError(f"query file not found: {input_path}")
            query = path.read_text(encoding="utf-8")
        if not query.strip():
            raise BatchBinError("the query is empty")
        return cls(query, None if template is None else template_text(template), field_order)


@dataclass
class QueryRequests:
    """What a table job's query gave: its rows as the readers give them, in the chosen order."""

    rows: list[tuple[int, dict | None, str, str | None]]
    columns: list[str]
    fields: list[str]  # the `{fields}` lines, in the order used
    data_hash: str
    field_order: FieldOrder | None = None

    def __iter__(self) -> Iterator[tuple[int, dict | None, str, str | None]]:
        return iter(self.rows)


# The query results of the job at hand, by query text, while `kept_query_results` is entered:
# a run checks, fingerprints and loads its query's rows from one execution of it.
_KEPT: ContextVar[dict[str, pa.Table] | None] = ContextVar("batchbin_kept_query_results", default=None)


@contextmanager
def kept_query_results() -> Iterator[None]:
    """Within the block, each query runs once and its rows are reused (one run's view of the
    tables: a later run, outside the block, reads them again)."""
    token = _KEPT.set({})
    try:
        yield
    finally:
        _KEPT.reset(token)


def run_query(query: str) -> pa.Table:
    """The query's result as Arrow, from a fresh in-memory DuckDB (or kept from its first run
    inside `kept_query_results`); a failure is one clear line."""
    kept = _KEPT.get()
    if kept is not None and query in kept:
        return kept[query]
    table = _execute_query(query)
    if kept is not None:
        kept[query] = table
    return table


def _execute_query(query: str) -> pa.Table:
    con = duckdb.connect(":memory:")
    try:
        statements = duckdb.extract_statements(query)
        if not statements or statements[-1].type != duckdb.StatementType.SELECT:
            raise BatchBinError("the query returns no rows: its last statement must be a SELECT (or FROM ...)")
        return con.sql(query).to_arrow_table()
    except duckdb.Error as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BatchBinError(f"the query failed: {first}") from None
    finally:
        con.close()


def data_hash(table: pa.Table) -> str:
    """sha256 of the query's rows (Arrow IPC stream): a changed table is a new run."""
    digest = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()


def query_fingerprint(job: QueryJob, table: pa.Table | None = None) -> str:
    """The input fingerprint of a table job: its query, template, field order and the rows it returns."""
    table = run_query(job.query) if table is None else table
    key = {"query": job.query, "template": job.template, "field_order": job.field_order, "rows": data_hash(table)}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def query_requests(job: QueryJob, field_order: FieldOrderChoice | None = None,
                   table: pa.Table | None = None) -> QueryRequests:
    """Run the job's query and make its requests (`field_order` overrides the job's: the
    agreement check renders rows in the user's order)."""
    table = run_query(job.query) if table is None else table
    columns = table.column_names
    if "id" not in columns:
        raise BatchBinError(f"the query returns no 'id' column (its columns: {', '.join(columns)}); select one, "
                            "e.g. `row_number() over () as id`, so results join back to the source")
    template = Template.parse(job.template) if job.template is not None else None
    if template is None and not set(REQUEST_TEXT_COLUMNS) & set(columns):
        raise BatchBinError(f"the query returns neither 'prompt' nor 'messages' (its columns: {', '.join(columns)}); "
                            "select one, or give a template (--template) that renders the columns")
    if template is not None:
        template.check_columns(columns)
    if table.num_rows == 0:
        raise BatchBinError("the query returned no rows: nothing to run")
    order = field_order or job.field_order
    fields = [name for name in columns if name != "id" and name not in OPTION_COLUMNS
              and (template is None or name not in template.columns)]
    con = duckdb.connect(":memory:")
    try:
        with registered(con, query_rows=table):
            texts = fetch_arrow(con, "query_jobs.as_text").to_pydict()
        chosen = None
        if template is not None and template.uses_fields and order == "auto" and fields:
            job_fields = pa.table({"row_key": pa.array(range(table.num_rows), pa.int64()),
                                   **{name: texts[name] for name in fields}})
            with registered(con, job_fields=job_fields):
                chosen = choose_field_order(con, fields)
            fields = chosen.fields
    finally:
        con.close()
    originals = table.to_pylist()
    row_keys = chosen.row_keys if chosen is not None else range(table.num_rows)
    rows = [_request_row(index, originals[index], texts, template, fields) for index in row_keys]
    return QueryRequests(rows, columns, fields if template is not None and template.uses_fields else [],
                         data_hash(table), chosen)


def _request_row(index: int, original: dict, texts: dict[str, list], template: Template | None,
                 fields: list[str]) -> tuple[int, dict | None, str, str | None]:
    """One request row, numbered by its place in the query's result (1 = the first row)."""
    number = index + 1
    raw = json.dumps(original, default=str, ensure_ascii=False)
    row = {key: value for key, value in original.items()
           if (key in OPTION_COLUMNS or key == "id" or (template is None and key in REQUEST_TEXT_COLUMNS))
           and value is not None and value != ""}
    problem = None
    for column in JSON_COLUMNS:  # JSON columns may come as text, as from a CSV file
        if isinstance(row.get(column), str) and (column != "stop" or row[column].startswith("[")):
            value, error = parse_json(row[column])
            if error:
                problem = f"column '{column}': {error}"
            else:
                row[column] = value
    if template is not None:
        values = {name: texts[name][index] for name in texts}
        row["messages"] = [{"role": "user", "content": template.render(values, fields)}]
    return number, row, raw, problem


def describe_fields(requests: QueryRequests) -> str | None:
    """One line on the field order chosen, for the logs and the plan."""
    chosen = requests.field_order
    if chosen is None:
        return None
    return (f"{FIELDS} order {', '.join(chosen.fields)} ({chosen.shared_chars_chosen:,} characters of the field lines "
            f"shared between neighbouring rows; {chosen.shared_chars_user:,} in the query's column order)")
