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
