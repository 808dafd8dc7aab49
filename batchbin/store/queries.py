"""Load the named SQL statements in sql/*.sql.

Each statement opens with a `-- name: NAME` line; the comment lines after it are its
docstring, the rest up to the next `-- name:` line is its body. Parameters use DuckDB's own
`$name` syntax. A malformed file fails at load time with its file and line, not mid-run: a
query whose SQL DuckDB's parser refuses as well.

A body of several statements is split by DuckDB's own parser (`duckdb.extract_statements`),
which also names each statement's parameters, so a `;` inside a string literal or a comment
never splits a statement.

    from batchbin.store.queries import sql
    con.execute(sql("load.insert_prompts"), {"run_id": run_id})
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Iterator

import duckdb

NAME_LINE = re.compile(r"^--\s*name:\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*$")


class SQLFileError(ValueError):
    """A file in sql/ that cannot be read as named statements."""


@dataclass(frozen=True)
class Query:
    name: str
    doc: str
    body: str
    source: str  # "file.sql:line"


def parse_sql_file(text: str, filename: str) -> dict[str, Query]:
    """Split one .sql file into its named queries."""
    queries: dict[str, Query] = {}
    current: dict | None = None

    def finish(block: dict | None) -> None:
        if block is None:
            return
        body = "\n".join(block["body"]).strip()
        if not body:
            raise SQLFileError(f"{block['source']}: query '{block['name']}' has no SQL body")
        queries[block["name"]] = Query(block["name"], "\n".join(block["doc"]).strip(), body, block["source"])

    for lineno, line in enumerate(text.splitlines(), start=1):
        match = NAME_LINE.match(line.strip())
        if match:
            finish(current)
            name = match["name"]
            if name in queries or (current and current["name"] == name):
                raise SQLFileError(f"{filename}:{lineno}: query '{name}' is defined twice")
            current = {"name": name, "doc": [], "body": [], "source": f"{filename}:{lineno}"}
        elif current is None:
            if line.strip() and not line.strip().startswith("--"):
                raise SQLFileError(f"{filename}:{lineno}: SQL before the first '-- name:' line")
        elif line.strip().startswith("--") and not current["body"]:
            current["doc"].append(line.strip().lstrip("-").strip())
        else:
            current["body"].append(line)
    finish(current)
    return queries


@cache
def all_queries() -> dict[str, Query]:
    """Every query in sql/, keyed as 'file_stem.query_name'."""
    found: dict[str, Query] = {}
    for entry in sorted(resources.files("batchbin.sql").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            stem = entry.name[: -len(".sql")]
            for name, query in parse_sql_file(entry.read_text(), entry.name).items():
                found[f"{stem}.{name}"] = query
    for qualified_name in found:
        statements(qualified_name, found)  # DuckDB parses every query now, not mid-run
    return found


@cache
def sql_file_text(stem: str) -> str:
    """The whole text of sql/STEM.sql (a stage's cache key covers it)."""
    return resources.files("batchbin.sql").joinpath(f"{stem}.sql").read_text()


def sql(qualified_name: str) -> str:
    """The SQL text of one named query, e.g. sql('schema.create_tables')."""
    try:
        return all_queries()[qualified_name].body
    except KeyError:
        raise KeyError(f"no SQL query named '{qualified_name}' in sql/*.sql") from None


@cache
def _split(qualified_name: str, query: Query) -> tuple[tuple[str, frozenset[str]], ...]:
    try:
        parsed = duckdb.extract_statements(query.body)
    except duckdb.Error as error:
        raise SQLFileError(f"{query.source}: query '{query.name}' does not parse: {error}") from None
    return tuple((statement.query.strip(), frozenset(statement.named_parameters)) for statement in parsed)


def statements(qualified_name: str, queries: dict[str, Query] | None = None) -> list[tuple[str, set[str]]]:
    """The statements of one named query, as DuckDB's parser splits them, with their $parameters."""
    query = (queries or all_queries()).get(qualified_name)
    if query is None:
        raise KeyError(f"no SQL query named '{qualified_name}' in sql/*.sql")
    return [(text, set(names)) for text, names in _split(qualified_name, query)]


def execute(con, qualified_name: str, params: dict | None = None):
    """Execute every statement of a named query, each with the parameters it uses.

    Returns the connection after the last statement, so `.fetchall()` reads its result.
    """
    params = params or {}
    result = con
    for text, names in statements(qualified_name):
        missing = names - params.keys()
        if missing:
            raise KeyError(f"query '{qualified_name}' needs parameters {sorted(missing)}")
        result = con.execute(text, {name: params[name] for name in names} if names else None)
    return result


def fetch_arrow(con, qualified_name: str, params: dict | None = None):
    """The result of a one-statement named query as an Arrow table."""
    (text, names), = statements(qualified_name)
    params = params or {}
    return con.sql(text, params={name: params[name] for name in names} if names else None).to_arrow_table()


def row_batches(con, qualified_name: str, params: dict | None = None, rows_per_batch: int = 4096) -> Iterator[list[dict]]:
    """The result of a one-statement named query, streamed as lists of row dicts.

    It reads on a cursor of its own, so `con` can go on writing while the rows stream."""
    (text, names), = statements(qualified_name)
    params = params or {}
    cursor = con.cursor()
    try:
        reader = cursor.sql(text, params={name: params[name] for name in names} if names else None).to_arrow_reader(rows_per_batch)
        for batch in reader:
            yield batch.to_pylist()
    finally:
        cursor.close()


def fetch_one(con, qualified_name: str, params: dict | None = None):
    """The first row of a named query's result, or None. Reads the whole result: DuckDB refuses
    to register a table while a result is left half-read."""
    rows = execute(con, qualified_name, params).fetchall()
    return rows[0] if rows else None
