"""Shared fixtures: databases (in memory and on disk)."""

from __future__ import annotations

import duckdb
import pytest

from batchbin import db


def pytest_collection_modifyitems(items):
    """Run the benchmark test last: it replaces the shared engine with others."""
    items.sort(key=lambda item: item.module.__name__.endswith("test_bench"))


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


# Every test that generates uses these engine options, so the whole session shares one vLLM
# engine (batchbin.engine keeps the engine of the last settings alive).
TEST_ENGINE = {"kv_cache_gib": 1.0, "max_num_seqs": 16}


@pytest.fixture(scope="session")
def prefect_api():
    """The ephemeral Prefect API for the whole session (real Prefect, no server to run)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def default_model_path():
    """The embedded default model, prepared once (a real model, not a mock)."""
    from batchbin.models import resolve_model

    return resolve_model("default")
