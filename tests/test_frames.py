"""Results in Python: batchbin.results / rejects / runs as polars DataFrames from a database file."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

import batchbin
from batchbin.store import db
from batchbin.errors import BatchBinError


@pytest.fixture
def two_runs(db_path):
    con = db.connect(db_path)
    con.execute("""
        INSERT INTO runs (run_id, status, started_at) VALUES
            ('old', 'finished', TIMESTAMP '2026-11-30 10:00:00'), ('new', 'finished', TIMESTAMP '2026-12-01 10:00:00');
        INSERT INTO prompts (run_id, request_id, row_number, prompt) VALUES
            ('new', 'b', 2, 'Second'), ('new', 'a', 1, 'First'), ('old', 'a', 1, 'Old');
        INSERT INTO results (run_id, request_id, output_text, output_tokens, finish_reason, error) VALUES
            ('new', 'b', 'Two', 1, 'stop', NULL), ('new', 'a', 'One', 1, 'stop', NULL), ('old', 'a', NULL, 0, 'error', 'boom');
        INSERT INTO rejects (run_id, row_number, request_id, field, reason, raw) VALUES
            ('new', 3, 'c', 'prompt', 'the prompt is empty', '{}');""")
    con.close()
    return db_path


def test_results_of_the_latest_run_in_input_order(two_runs):
    frame = batchbin.results(two_runs)
    assert isinstance(frame, pl.DataFrame)
    assert frame["id"].to_list() == ["a", "b"] and frame["output_text"].to_list() == ["One", "Two"]
    assert batchbin.results(two_runs, run_id="old")["error"].to_list() == ["boom"]


def test_rejects_and_runs(two_runs):
    assert batchbin.rejects(two_runs).select("row_number", "field", "reason").rows() == [(3, "prompt", "the prompt is empty")]
    runs = batchbin.runs(two_runs)
    assert runs["run_id"].to_list() == ["new", "old"]
    assert runs.filter(pl.col("run_id") == "new").select("requests", "completed", "errors", "rejects").row(0) == (2, 2, 0, 1)


def test_an_empty_database_says_what_to_do(db_path):
    db.connect(db_path).close()
    with pytest.raises(BatchBinError, match="no run"):
        batchbin.results(db_path)


def test_the_command_line_does_not_import_polars():
    script = "import sys, batchbin.cli.main; print('polars' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
