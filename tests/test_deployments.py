"""The deployments of prefect.yaml on a real Prefect server, run by a real process worker.

The `engine` tests start `prefect server start` on a free loopback port (its own PREFECT_HOME), creates
the `batchbin` process work pool, runs `prefect deploy --all` from the repository root and starts
`<venv>/bin/prefect worker start --pool batchbin` in a folder of its own (so nothing works only
because the worker happens to start in the checkout). Then it starts deployments the way the UI
does (`run_deployment` with parameters) and reads what they did from the server and DuckDB.
Server and worker are stopped, with every process they started, at the end, also on failure.
The other tests check the rules behind them (project directory, when retraining is due) in seconds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

from batchbin.store import db
from batchbin.flows.deployments import project_directory, set_project_directory
from batchbin.errors import BatchBinError
from batchbin.flows.retrain import retrain_if_due, unused_results

ROOT = Path(__file__).resolve().parent.parent
PREFECT = Path(sys.executable).parent / "prefect"  # the venv's: the worker must run flows with its python
SERVER_START_S = 90
CLI_TIMEOUT_S = 180
RUN_TIMEOUT_S = 600  # the slow CI CPU is ~5x slower than the development machine
ADHOC = "batch-inference/batch-adhoc"
NIGHTLY = "batch-inference/batch-nightly"
RETRAIN = "train-length-predictor/retrain-predictor"
PROMPTS = ["Name a colour.", "Say hello in French.", "What is 2 + 2?", "Name a fruit."]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), so that none outlives the test."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group and everything the process started, SIGKILL after 20 s."""
    if process.poll() is not None:
        return
    pids = descendants(process.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=20)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        process.wait(timeout=10)


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """A prefect command, with a time limit; its output in the assertion message if it fails."""
    done = subprocess.run([str(PREFECT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"prefect server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server did not answer in {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


@contextmanager
def prefect_stack(base: Path, *, ui: bool = False, scheduler: bool = False, worker_env: dict[str, str] | None = None,
                  query_seconds: int = 1, settings: dict[str, str] | None = None):
    """A Prefect server on loopback (in `base`, its own PREFECT_HOME) with the `batchbin` process
    work pool, a worker and prefect.yaml's deployments; every process stopped at the end.
    `ui`/`scheduler`: the server's UI and scheduler (off unless asked for); `worker_env`: added to
    the worker's environment (its flow runs inherit it); `query_seconds`: how often the worker polls;
    `settings`: more PREFECT_* settings for the server and the worker."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(base / "home"), "PREFECT_API_URL": url,
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_CLI_PROMPT": "false",
           "PREFECT_WORKER_QUERY_SECONDS": str(query_seconds),  # pick runs up at once (default 10 s)
           **(settings or {})}
    env.pop("PREFECT_API_KEY", None)
    env.pop("PREFECT_PROFILE", None)
    env.pop("BATCHBIN_HOME", None)  # the default rule unless worker_env sets it: the checkout batchbin comes from
    processes: list[subprocess.Popen] = []
    logs = {"server": base / "server.log", "worker": base / "worker.log"}
    options = ([] if scheduler else ["--no-scheduler"]) + ([] if ui else ["--no-ui"])
    try:
        with open(logs["server"], "w") as log:
            processes.append(subprocess.Popen([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port",
                                               str(port), *options, "--analytics-off"], env=env, cwd=base, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        wait_healthy(url, processes[0], logs["server"])
        cli(["work-pool", "create", "batchbin", "--type", "process"], env, base)
        worker_dir = base / "worker"
        worker_dir.mkdir()
        with open(logs["worker"], "w") as log:  # it starts up while the deployments are registered
            processes.append(subprocess.Popen([str(PREFECT), "worker", "start", "--pool", "batchbin"],
                                              env={**env, **(worker_env or {}), "PWD": str(worker_dir)}, cwd=worker_dir,
                                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        cli(["--no-prompt", "deploy", "--all"], env, ROOT)  # from the root: prefect.yaml and the entrypoints
        yield {"url": url, "ui": f"http://127.0.0.1:{port}", "logs": logs, "env": env}
    finally:
        for process in reversed(processes):
            stop(process)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server on loopback with the deployments registered and a worker running them.
    No scheduler: the schedules must be active, but the nightly job must not start here; no UI:
    nothing here looks at it, and it saves the UI's build at start (tests/test_ui_browser.py
    has both)."""
    with prefect_stack(tmp_path_factory.mktemp("prefect")) as stack:
        yield stack


def on(server):
    """Prefect's settings pointing at the module's server (only inside the block: other tests
    of the session use the ephemeral API)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: server["url"]})


def client(server):
    """A client of the module's server."""
    from prefect.client.orchestration import get_client

    with on(server):
        return get_client(sync_client=True)


def wait_final(server, flow_run_id):
    """The flow run once it is in a final state (its worker's log in the message if it never gets there)."""
    worker_log = server["logs"]["worker"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with client(server) as api:
        while time.monotonic() < deadline:
            flow_run = api.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            time.sleep(1)
    pytest.fail(f"flow run {flow_run_id} not finished in {RUN_TIMEOUT_S} s; worker log:\n"
                f"{worker_log.read_text()[-5000:]}")


def state_of(flow_run, worker_log: Path) -> str:
    return f"{flow_run.state.type.value}: {flow_run.state.message}\nworker log:\n{worker_log.read_text()[-5000:]}"


@pytest.fixture(scope="module")
def adhoc(server, tmp_path_factory):
    """The ad-hoc deployment started with a form's parameters: a tiny job with relative paths, run
    in a project directory of its own ($BATCHBIN_HOME through the run's job variables), with
    retrain_after below its size (so it starts the retraining deployment)."""
    import json

    from prefect.deployments import run_deployment

    home = tmp_path_factory.mktemp("home")
    (home / "flows").symlink_to(ROOT / "flows")  # a project directory holds the entrypoints
    (home / "prompts.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "prompt": text, "max_tokens": 6}) + "\n"
                                                for i, text in enumerate(PROMPTS)))
    parameters = {
        "config": {"input_path": "prompts.jsonl", "db_path": "out/batchbin.duckdb", "output_path": "out/results.jsonl",
                   "max_tokens": 6, "engine": {"kv_cache_gib": 1, "max_num_seqs": 4}},
        "retrain_after": len(PROMPTS) - 1,
    }
    started = time.monotonic()
    with on(server):
        flow_run = run_deployment(ADHOC, parameters=parameters, job_variables={"env": {"BATCHBIN_HOME": str(home)}},
                                  timeout=0)
    flow_run = wait_final(server, flow_run.id)
    print(f"ad-hoc deployment run: {time.monotonic() - started:.1f} s")
    return {"flow_run": flow_run, "db": home / "out" / "batchbin.duckdb", "output": home / "out" / "results.jsonl"}


@pytest.mark.engine  # the worker builds a vLLM engine (the module's server and worker)
def test_deployments_are_registered_with_project_directory_and_schedules(server):
    from prefect.client.schemas.schedules import CronSchedule

    with client(server) as api:
        deployments = {name: api.read_deployment_by_name(name) for name in (ADHOC, NIGHTLY, RETRAIN)}
    for name, deployment in deployments.items():
        assert deployment.work_pool_name == "batchbin", name
        assert deployment.pull_steps == [{"batchbin.flows.deployments.set_project_directory": {}}], name
    crons = {}
    for name in (NIGHTLY, RETRAIN):
        deployment = deployments[name]
        assert not deployment.paused, name
        assert [schedule.active for schedule in deployment.schedules] == [True], name
        assert isinstance(deployment.schedules[0].schedule, CronSchedule)
        crons[name] = deployment.schedules[0].schedule.cron
    assert crons == {NIGHTLY: "0 2 * * *", RETRAIN: "0 4 * * 0"}
    assert deployments[ADHOC].schedules == []


@pytest.mark.engine  # the worker builds a vLLM engine (the module's server and worker)
def test_adhoc_parameters_render_as_a_form(server):
    """Every field of the form has a description, and a default (from the model or the deployment)."""
    with client(server) as api:
        deployment = api.read_deployment_by_name(ADHOC)
    schema = deployment.parameter_openapi_schema
    assert set(schema["properties"]) == {"config", "retrain_after"}
    assert schema["properties"]["retrain_after"]["description"]
    assert schema["properties"]["retrain_after"]["default"] is None  # off unless asked for
    assert {"type": "integer", "minimum": 1} in schema["properties"]["retrain_after"]["anyOf"]
    given = deployment.parameters["config"]
    models = schema["definitions"]
    for model in ("JobConfig", "EngineOptions"):
        for field, spec in models[model]["properties"].items():
            assert spec.get("description"), f"{model}.{field} has no description"
            nested = models.get(spec.get("$ref", "").rpartition("/")[2])  # a sub-form: defaults of its own
            assert "default" in spec or field in given or not (nested or {"required": True}).get("required"), \
                f"{model}.{field} has no default"


@pytest.mark.engine  # the worker builds a vLLM engine (the module's server and worker)
def test_the_readme_command_starts_the_adhoc_deployment_with_a_config(server):
    """`prefect deployment run ... --param config=JSON` (README), started an hour from now and removed."""
    import json

    config = {"input_path": "examples/sample_prompts.jsonl", "db_path": "out/batchbin.duckdb", "max_tokens": 64}
    done = cli(["deployment", "run", ADHOC, "--param", f"config={json.dumps(config)}", "--start-in", "in 1 hour"],
               server["env"], ROOT)
    with client(server) as api:
        deployment = api.read_deployment_by_name(ADHOC)
        runs = [run for run in api.read_flow_runs() if run.deployment_id == deployment.id and run.state.is_scheduled()]
        assert [run.parameters for run in runs] == [{"config": config, "retrain_after": None}], done.stdout
        api.delete_flow_run(runs[0].id)


@pytest.mark.engine  # the worker builds a vLLM engine (the module's server and worker)
def test_adhoc_run_completes_with_report_and_results(server, adhoc):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from batchbin.tasks.report import ARTIFACT_KEY

    flow_run = adhoc["flow_run"]
    assert flow_run.state.is_completed(), state_of(flow_run, server["logs"]["worker"])
    with client(server) as api:
        artifacts = api.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[ARTIFACT_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    assert len(artifacts) == 1 and "BatchBin" in (artifacts[0].description or "")
    con = duckdb.connect(str(adhoc["db"]), read_only=True)
    try:
        rows = con.execute("select request_id, output_tokens, error from results order by request_id").fetchall()
    finally:
        con.close()
    assert [row[0] for row in rows] == [f"r{i}" for i in range(len(PROMPTS))]
    assert all(row[2] is None and 1 <= row[1] <= 6 for row in rows), rows
    assert len(adhoc["output"].read_text().splitlines()) == len(PROMPTS)


@pytest.mark.engine  # the worker builds a vLLM engine (the module's server and worker)
def test_retraining_runs_on_its_deployment_and_after_enough_new_results(server, adhoc):
    """Four results are too few to train on: the retraining deployment, started directly and by
    the batch run's retrain_after, fails with flows/train.py's message saying so."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.deployments import run_deployment

    from batchbin.flows.retrain import TRIGGER_TAG

    assert adhoc["flow_run"].state.is_completed(), state_of(adhoc["flow_run"], server["logs"]["worker"])
    with on(server):
        direct = run_deployment(RETRAIN, parameters={"db_path": str(adhoc["db"])}, timeout=0)
    with client(server) as api:
        triggered = api.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[TRIGGER_TAG])))
    assert len(triggered) == 1, "the batch run with retrain_after did not start the retraining deployment"
    assert triggered[0].parameters["db_path"] == str(adhoc["db"].resolve())
    with client(server) as api:
        assert triggered[0].deployment_id == api.read_deployment_by_name(RETRAIN).id
    for flow_run_id in (direct.id, triggered[0].id):
        flow_run = wait_final(server, flow_run_id)
        assert flow_run.state.is_failed(), state_of(flow_run, server["logs"]["worker"])
        assert "at least" in flow_run.state.message and "finished requests" in flow_run.state.message, \
            state_of(flow_run, server["logs"]["worker"])


def test_project_directory_is_batchbin_home_else_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv("BATCHBIN_HOME", raising=False)
    assert project_directory() == ROOT  # the editable install's checkout
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "batch.py").write_text("")
    monkeypatch.setenv("BATCHBIN_HOME", str(tmp_path))
    assert project_directory() == tmp_path.resolve()
    monkeypatch.setenv("BATCHBIN_HOME", str(tmp_path / "flows"))
    with pytest.raises(BatchBinError, match="holds no flows/batch.py; point BATCHBIN_HOME"):
        project_directory()


def test_the_pull_step_changes_into_the_project_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("BATCHBIN_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert set_project_directory() == {"directory": str(ROOT)}
    assert Path.cwd() == ROOT


def test_unused_results_are_those_newer_than_the_newest_predictor(db_path):
    con = db.connect(db_path)
    rows = [("a", 5, None, "2026-01-01 10:00"), ("b", 7, None, "2026-01-02 10:00"), ("c", None, "boom", "2026-01-03 10:00"),
            ("d", 9, None, "2026-01-04 10:00")]
    con.executemany("insert into results (run_id, request_id, output_tokens, error, finished_at) values ('r', ?, ?, ?, ?)",
                    rows)
    con.close()
    assert unused_results(db_path) == 3  # no predictor yet: every finished result without error
    con = db.connect(db_path)
    con.execute("insert into predictors (version, created_at) values ('v1', '2026-01-01 12:00')")
    con.close()
    assert unused_results(db_path) == 2
    con = db.connect(db_path)
    con.execute("insert into predictors (version, created_at) values ('v2', '2026-01-05 00:00')")
    con.close()
    assert unused_results(db_path) == 0


class Said(list):
    """A logger that keeps what it is told."""

    def info(self, message):
        self.append(("info", message))

    def warning(self, message):
        self.append(("warning", message))


def test_retraining_is_not_started_below_the_threshold(db_path):
    db.connect(db_path).close()
    said = Said()
    assert retrain_if_due(db_path, 1, 256, said) is None
    assert said == [("info", "retraining not due: 0 results not yet learnt from, retrain_after is 1")]


def test_retraining_without_its_deployment_says_how_to_get_it(db_path, prefect_api):
    db.connect(db_path).close()
    said = Said()
    assert retrain_if_due(db_path, 0, 256, said, in_process=False) is None
    assert said[0][0] == "warning" and "no deployment train-length-predictor/retrain-predictor" in said[0][1]
    assert "prefect deploy --all" in said[0][1] and f"batchbin train-predictor --db {db_path}" in said[0][1]


def test_without_its_deployment_the_served_models_predictor_retrains_here_once_enough_is_new(db_path, prefect_api):
    """Counted per model: another model's results do not make this one's due; trained quickly in
    this process where the server has no retraining deployment; then nothing is new."""
    from tests.test_predictors import MODEL, add_run, synthetic_requests

    con = db.connect(db_path)
    add_run(con, "ours", synthetic_requests(250, seed=1, prefix="h"), with_results=True)
    add_run(con, "theirs", synthetic_requests(300, seed=2, prefix="t"), with_results=True, model="org/other-llm")
    con.execute("UPDATE results SET finished_at = current_timestamp")
    con.close()
    assert unused_results(db_path, MODEL) == 250 and unused_results(db_path, "org/other-llm") == 300
    said = Said()
    assert retrain_if_due(db_path, 251, 256, said, model=MODEL) is None
    assert said == [("info", "retraining not due: 250 results of SmolLM2-135M-Instruct not yet learnt from, "
                             "retrain_after is 251")]
    registered = retrain_if_due(db_path, 200, 256, said, model=MODEL)
    assert registered["model"] == "SmolLM2-135M-Instruct" and registered["train_rows"] == 250
    assert said[-1][0] == "info" and said[-1][1].startswith(f"retrained here: {registered['version']} learnt 250")
    assert unused_results(db_path, MODEL) == 0 and unused_results(db_path, "org/other-llm") == 300
    assert retrain_if_due(db_path, 200, 256, said, model=MODEL) is None
    # the weekly schedule's run (min_new_rows): not due for this model, due for the other
    from batchbin.flows.train import train_length_predictor

    assert train_length_predictor(db_path=db_path, model=MODEL, quick=True, min_new_rows=200) == {
        "trained": False, "reason": "not due: 0 results of SmolLM2-135M-Instruct not yet learnt from (min_new_rows 200)"}
    theirs = train_length_predictor(db_path=db_path, model="org/other-llm", quick=True, min_new_rows=200)
    assert theirs["model"] == "org/other-llm" and theirs["train_rows"] == 300
