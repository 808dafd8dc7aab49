"""The command line: every command has help with an example and is documented in the README."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from batchbin.cli.main import main
from batchbin.engine.machine import detect_machine

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("name", main.list_commands(click.Context(main)))  # plugin commands (bench) too
def test_every_command_has_help_and_is_documented(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output or name in ("prepare-model",)
    assert f"batchbin {name}" in README, f"README does not show `batchbin {name}`"


def test_run_has_a_flag_for_every_flow_parameter():
    from batchbin.config import EngineOptions, JobConfig

    help_text = CliRunner().invoke(main, ["run", "--help"]).output
    for name in list(JobConfig.model_fields) + list(EngineOptions.model_fields):
        if name not in ("input_path", "engine"):
            assert "--" + name.replace("_", "-") in help_text, name


def test_sql_on_a_missing_database_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(main, ["sql", "select 1", "--db", str(tmp_path / "none.duckdb")])
    assert result.exit_code == 1
    assert "no BatchBin database" in result.output
    assert "Traceback" not in result.output


def test_sql_prints_a_table_and_reports_bad_sql(tmp_path, db_path):
    from batchbin.store import db

    db.connect(db_path).close()
    ok = CliRunner().invoke(main, ["sql", "select 41 + 1 as answer", "--db", db_path])
    assert ok.exit_code == 0 and "42" in ok.output
    bad = CliRunner().invoke(main, ["sql", "select * from no_such_table", "--db", db_path])
    assert bad.exit_code == 1 and "no_such_table" in bad.output


def test_run_with_a_missing_file_fails_with_one_line(tmp_path, prefect_api):
    result = CliRunner().invoke(main, ["run", str(tmp_path / "missing.jsonl"), "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code == 1
    assert "input file not found" in result.output


def test_doctor_prints_the_settings_and_why():
    result = CliRunner().invoke(main, ["doctor", "--max-num-seqs", "8"])
    assert result.exit_code == 0
    assert "max_num_seqs" in result.output and "set by the user" in result.output
    small = CliRunner().invoke(main, ["doctor", "--requests", "20"])
    assert small.exit_code == 0 and "a job of 20 requests" in small.output
    assert [line.split()[1] for line in small.output.splitlines() if line.strip().startswith("enforce_eager")] == ["True"]


@pytest.mark.skipif(detect_machine().gpu is not None, reason="GPUs take 16-token blocks")
def test_an_engine_setting_the_cpu_engine_refuses_fails_with_one_line(tmp_path, prefect_api):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"id": "a", "prompt": "Hello"}\n')
    result = CliRunner().invoke(main, ["run", str(path), "--db", str(tmp_path / "x.duckdb"), "--block-size", "16"])
    assert result.exit_code == 1 and "multiple of 32" in result.output
    doctor = CliRunner().invoke(main, ["doctor", "--block-size", "16"])
    assert doctor.exit_code == 1 and "multiple of 32" in doctor.output


def test_run_with_no_valid_row_fails_with_one_line_and_keeps_the_rejects(tmp_path, prefect_api):
    import duckdb

    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "prompt": ""}\nnot json\n')
    db_path = str(tmp_path / "x.duckdb")
    result = CliRunner().invoke(main, ["run", str(path), "--db", db_path])
    assert result.exit_code == 1
    assert "no valid request" in result.output and "row 1" in result.output
    con = duckdb.connect(db_path, read_only=True)
    assert con.execute("select count(*) from rejects").fetchall() == [(2,)]
    con.close()


def test_summary_time_line_splits_engine_start_generation_and_the_rest():
    from batchbin.cli.main import time_line

    line = time_line({"engine_start_s": 27.94, "generate_s": 11.5,
                      "stage_seconds": {"load": 0.05, "tokenize": 0.12, "generate": 39.5, "report": 0.05}})
    assert "27.9 s engine start" in line and "11.5 s generation" in line and "0.2 s other stages" in line
    # a probed run: the probe's phase is generation (in generate_s), not another stage's time
    line = time_line({"engine_start_s": 1.0, "generate_s": 30.0, "length_probe": {"generate_s": 12.0},
                      "stage_seconds": {"load": 0.1, "probe": 12.3, "generate": 19.2, "report": 0.1}})
    assert "30.0 s generation" in line and "0.5 s other stages" in line


@pytest.mark.engine
def test_the_batchbin_command_runs_the_engine_in_its_process_with_the_preload(tmp_path):
    """The user's path end to end: `batchbin run` restarts itself with the preload and runs vLLM's
    engine core inside the command's own process (a real engine, a few tokens per request)."""
    import json
    import os
    import subprocess
    import sys

    import duckdb

    from batchbin.engine.preload import find_preload_libs

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Count to {i}:"}) + "\n" for i in range(3)))
    db_file, out_file = tmp_path / "cli.duckdb", tmp_path / "out.jsonl"
    command = [str(Path(sys.executable).parent / "batchbin"), "run", str(prompts), "--db", str(db_file),
               "--output", str(out_file), "--max-tokens", "4", "--kv-cache-gib", "1", "--max-num-seqs", "16",
               "--verbose"]  # Prefect's own log lines (the temporary server's port) in the output
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("LD_PRELOAD", None)
    env.pop("BATCHBIN_PRELOAD_RESTARTED", None)
    # output to files, not pipes: a server process left behind would keep a pipe open and the
    # test waiting for it
    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        done = subprocess.run(command, env=env, stdout=out, stderr=err, text=True, timeout=1200)
    stdout, stderr = (tmp_path / "stdout.txt").read_text(), (tmp_path / "stderr.txt").read_text()
    try:
        assert done.returncode == 0, stderr[-3000:]
        assert "3 valid, 0 rejected" in stdout
        # the command ends without Python's teardown, but only after its exit handlers: Prefect's
        # temporary API server (booted while vLLM loaded) has stopped
        port = int(re.search(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", stdout + stderr).group(1))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        stop_servers_of(env["PREFECT_HOME"])
    assert sorted(json.loads(line)["id"] for line in out_file.read_text().splitlines()) == ["q0", "q1", "q2"]
    with duckdb.connect(str(db_file), read_only=True) as con:
        engine = json.loads(con.execute("select engine from runs").fetchone()[0])
    assert engine["in_process"] is True
    if find_preload_libs():
        assert engine["preload"] and "has the preload" in engine["reasons"]["in_process"]


def stop_servers_of(prefect_home: str) -> None:
    """Stop any Prefect server process left running with this PREFECT_HOME (after a failure)."""
    import os
    import signal

    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"PREFECT_HOME={prefect_home}".encode() in environ.read_bytes().split(b"\0"):
                os.kill(int(environ.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.mark.parametrize("code, expected_rc, expected_err", [(0, 0, ""), (None, 0, ""), (3, 3, ""), ("bad input", 1, "bad input")])
def test_exit_without_teardown_runs_the_exit_handlers_and_keeps_the_exit_code(tmp_path, code, expected_rc, expected_err):
    import subprocess
    import sys

    marker = tmp_path / "handler-ran"
    script = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').write('ran'))\n"
        "from batchbin.cli.main import exit_without_teardown\n"
        "sys.stdout.write('summary printed')\n"  # no newline: only a flush gets it out
        f"exit_without_teardown({code!r})\n"
        "raise AssertionError('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == expected_rc, done.stderr[-2000:]
    assert done.stdout == "summary printed"
    assert done.stderr.strip() == expected_err
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("statement", [
    "insert into runs (run_id) values ('sneaky')",
    "create table mine (x int)",
    "attach '{folder}/other.duckdb' as other",
    "copy (select 1) to '{folder}/copied.csv'",
    "export database '{folder}/exported'",
    "install httpfs",
    "load httpfs",
    "set enable_external_access = true",
    "set allowed_directories = ['{folder}']",
    "select * from read_csv('{folder}/batchbin.duckdb')",
])
def test_sql_cannot_change_anything(tmp_path, db_path, statement):
    """`batchbin sql` is for reading: no write, no file outside the database read or written, no
    extension, no setting changed back."""
    from batchbin.store import db

    db.connect(db_path).close()
    before = sorted(path.name for path in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["sql", statement.format(folder=tmp_path), "--db", db_path])
    assert result.exit_code == 1 and result.output.startswith("error: ") and "Traceback" not in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == before
    con = db.connect(db_path, read_only=True)
    try:
        assert con.execute("select count(*) from runs").fetchone() == (0,)
    finally:
        con.close()


def test_run_on_a_file_that_is_not_a_database_fails_with_one_line_and_changes_nothing(tmp_path, prefect_api):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"id": "a", "prompt": "Hello"}\n')
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 100)
    result = CliRunner().invoke(main, ["run", str(path), "--db", str(notes)])
    assert result.exit_code == 1 and "not a valid DuckDB database file" in result.output
    assert "Traceback" not in result.output
    assert notes.read_text() == "not a database\n" * 100


def test_run_whose_output_folder_cannot_be_made_fails_before_any_work(tmp_path, prefect_api):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"id": "a", "prompt": "Hello"}\n')
    (tmp_path / "a-file").write_text("x")
    db_file = tmp_path / "x.duckdb"
    result = CliRunner().invoke(main, ["run", str(path), "--db", str(db_file), "--output", str(tmp_path / "a-file" / "out.jsonl")])
    assert result.exit_code == 1 and "cannot write the output file" in result.output
    assert not db_file.exists()  # nothing started


def test_every_option_is_in_the_configuration_reference():
    from batchbin.config import EngineOptions, JobConfig

    root = Path(__file__).resolve().parent.parent
    reference = (root / "docs" / "configuration.md").read_text()
    for name in [*JobConfig.model_fields, *EngineOptions.model_fields]:
        if name != "engine":
            assert f"| `{name}` |" in reference, f"docs/configuration.md lacks {name}"
    readme = (root / "README.md").read_text()
    assert "(docs/configuration.md)" in readme[readme.index("## Configuration"):readme.index("## Troubleshooting")]


@pytest.mark.engine
def test_run_without_verbose_keeps_the_engines_noise_out_of_the_terminal(tmp_path):
    """Only the summary, warnings and progress reach the terminal; the engine's start-up output
    (vLLM's loading, NUMA and Triton notes) is in <db>.engine.log."""
    import json
    import os
    import subprocess
    import sys

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Count to {i}:"}) + "\n" for i in range(2)))
    command = [str(Path(sys.executable).parent / "batchbin"), "run", str(prompts), "--db", str(tmp_path / "q.duckdb"),
               "--output", str(tmp_path / "out.jsonl"), "--max-tokens", "4", "--kv-cache-gib", "1", "--max-num-seqs", "16"]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("BATCHBIN_ENGINE_LOG", None)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    terminal = done.stdout + done.stderr
    assert "2 valid, 0 rejected" in done.stdout
    for noise in ("Loading safetensors", "Task run", "Flow run", "FutureWarning"):
        assert noise not in terminal, f"{noise!r} reached the terminal"
    assert (tmp_path / "q.engine.log").stat().st_size > 0
