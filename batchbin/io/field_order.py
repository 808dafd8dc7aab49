"""`--field-order auto`: the order of a table job's `{fields}` lines (and of its rows) that lets
the most prompt text be shared as a prefix, chosen from the columns' statistics in SQL
(sql/query_jobs.sql).

The LLM-SQL paper (Liu et al., "Optimizing LLM Queries in Relational Workloads", MLSys 2025)
orders columns greedily by how much prefix they let rows share. Ordering by each column's own
statistics (distinct count, value length) misses that columns go together: once rows are
grouped by `dest`, the airport name of `dest` shares in every group however many names there
are. So each step here measures, for every field left, what its line would share *given the
fields already chosen*: rows sorted by the chosen fields, a field's line is shared where a row
equals the row before it on all of them and on this field; the sum of those lines' characters
is the field's gain. The field with the largest gain comes next and splits the groups; a field
whose gain is nil keeps its place in the user's order, after the chosen ones. Rows then go in
the order of the final groups, so rows with a long common prefix are neighbours.

    order = choose_field_order(con, "job_fields", ["carrier", "origin", "flight"])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from batchbin.store.queries import execute, fetch_arrow, fetch_one


@dataclass
class FieldOrder:
    """The chosen order of the fields and of the rows (row keys), with what each field shares."""

    fields: list[str]
    row_keys: list[int]
    gains: dict[str, int] = field(default_factory=dict)  # characters each field's line shares, as chosen
    shared_chars_user: int = 0  # `{fields}` characters shared between neighbours in the user's order (rows sorted)
    shared_chars_chosen: int = 0  # the same in the chosen order


def choose_field_order(con: duckdb.DuckDBPyConnection, user_order: list[str]) -> FieldOrder:
    """The field order for the table `job_fields` (column `row_key`, then one text column per
    field) registered on `con`, a scratch in-memory database: greedy by conditional gain."""
    execute(con, "query_jobs.start_field_order")
    chosen: list[str] = []
    gains: dict[str, int] = {}
    while len(chosen) < len(user_order):
        stats = fetch_arrow(con, "query_jobs.field_gains", {"chosen": chosen}).to_pylist()
        if not stats:
            break
        position = {name: index for index, name in enumerate(user_order)}
        best = max(stats, key=lambda s: (s["shared_chars"], -s["groups"], -position[s["field"]]))
        if best["shared_chars"] <= 0:
            break
        chosen.append(best["field"])
        gains[best["field"]] = int(best["shared_chars"])
        execute(con, "query_jobs.split_groups", {"field": best["field"]})
    rest = [name for name in user_order if name not in chosen]
    for name in rest:  # rows with equal chosen fields keep sorting by the rest, in the user's order
        execute(con, "query_jobs.split_groups", {"field": name})
    fields = chosen + rest
    row_keys = [row["row_key"] for row in fetch_arrow(con, "query_jobs.row_order").to_pylist()]
    return FieldOrder(fields, row_keys, gains, shared_chars(con, user_order), shared_chars(con, fields))


def shared_chars(con: duckdb.DuckDBPyConnection, fields: list[str]) -> int:
    """Characters of `{fields}` lines that sorted rows share with their neighbour in this order."""
    return int(fetch_one(con, "query_jobs.shared_chars", {"fields": fields})[0] or 0)
