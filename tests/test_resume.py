"""Nothing lost, nothing twice: `batchbin run` as a real process, stopped with SIGTERM, killed with
SIGKILL, and its engine process killed, in the middle of generation; the same command then
finishes the job with every valid request answered exactly once.

Real processes, the real default model, a real DuckDB file (recovered from its write-ahead log
after SIGKILL). Small on purpose: 40 short requests, 4 sequences at a time, a checkpoint every 2.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.engine

REQUESTS = 40
COMMAND_TIMEOUT_S = 900


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_process_left():
    """Whatever a test started is gone after it, also when the test failed halfway."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)


@pytest.fixture
def job(tmp_path):
    """The input file (40 valid requests and one invalid row), and the command that runs it."""
    path = tmp_path / "in.jsonl"
    rows = [{"id": f"q{i:02d}", "messages": [{"role": "user", "content": f"Tell me a short story about the number {i}."}]}
            for i in range(REQUESTS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"id": "bad", "prompt": ""}\n')
    command = [str(Path(sys.executable).parent / "batchbin"), "run", str(path), "--db", str(tmp_path / "bb.duckdb"),
               "--output", str(tmp_path / "out.jsonl"), "--max-tokens", "32", "--checkpoint-every", "2",
               "--kv-cache-gib", "1", "--max-num-seqs", "4", "--verbose"]  # progress in the log every 5 s
    # progress in the log every 0.5 s, so that a kill lands while much is left, on a fast CPU too
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "BATCHBIN_PROGRESS_EVERY_S": "0.5"}
    env.pop("BATCHBIN_PRELOAD_RESTARTED", None)
    return tmp_path, command, env, [row["id"] for row in rows]


def start(command, env, log: Path, extra: list[str] = ()) -> subprocess.Popen:
    """The command in a session of its own (so a kill reaches every process it started)."""
    process = subprocess.Popen(list(command) + list(extra), env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    STARTED.append(process)
    return process


def wait_for_results(process: subprocess.Popen, log: Path, at_least: int, timeout_s: float = 600) -> None:
    """Until the run's progress line says `at_least` requests are generated (results stored)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [int(n) for n in re.findall(r"generated (\d+)/\d+ requests", log.read_text())]
        if done and max(done) >= at_least:
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before {at_least} results:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {at_least} results after {timeout_s} s:\n{log.read_text()[-3000:]}")


def stored(folder: Path) -> list[str]:
    con = duckdb.connect(str(folder / "bb.duckdb"), read_only=True)
    try:
        return [row[0] for row in con.execute("select request_id from results order by request_id").fetchall()]
    finally:
        con.close()


def finish(command, env, folder: Path, extra: list[str] = ()) -> subprocess.CompletedProcess:
    """The command to its end (output to a file: a process left behind would hold a pipe open)."""
    log = folder / "finish.log"
    with log.open("w") as out:
        done = subprocess.run(list(command) + list(extra), env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                              timeout=COMMAND_TIMEOUT_S)
    done.stdout = log.read_text()
    assert done.returncode == 0, done.stdout[-5000:]
    return done


def check_complete(folder: Path, ids: list[str], other_runs: list[str] = ()) -> None:
    """Every valid request answered exactly once, in the database (beside `other_runs`' requests)
    and in the output file."""
    assert stored(folder) == sorted([*ids, *other_runs])
    output = [json.loads(line)["id"] for line in (folder / "out.jsonl").read_text().splitlines()]
    assert output == ids  # input order, each once, as a clean run writes them
    assert not list(folder.glob(".out.jsonl.partial"))


def test_stopped_with_sigterm_then_killed_then_resumed(job):
    folder, command, env, ids = job
    # 1. SIGTERM in the middle: a graceful stop, every finished result stored, a word on resuming
    log = folder / "first.log"
    process = start(command, env, log)
    wait_for_results(process, log, at_least=4)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 1
    text = log.read_text()
    assert re.search(r"stopped: \d+ of 40 requests have their result stored", text), text[-2000:]
    assert "run the same command again to resume" in text and "Traceback" not in text
    after_stop = stored(folder)
    assert 4 <= len(after_stop) < REQUESTS
    assert str(len(after_stop)) in re.search(r"stopped: (\d+) of", text)[0]

    # 2. SIGKILL in the middle (every process of the command): nothing written so far is lost
    log = folder / "second.log"
    process = start(command, env, log)
    wait_for_results(process, log, at_least=4)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    after_kill = stored(folder)
    assert set(after_stop) <= set(after_kill) and len(after_kill) < REQUESTS

    # 3. the same command finishes the job: only what is missing is generated
    done = finish(command, env, folder)
    assert f"{REQUESTS - len(after_kill)} generated now" in done.stdout
    check_complete(folder, ids)


def test_an_engine_process_that_dies_mid_run_ends_the_run_clearly_and_the_same_command_finishes(job):
    """The engine core in a process of its own (--no-in-process), killed in the middle."""
    folder, command, env, ids = job
    log = folder / "first.log"
    process = start(command, env, log, ["--no-in-process"])
    wait_for_results(process, log, at_least=4)
    engine_cores = [pid for pid in descendants(process.pid) if "EngineCore" in process_name(pid)]
    assert engine_cores, f"no engine process under {process.pid}: {[process_name(p) for p in descendants(process.pid)]}"
    os.kill(engine_cores[0], signal.SIGKILL)
    assert process.wait(timeout=300) == 1
    text = log.read_text()
    assert "the vLLM engine failed" in text and "every finished result is stored" in text, text[-3000:]
    kept = stored(folder)
    assert 4 <= len(kept) < REQUESTS

    done = finish(command, env, folder, ["--no-in-process"])
    assert f"{REQUESTS - len(kept)} generated now" in done.stdout
    check_complete(folder, ids)


def descendants(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            children += [int(child)] + descendants(int(child))
    return children


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() + " " + Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_sql_answers_during_a_run_and_a_second_run_waits_for_the_first(job):
    """Real concurrent processes on one database: `batchbin sql` returns within seconds while a
    run generates; a second run started meanwhile says what it waits for, then both finish with
    every result."""
    folder, command, env, ids = job
    other_input = folder / "other.jsonl"
    other_input.write_text("".join(json.dumps({"id": f"o{i}", "prompt": f"Count to {i}:"}) + "\n" for i in range(5)))
    other_command = [command[0], "run", str(other_input), "--db", str(folder / "bb.duckdb"),
                     "--output", str(folder / "other-out.jsonl"), "--max-tokens", "8", "--kv-cache-gib", "1",
                     "--max-num-seqs", "4"]
    first_log, second_log = folder / "first.log", folder / "second.log"
    first = start(command, env, first_log)
    second = start(other_command, env, second_log)  # both start at once: one of them waits for the other
    wait_for_results(first, first_log, at_least=4)

    started = time.monotonic()
    query = subprocess.run([command[0], "sql", "--db", str(folder / "bb.duckdb"),
                            "select count(*) as done from results where request_id like 'q%'"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert query.returncode == 0, query.stdout + query.stderr
    assert time.monotonic() - started < 30  # the command's own start included
    done = int(re.search(r"│\s*(\d+)\s*│", query.stdout)[1])
    assert 4 <= done <= REQUESTS
    assert first.poll() is None  # the run was still going

    assert first.wait(timeout=COMMAND_TIMEOUT_S) == 0, first_log.read_text()[-3000:]
    assert second.wait(timeout=COMMAND_TIMEOUT_S) == 0, second_log.read_text()[-3000:]
    waited = [bool(re.search(r"waiting for run \w+ \(process \d+\) on .*bb\.duckdb to finish", log.read_text()))
              for log in (first_log, second_log)]
    assert sorted(waited) == [False, True]
    other_ids = [f"o{i}" for i in range(5)]
    check_complete(folder, ids, other_runs=other_ids)
    assert [json.loads(line)["id"] for line in (folder / "other-out.jsonl").read_text().splitlines()] == other_ids
