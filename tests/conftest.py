"""Shared fixtures: databases (in memory and on disk)."""

from __future__ import annotations

import sys

import duckdb
import pytest

from batchbin.store import db

ENGINE_BEFORE = pytest.StashKey[object]()


def pytest_collection_modifyitems(items):
    """Run the benchmark test last: it replaces the shared engine with others."""
    items.sort(key=lambda item: item.module.__name__.endswith("test_bench"))


# Tests that build a vLLM engine or generate carry the `engine` marker, so that
# `pytest -m "not engine"` runs the fast tests in seconds. A test without it that builds an
# engine in this process fails, naming the marker.

def _current_engine():
    engine_module = sys.modules.get("batchbin.engine.pool")
    return engine_module.current_engine() if engine_module is not None else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[ENGINE_BEFORE] = _current_engine()  # before any fixture, module-scoped ones included


def pytest_runtest_teardown(item):
    if item.get_closest_marker("engine") is None and _current_engine() is not item.stash.get(ENGINE_BEFORE, None):
        pytest.fail(f"{item.nodeid} built a vLLM engine (itself or in a fixture) without the engine marker: "
                    "add @pytest.mark.engine", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def step_costs_of_the_session(tmp_path_factory):
    """Every finished run refits this machine's step costs (batchbin/sim/machine_fits.py): the
    session's runs write theirs to a file of its own, not to the user's cache folder."""
    import os

    from batchbin.sim.machine_fits import STEP_COSTS_ENV

    before = os.environ.get(STEP_COSTS_ENV)
    os.environ[STEP_COSTS_ENV] = str(tmp_path_factory.mktemp("step-costs") / "step_costs.json")
    yield
    if before is None:
        os.environ.pop(STEP_COSTS_ENV, None)
    else:
        os.environ[STEP_COSTS_ENV] = before


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
# engine (batchbin.engine.pool keeps the engine of the last settings alive).
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
    from batchbin.engine.models import resolve_model

    return resolve_model("default")
