"""The database file: one open per flow run (a session), cursors inside it, closed after."""

from __future__ import annotations

import duckdb

from batchbin import db


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

    from batchbin import db

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
