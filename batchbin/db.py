"""Open a BatchBin DuckDB file with its schema in place.

Tasks open the file by path. A flow run holds the file open in a `session` for its whole
duration; while it does, `connect` hands out cursors of that one connection instead of opening
the file again (an open with its schema check costs ~30 ms, and a job opens it ~15 times). Other
processes still see one writer: the flow's. All SQL comes from sql/ through batchbin.sqlfiles.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa

from batchbin.sqlfiles import one, run

SCHEMA_VERSION = "1"
# DuckDB keeps up to 80% of memory by default, as cache it gives back only when it needs room
# itself; vLLM's KV cache is sized later from the memory left free. A quarter is DuckDB's share
# here; past it, DuckDB writes to a temporary directory beside the file.
DUCKDB_MEMORY_SHARE = 0.25
# Rows a stage reads, works on and stores at a time (load, tokenize, predict), so a run of any
# size goes through in bounded memory: token ids as Python lists cost ~12 KiB a 300-token prompt.
CHUNK_ROWS = 8192


# A read-only connection (`batchbin sql`, the benchmark's reads) can change nothing: no file
# outside the database is read or written (ATTACH, COPY ... TO, read_csv, INSTALL/LOAD), and no
# setting can be changed back (SET enable_external_access, allowed_directories, ...).
READ_ONLY_CONFIG = {"enable_external_access": False, "lock_configuration": True}


class SchemaVersionError(RuntimeError):
    """The database was written by an incompatible BatchBin version."""


_sessions: dict[str, list] = {}  # resolved path -> [connection, number of open sessions]
_sessions_lock = threading.Lock()


@contextmanager
def session(db_path: str | Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """Keep the database open for the block; `connect` to it meanwhile returns cursors."""
    key = str(Path(db_path).resolve())
    with _sessions_lock:
        entry = _sessions.get(key)
        if entry is None:
            entry = _sessions[key] = [_open(Path(db_path)), 0]
        entry[1] += 1
    try:
        yield entry[0]
    finally:
        with _sessions_lock:
            entry[1] -= 1
            if entry[1] == 0:
                del _sessions[key]
                entry[0].close()


def connect(db_path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (and if needed create) the database at db_path, schema applied; or, `read_only`,
    open an existing one sealed (READ_ONLY_CONFIG).

    Inside a `session` on the same file, a cursor of the session's connection (close it as
    usual; the session's connection stays open)."""
    path = Path(db_path)
    if read_only:
        if not path.exists():
            raise FileNotFoundError(f"no BatchBin database at {path}; run `batchbin run` first")
        return duckdb.connect(str(path), read_only=True, config=READ_ONLY_CONFIG)
    with _sessions_lock:
        entry = _sessions.get(str(path.resolve()))
    return entry[0].cursor() if entry is not None else _open(path)


def _open(path: Path) -> duckdb.DuckDBPyConnection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    run(con, "schema.set_memory_limit", {"limit": f"{memory_limit_mib()}MiB"})
    ensure_schema(con)
    return con


def memory_limit_mib() -> int:
    """DuckDB's share of this machine's physical memory, in MiB (at least 1 GiB)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1024, int(total * DUCKDB_MEMORY_SHARE) // 2**20)


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables if missing; refuse a database of another schema version."""
    run(con, "schema.create_tables")
    row = one(con, "schema.get_meta", {"key": "schema_version"})
    if row is None:
        run(con, "schema.set_meta", {"key": "schema_version", "value": SCHEMA_VERSION})
    elif row[0] != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"database schema version {row[0]} but this BatchBin writes version {SCHEMA_VERSION}; "
            "use a new --db file"
        )


def stage_stamp(db_path: str | Path, run_id: str, stage: str) -> str | None:
    """When a stage last finished for a run, or None if it never did (or the db is gone)."""
    if not Path(db_path).exists():
        return None
    con = connect(db_path)
    try:
        row = one(con, "stages.stamp", {"run_id": run_id, "stage": stage})
    finally:
        con.close()
    return None if row is None else f"{row[0]}:{row[1]}:{row[2]}"


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """All or nothing: a stage's delete-then-insert never leaves a run half-written."""
    con.begin()
    try:
        yield
    except BaseException:
        con.rollback()
        raise
    con.commit()


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, **tables) -> Iterator[None]:
    """Arrow tables visible to SQL under the given names for the duration of the block."""
    for name, table in tables.items():
        con.register(name, table)
    try:
        yield
    finally:
        for name in tables:
            con.unregister(name)


def scan_once(table: pa.Table) -> pa.RecordBatchReader:
    """`table` as a stream that SQL reads once, to register instead of the table where chunks
    are inserted inside one long transaction (load, tokenize, predict).

    DuckDB's Python `register` keeps the registered object alive until the transaction ends,
    `unregister` or not (duckdb-python issue 469), so every chunk of a large file would stay in
    memory. A consumed stream has let go of its batches. A statement that reads the table twice
    needs the table itself."""
    return pa.RecordBatchReader.from_batches(table.schema, iter(table.to_batches()))
