"""The database file: one open per flow run (a session), cursors inside it, closed after."""

from __future__ import annotations

import os

import duckdb

from batchbin.store import db


def test_connect_inside_a_session_shares_one_open_file(db_path):
    with db.session(db_path) as held:
        held.execute("CREATE TABLE probe (x INTEGER)")
        con = db.connect(db_path)
        con.execute("INSERT INTO probe VALUES (1)")
        con.close()  # a cursor: the session's connection stays open
        assert held.execute("SELECT count(*) FROM probe").fetchone() == (1,)
        with db.session(db_path):  # nested sessions share the connection too
            assert db.connect(db_path).execute("SELECT x FROM probe").fetchone() == (1,)
    # the session is over: the file is closed, so a read-only open (another configuration) works
    reader = duckdb.connect(db_path, read_only=True)
    assert reader.execute("SELECT x FROM probe").fetchone() == (1,)
    reader.close()


def test_a_stage_stamp_is_read_through_the_session(db_path):
    with db.session(db_path) as held:
        held.execute("INSERT INTO stages VALUES ('r1', 'load', 'p', 3, current_timestamp)")
        assert db.stage_stamp(db_path, "r1", "load").startswith("p:3:")
        assert db.stage_stamp(db_path, "r1", "tokenize") is None


def test_a_database_from_before_response_format_gets_the_column(db_path):
    """Schema version 1 databases made before `prompts.response_format` existed open as they are."""
    import duckdb

    from batchbin.store import db

    old = duckdb.connect(db_path)
    old.execute("create table meta (key varchar primary key, value varchar)")
    old.execute("insert into meta values ('schema_version', '1')")
    old.execute("create table prompts (run_id varchar, request_id varchar, row_number integer, prompt varchar, "
                "messages json, max_tokens integer, temperature double, top_p double, seed integer, stop varchar[], "
                "metadata json, primary key (run_id, request_id))")
    old.execute("insert into prompts (run_id, request_id, row_number, prompt) values ('r', 'a', 1, 'kept')")
    old.close()
    con = db.connect(db_path)
    assert con.execute("select prompt, response_format from prompts").fetchall() == [("kept", None)]
    con.close()


def test_chunks_inserted_in_one_transaction_are_not_kept_in_memory(db_path):
    import gc

    import pyarrow as pa

    con = db.connect(db_path)
    con.execute("CREATE TABLE chunks (text VARCHAR)")
    before = pa.total_allocated_bytes()
    with db.transaction(con):
        for _ in range(5):
            chunk = pa.table({"text": ["x" * 1000] * 2000})  # ~2 MB of Arrow memory
            with db.registered(con, incoming=db.scan_once(chunk)):
                con.execute("INSERT INTO chunks SELECT text FROM incoming")
            del chunk
            gc.collect()
            # a registered table would stay alive until COMMIT (duckdb-python issue 469)
            assert pa.total_allocated_bytes() - before < 1_000_000
    assert con.execute("SELECT count(*) FROM chunks").fetchone() == (10000,)
    con.close()


def test_duckdb_holds_a_quarter_of_memory_at_most(db_path):
    con = db.connect(db_path)
    limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]  # e.g. '5.8 GiB'
    con.close()
    value, unit = limit.split()
    assert abs(float(value) * {"MiB": 1, "GiB": 1024}[unit] - db.memory_limit_mib()) / db.memory_limit_mib() < 0.02
    total_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    assert 1024 <= db.memory_limit_mib() <= max(1024, total_mib / 4)


def test_a_file_that_is_not_a_duckdb_database_is_one_clear_error_and_stays_as_it_was(tmp_path):
    import pytest

    path = tmp_path / "notes.duckdb"
    path.write_text("my notes, not a database\n" * 50)
    before = path.read_bytes()
    with pytest.raises(db.NotABatchBinDatabase, match="not a valid DuckDB database file"):
        db.connect(path)
    with pytest.raises(db.NotABatchBinDatabase):
        db.connect(path, read_only=True)
    assert path.read_bytes() == before


def test_another_programs_database_is_refused_and_not_changed(tmp_path):
    import pytest

    path = tmp_path / "theirs.duckdb"
    theirs = duckdb.connect(str(path))
    theirs.execute("CREATE TABLE customers (id INTEGER)")
    theirs.close()
    with pytest.raises(db.NotABatchBinDatabase, match="another program"):
        db.connect(path)
    check = duckdb.connect(str(path), read_only=True)
    assert [row[0] for row in check.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == ["customers"]
    check.close()


def test_a_database_of_a_newer_schema_version_is_refused_before_anything_changes(tmp_path):
    import pytest

    path = tmp_path / "newer.duckdb"
    newer = duckdb.connect(str(path))
    newer.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    newer.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    newer.close()
    with pytest.raises(db.SchemaVersionError, match="schema version 99"):
        db.connect(path)
    check = duckdb.connect(str(path), read_only=True)
    assert [row[0] for row in check.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == ["meta"]
    check.close()


def test_a_database_another_process_holds_is_waited_for_then_opened(tmp_path):
    """A real lock held by another process for a few seconds: the open waits, says for whom, and
    succeeds once the file is free; a reader that waits too long gets a clear error."""
    import subprocess
    import sys
    import time

    import pytest

    path = tmp_path / "busy.duckdb"
    db.connect(path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; con = duckdb.connect({str(path)!r}); print('holding', flush=True); "
                               "time.sleep(4)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(db.DatabaseBusy, match=f"still in use by process {holder.pid}"):
            db.connect_when_free(path, read_only=True, wait_s=1)
        said = []
        started = time.monotonic()
        con = db.connect_when_free(path, on_wait=said.append)
        con.close()
        assert time.monotonic() - started > 1
        assert said and f"process {holder.pid} has it open" in said[0]
    finally:
        holder.kill()
        holder.wait(timeout=30)
