"""The output file: the run's results in input order, keyed by the user's ids, as JSON lines or
Parquet, written by DuckDB straight from the database."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from batchbin.errors import BatchBinError
from batchbin.tasks.report import export_results


@pytest.fixture
def finished_run(fresh_db):
    """A run of three requests, stored out of input order; one with metadata, one failed."""
    fresh_db.execute("""
        INSERT INTO prompts (run_id, request_id, row_number, prompt, metadata) VALUES
            ('r', 'b', 2, 'Second', NULL), ('r', 'a', 1, 'First', '{"team": "é"}'), ('r', 'c', 3, 'Third', NULL),
            ('other', 'a', 1, 'Other run', NULL)""")
    fresh_db.execute("""
        INSERT INTO results (run_id, request_id, output_text, prompt_tokens, output_tokens, cached_tokens,
                             finish_reason, error) VALUES
            ('r', 'c', NULL, 3, 0, 0, 'error', 'ValueError: bad'), ('r', 'a', 'Un "deux"' || chr(10) || 'trois', 2, 4, 0, 'stop', NULL),
            ('r', 'b', 'Two', 2, 1, 0, 'length', NULL), ('other', 'a', 'x', 1, 1, 0, 'stop', NULL)""")
    return fresh_db


EXPECTED = [
    {"id": "a", "output": 'Un "deux"\ntrois', "finish_reason": "stop", "prompt_tokens": 2, "output_tokens": 4,
     "cached_tokens": 0, "error": None, "metadata": '{"team": "é"}'},
    {"id": "b", "output": "Two", "finish_reason": "length", "prompt_tokens": 2, "output_tokens": 1,
     "cached_tokens": 0, "error": None, "metadata": None},
    {"id": "c", "output": None, "finish_reason": "error", "prompt_tokens": 3, "output_tokens": 0,
     "cached_tokens": 0, "error": "ValueError: bad", "metadata": None},
]


def test_jsonl_output_has_one_line_per_result_in_input_order(finished_run, tmp_path):
    path = tmp_path / "deep" / "out.jsonl"
    assert export_results(finished_run, "r", path) == 3
    text = path.read_text(encoding="utf-8")
    assert "é" in text  # UTF-8 as it is, not escaped
    assert [json.loads(line) for line in text.splitlines()] == EXPECTED


def test_parquet_output_has_the_same_rows(finished_run, tmp_path):
    path = tmp_path / "out.parquet"
    assert export_results(finished_run, "r", path) == 3
    assert pq.read_table(path).to_pylist() == EXPECTED


def test_a_failed_export_leaves_the_previous_output_file_whole(finished_run, tmp_path, monkeypatch):
    """The file is renamed into place only when complete: a reader never sees half of one."""
    import batchbin.tasks.report as report_module

    path = tmp_path / "out.jsonl"
    assert export_results(finished_run, "r", path, "openai") == 3
    before = path.read_bytes()

    def broken(row, model, created):
        raise OSError("No space left on device")

    monkeypatch.setattr(report_module, "output_line", broken)
    with pytest.raises(BatchBinError, match="No space left.*every result is in the database"):
        export_results(finished_run, "r", path, "openai")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no partial file left behind
