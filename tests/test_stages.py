"""The stage machinery: the flow holds the order of the stages, a stage that runs again makes
every later one run again, and nothing else does; a stage's code (its SQL file, its modules)
and, for predict_lengths, the predictor "auto" picks are part of what makes it done.

Real Prefect (the ephemeral API), a real DuckDB file and the default model's tokenizer; no
engine is built: the stages before generation only.
"""

from __future__ import annotations

import json

import pytest
from prefect import flow

from batchbin.store import db
from batchbin.config import EngineOptions, JobConfig, file_fingerprint
from batchbin.flows.batch import PIPELINE, prepare_work
from batchbin.store.runs import RunRef
from batchbin.tasks.common import Stage, code_version
from tests.conftest import TEST_ENGINE
from batchbin.predictors.registry import shipped_predictor
from tests.test_predictors import add_run, synthetic_requests, train_tiny


@flow
def prepare(config: JobConfig, ref: RunRef, model_path: str) -> None:
    """The batch flow up to its schedule (no engine)."""
    prepare_work(ref, config, file_fingerprint(config.input_path), model_path)


def stamps(ref: RunRef) -> dict[str, str]:
    return {stage: db.stage_stamp(ref.db_path, ref.run_id, stage) for stage in PIPELINE}


def changed(before: dict, after: dict) -> list[str]:
    return [stage for stage in PIPELINE if before[stage] != after[stage]]


@pytest.fixture
def job(tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [{"id": f"q{i}", "messages": [{"role": "user", "content": f"Tell me about city number {i}."}]}
            for i in range(4)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # 4 requests queue for 2 sequences: their lengths matter, so "auto" runs the predictor
    config = JobConfig(input_path=str(path), db_path=str(tmp_path / "bb.duckdb"), max_tokens=16,
                       engine=EngineOptions(**{**TEST_ENGINE, "max_num_seqs": 2}))
    return config, RunRef(db_path=config.db_path, run_id="r")


def test_a_stage_that_runs_again_runs_every_later_one_again(job, prefect_api, default_model_path):
    config, ref = job
    prepare(config, ref, default_model_path)
    first = stamps(ref)
    assert all(first.values())

    prepare(config, ref, default_model_path)
    assert changed(first, stamps(ref)) == []  # nothing ran again

    prepare(config.model_copy(update={"k_bins": 2}), ref, default_model_path)
    second = stamps(ref)
    assert changed(first, second) == ["schedule"]

    prepare(config.model_copy(update={"k_bins": 2, "max_model_len": 1024}), ref, default_model_path)
    assert changed(second, stamps(ref)) == ["tokenize", "reuse", "group_prefixes", "predict_lengths", "probe", "schedule"]


def test_a_newly_registered_predictor_predicts_the_next_run(job, prefect_api, default_model_path, tmp_path):
    """Prefect's cache must not answer with the predictions of the predictor before."""
    config, ref = job
    prepare(config, ref, default_model_path)
    before = stamps(ref)
    con = db.connect(ref.db_path)
    try:
        shipped = shipped_predictor()["version"]  # auto, with nothing trained for the run's model
        assert con.execute("select distinct predictor from predictions where run_id = 'r'").fetchall() == [(shipped,)]
        add_run(con, "hist", synthetic_requests(300, seed=1, prefix="h"), with_results=True)
        entry = train_tiny(con, tmp_path / "models")
    finally:
        con.close()

    prepare(config, ref, default_model_path)
    assert changed(before, stamps(ref)) == ["predict_lengths", "probe", "schedule"]
    con = db.connect(ref.db_path, read_only=True)
    try:
        assert con.execute("select distinct predictor from predictions where run_id = 'r'").fetchall() == [(entry["version"],)]
    finally:
        con.close()


def test_a_stage_code_version_covers_its_sql_file_and_its_modules(monkeypatch):
    stage = Stage("schedule", sql_file="schedule", modules=("batchbin.tasks.schedule",))
    code_version.cache_clear()
    original = stage.version()
    import batchbin.tasks.common as common

    monkeypatch.setattr(common, "sql_file_text", lambda stem: "-- name: changed\nSELECT 1;\n")
    code_version.cache_clear()
    assert stage.version() != original
    monkeypatch.undo()
    code_version.cache_clear()
    assert stage.version() == original
    assert Stage("schedule", sql_file="schedule", modules=("batchbin.tasks.schedule", "batchbin.io.readers")).version() != original
