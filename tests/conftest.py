"""Shared fixtures: databases (in memory and on disk)."""

from __future__ import annotations

import duckdb
import pytest

from batchbin import db


@pytest.fixture
def fresh_db():
    """An in-memory DuckDB with the BatchBin schema."""
    con = duckdb.connect(":memory:")
    db.ensure_schema(con)
    yield con
    con.close()


@pytest.fixture
def db_path(tmp_path):
    """Path of a new BatchBin database file."""
    return str(tmp_path / "batchbin.duckdb")
