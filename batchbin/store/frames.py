"""A BatchBin database in Python: results, rejects and runs as polars DataFrames, straight from
DuckDB (read-only; a job running on the database is waited for briefly, as `batchbin sql` does).

    import batchbin
    done = batchbin.results("out/batchbin.duckdb")            # the latest run
    done.filter(done["finish_reason"] == "length")
    batchbin.rejects("out/batchbin.duckdb", run_id="93c231cd7e7f")
    batchbin.runs("out/batchbin.duckdb")

SQL in sql/results.sql; `batchbin.results` etc. are this module's functions, imported on first use.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from batchbin.store import db
from batchbin.errors import BatchBinError
from batchbin.store.queries import fetch_one, statements


def _frame(db_path: str | Path, query: str, run_id: str | None = None, of_a_run: bool = True) -> pl.DataFrame:
    con = db.connect(db_path, read_only=True)
    try:
        params = {}
        if of_a_run:
            if run_id is None:
                latest = fetch_one(con, "results.latest_run")
                if latest is None:
                    raise BatchBinError(f"no run in {db_path} yet; run `batchbin run` first")
                run_id = latest[0]
            params = {"run_id": run_id}
        (text, _), = statements(query)
        return con.sql(text, params=params or None).pl()
    finally:
        con.close()


def results(db_path: str | Path, run_id: str | None = None) -> pl.DataFrame:
    """Every result of a run (default: the latest) with its id and input, in input order."""
    return _frame(db_path, "results.results_of_run", run_id)


def rejects(db_path: str | Path, run_id: str | None = None) -> pl.DataFrame:
    """The rejected input rows of a run (default: the latest), with their field and reason."""
    return _frame(db_path, "results.rejects_of_run", run_id)


def runs(db_path: str | Path) -> pl.DataFrame:
    """Every run of the database, newest first, with its status and counts."""
    return _frame(db_path, "results.all_runs", of_a_run=False)
