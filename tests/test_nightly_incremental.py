"""The nightly deployment, incremental: a real Prefect server with its scheduler on fires
`batch-nightly` twice over a growing inbox file, and the second run generates only the new rows
(the rest are answered from the first run's results, byte-identical).

The schedule is prefect.yaml's, moved by the API to fire a few seconds from now (an hourly
interval anchored there, with small job parameters on the schedule), once per run, so that each
run is one the scheduler itself created. Server, worker and every process they started are
stopped at the end (tests/test_deployments.py, prefect_stack).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from tests.test_deployments import NIGHTLY, ROOT, RUN_TIMEOUT_S, client, prefect_stack, state_of, wait_final

PROMPTS = ["Name a colour.", "Say hello in French.", "What is 2 + 2?", "Name a fruit.", "Name a river.", "Say thanks."]
PARAMETERS = {"config": {"input_path": "inbox/nightly.jsonl", "db_path": "out/batchbin.duckdb",
                         "output_path": "out/nightly_results.jsonl", "max_tokens": 6,
                         "engine": {"kv_cache_gib": 1, "max_num_seqs": 4}}}


def drop_inbox(home: Path, count: int) -> None:
    """The upstream job's file: the first `count` prompts (written whole, then moved into place)."""
    partial = home / "inbox" / ".nightly.jsonl.partial"
    partial.parent.mkdir(exist_ok=True)
    partial.write_text("".join(json.dumps({"id": f"r{i}", "prompt": text}) + "\n" for i, text in enumerate(PROMPTS[:count])))
    partial.replace(home / "inbox" / "nightly.jsonl")


def fire_scheduled(stack, seen: set) -> object:
    """Move the nightly schedule to a few seconds from now and wait for the run the scheduler makes of it."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import IntervalSchedule

    with client(stack) as api:
        deployment = api.read_deployment_by_name(NIGHTLY)
        schedule, = api.read_deployment_schedules(deployment.id)
        anchor = datetime.now(timezone.utc) + timedelta(seconds=5)
        api.update_deployment_schedule(deployment.id, schedule.id, active=True, parameters=PARAMETERS,
                                       schedule=IntervalSchedule(interval=timedelta(hours=1), anchor_date=anchor))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            runs = api.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            fired = [run for run in runs if run.id not in seen and run.auto_scheduled
                     and run.state is not None and not run.state.is_scheduled()]
            if fired:
                seen.add(fired[0].id)
                return wait_final(stack, fired[0].id)
            time.sleep(1)
    pytest.fail(f"the scheduler started no nightly run in {RUN_TIMEOUT_S} s; server log:\n"
                f"{stack['logs']['server'].read_text()[-3000:]}")


@pytest.mark.engine  # the worker's flow runs build a vLLM engine
def test_the_second_nightly_run_generates_only_the_new_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "2")  # the server's scheduler, quickly
    home = tmp_path / "home"
    home.mkdir()
    (home / "flows").symlink_to(ROOT / "flows")  # a project directory holds the entrypoints
    (tmp_path / "prefect").mkdir()
    drop_inbox(home, 4)
    seen: set = set()
    with prefect_stack(tmp_path / "prefect", scheduler=True, worker_env={"BATCHBIN_HOME": str(home)}) as stack:
        first = fire_scheduled(stack, seen)
        assert first.state.is_completed(), state_of(first, stack["logs"]["worker"])
        monday = (home / "out" / "nightly_results.jsonl").read_text().splitlines()
        drop_inbox(home, 6)  # the inbox grew by two rows
        second = fire_scheduled(stack, seen)
        assert second.state.is_completed(), state_of(second, stack["logs"]["worker"])
    con = duckdb.connect(str(home / "out" / "batchbin.duckdb"), read_only=True)
    try:
        reports = [json.loads(report) for report, in con.execute(
            "select report from run_reports join runs using (run_id) order by runs.started_at").fetchall()]
        generated = con.execute("select request_id from results r join runs using (run_id) where r.reused_from is null "
                                "and runs.started_at = (select max(started_at) from runs) order by 1").fetchall()
    finally:
        con.close()
    assert [(r["generated_now"], r["answered_from_earlier_runs"]) for r in reports] == [(4, 0), (2, 4)]
    assert generated == [("r4",), ("r5",)]
    tuesday = (home / "out" / "nightly_results.jsonl").read_text().splitlines()
    assert len(tuesday) == 6
    assert [json.loads(line)["output"] for line in tuesday[:4]] == [json.loads(line)["output"] for line in monday]
