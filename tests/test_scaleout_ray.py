"""Scale-out on a real local Ray cluster (a head and a second node process, one CPU each) with
the default model: two engines give exactly the one-engine run's set of results, none
duplicated, also when one engine is killed mid-run (its unfinished requests run on the other)."""

from __future__ import annotations

import json
import threading
import time

import duckdb
import pytest

from batchbin.config import EngineOptions, JobConfig, file_fingerprint
from batchbin.flows.batch import batch_inference
from tests.conftest import TEST_ENGINE

pytestmark = pytest.mark.engine

# Each engine runs 4 sequences at once and holds 8: results trickle out while most of a share
# is still queued, so a kill lands mid-run.
RAY_ENGINE = {**TEST_ENGINE, "max_num_seqs": 4}
SYSTEMS = ["You are a terse geography tutor. Answer in one short sentence and never add anything else.",
           "You are a helpful cooking assistant for a small restaurant kitchen; keep answers short."]


def requests(count: int = 32) -> list[dict]:
    """Short chat requests: two prefix families (shared system prompts) and single prompts,
    output limits from 3 to 30 tokens."""
    rows = []
    for i in range(count):
        system = [{"role": "system", "content": SYSTEMS[i % 2]}] if i % 3 else []
        rows.append({"id": f"q{i:02d}", "max_tokens": 3 + (i * 7) % 28,
                     "messages": [*system, {"role": "user", "content": f"Tell me one fact about the number {i * 7}."}]})
    return rows


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray cluster on this machine: the head and one more node, one CPU each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def input_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scaleout") / "requests.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in requests()))
    return path


def result_ids(db_path: str) -> list[str]:
    with duckdb.connect(db_path, read_only=True) as con:
        return [row[0] for row in con.sql("SELECT request_id FROM results WHERE error IS NULL ORDER BY 1").fetchall()]


def run_job(input_file, db_path, **scale_out) -> dict:
    config = JobConfig(input_path=str(input_file), db_path=str(db_path), output_path=str(db_path) + ".jsonl",
                       engine=EngineOptions(**(RAY_ENGINE if scale_out else TEST_ENGINE)), **scale_out)
    return batch_inference(config)


@pytest.fixture(scope="module")
def one_engine_ids(input_file, tmp_path_factory, prefect_api, default_model_path):
    """The ids of the plain run: one engine in this process."""
    db_path = tmp_path_factory.mktemp("one") / "bb.duckdb"
    summary = run_job(input_file, db_path)
    assert summary["completed"] == len(requests())
    return result_ids(str(db_path))


def test_two_engines_give_the_one_engine_runs_results(ray_cluster, input_file, one_engine_ids, tmp_path):
    db_path = tmp_path / "bb.duckdb"
    summary = run_job(input_file, db_path, ray_address=ray_cluster, engines=2)

    ids = result_ids(str(db_path))
    assert ids == one_engine_ids and len(ids) == len(set(ids)) == 32
    scale_out = summary["scale_out"]
    engines = scale_out["engines"]
    assert [engine["lost"] for engine in engines] == [None, None]
    assert all(engine["results"] > 0 for engine in engines)  # both engines did work
    assert {engine["threads"] for engine in engines} == {"0", "1"}  # each its own core
    assert sum(engine["results"] for engine in engines) == scale_out["received"] == 32
    assert scale_out["duplicates"] == 0 and scale_out["requeued"] == 0
    assert summary["completed"] == 32 and summary["generated_now"] == 32


def test_an_engine_killed_mid_run_loses_and_duplicates_nothing(ray_cluster, input_file, one_engine_ids, tmp_path):
    import ray

    from batchbin.scaleout.ray_engines import NAMESPACE, actor_name

    config = JobConfig(input_path=str(input_file), ray_address=ray_cluster, engines=2)
    victim = actor_name(config.run_id(file_fingerprint(input_file)), 1)
    seen: dict = {}
    stop = threading.Event()

    def kill_engine_1_after_its_first_result() -> None:
        try:
            while not stop.is_set():
                if ray.is_initialized():
                    try:
                        actor = ray.get_actor(victim, namespace=NAMESPACE)
                        produced = ray.get(actor.results_produced.remote(), timeout=10)
                    except Exception:  # not created yet, or still building its engine
                        produced = 0
                    if produced:
                        seen["produced_before_kill"] = produced
                        ray.kill(actor, no_restart=True)
                        return
                time.sleep(0.05)
        except Exception as error:
            seen["error"] = error

    killer = threading.Thread(target=kill_engine_1_after_its_first_result, daemon=True)
    killer.start()
    try:
        summary = run_job(input_file, tmp_path / "bb.duckdb", ray_address=ray_cluster, engines=2)
    finally:
        stop.set()
        killer.join(timeout=30)

    assert "error" not in seen and seen.get("produced_before_kill", 0) >= 1  # killed mid-run, after it had results
    scale_out = summary["scale_out"]
    survivor, lost = scale_out["engines"]
    assert lost["lost"] and survivor["lost"] is None
    assert scale_out["requeued"] > 0  # it held unfinished requests: the survivor ran them
    ids = result_ids(str(tmp_path / "bb.duckdb"))
    assert ids == one_engine_ids and len(ids) == len(set(ids)) == 32
    assert scale_out["duplicates"] == 0 and scale_out["received"] == 32
    assert survivor["results"] + lost["results"] == 32 and survivor["results"] > 16
