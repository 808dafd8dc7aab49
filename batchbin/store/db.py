"""Open a BatchBin DuckDB file with its schema in place.

Tasks open the file by path. A flow run holds the file open in a `session` for its whole
duration; while it does, `connect` hands out cursors of that one connection instead of opening
the file again (an open with its schema check costs ~30 ms, and a job opens it ~15 times). Other
processes still see one writer: the flow's. All SQL comes from sql/ through batchbin.store.queries.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import duckdb
import pyarrow as pa

from batchbin.errors import BatchBinError
from batchbin.store.queries import execute, fetch_one, sql

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


# Another process holding the file (a run on the same database) is waited for: a run up to
# LOCK_WAIT_S (the run before it finishes), a reader up to READ_LOCK_WAIT_S. Anything else that
# keeps the file from opening is an error at once.
LOCK_WAIT_S = 3600.0
READ_LOCK_WAIT_S = 10.0
LOCK_SAY_EVERY_S = 30.0


class SchemaVersionError(BatchBinError):
    """The database was written by an incompatible BatchBin version."""


class NotABatchBinDatabase(BatchBinError):
    """The file is not a database BatchBin can use (not DuckDB, or another program's)."""


class DatabaseBusy(BatchBinError):
    """Another process kept the database for longer than we wait."""


def is_lock_conflict(error: BaseException) -> bool:
    """DuckDB's "Could not set lock on file ...: Conflicting lock is held in ... (PID n)"."""
    return isinstance(error, duckdb.IOException) and "Could not set lock" in str(error)


def lock_holder(error: BaseException) -> str:
    """Who holds the lock, as DuckDB names it ("process 1234"), or "another process"."""
    found = re.search(r"\(PID (\d+)\)", str(error))
    return f"process {found[1]}" if found else "another process"


class Held(Exception):
    """An attempt found the thing it wants held by someone else (`holder` names who)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


T = TypeVar("T")


def wait_while_held(attempt: Callable[[], T], wait_s: float, on_wait: Callable[[str], None],
                    waiting: Callable[[str], str], gave_up: Callable[[str], str]) -> T:
    """`attempt()` again every half second while it raises Held, saying `waiting(holder)` now
    and then (every LOCK_SAY_EVERY_S); DatabaseBusy(`gave_up(holder)`) after `wait_s`."""
    deadline = time.monotonic() + wait_s
    next_say = time.monotonic()
    while True:
        try:
            return attempt()
        except Held as held:
            if time.monotonic() >= deadline:
                raise DatabaseBusy(gave_up(held.holder)) from None
            if time.monotonic() >= next_say:
                on_wait(waiting(held.holder))
                next_say = time.monotonic() + LOCK_SAY_EVERY_S
            time.sleep(0.5)


def connect_when_free(path: Path, read_only: bool = False, wait_s: float = LOCK_WAIT_S,
                      on_wait: Callable[[str], None] | None = None) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, waiting while another process holds the file (saying so now and then);
    a file that is not a DuckDB database is a clear error at once."""

    def attempt() -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=READ_ONLY_CONFIG if read_only else {})
        except duckdb.IOException as error:
            if not is_lock_conflict(error):
                raise NotABatchBinDatabase(f"cannot open {path} as a BatchBin database: {str(error).strip()}") from None
            raise Held(lock_holder(error)) from None

    return wait_while_held(
        attempt, wait_s, on_wait or (lambda message: print(message, file=sys.stderr)),
        waiting=lambda holder: (f"waiting for {path}: {holder} has it open (a run writing to it, or a reader); "
                                f"going on when it is free (up to {wait_s:.0f} s)"),
        gave_up=lambda holder: (f"{path} is still in use by {holder} after {wait_s:.0f} s (a run on the same "
                                "database holds it while it runs); try again when it has finished"))


_sessions: dict[str, list] = {}  # resolved path -> [connection, number of open sessions]
_sessions_lock = threading.Lock()


@contextmanager
def session(db_path: str | Path, on_wait: Callable[[str], None] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """Keep the database open for the block; `connect` to it meanwhile returns cursors. Waits
    while another process holds the file (`on_wait` tells what it waits for)."""
    key = str(Path(db_path).resolve())
    with _sessions_lock:
        entry = _sessions.get(key)
        if entry is None:
            entry = _sessions[key] = [_open(Path(db_path), on_wait), 0]
        entry[1] += 1
    try:
        yield entry[0]
    finally:
        with _sessions_lock:
            entry[1] -= 1
            if entry[1] == 0:
                del _sessions[key]
                entry[0].close()


# Generation writes a checkpoint now and then for hours: it keeps the file open at most
# RELEASE_EVERY_S at a time, then leaves it free at least RELEASE_GAP_S, so that `batchbin sql`
# and other readers get in while a job runs (closing costs ~65 ms: DuckDB writes its log into
# the file, about 1% of the time at these values).
RELEASE_EVERY_S = 5.0
RELEASE_GAP_S = 1.0


class BriefConnection:
    """The database for a stage that writes now and then over a long time (generation): opened
    when needed, let go of once held RELEASE_EVERY_S, then left free for readers a while."""

    def __init__(self, db_path: str | Path, on_wait: Callable[[str], None] | None = None) -> None:
        self.path, self.on_wait = Path(db_path), on_wait
        self.con: duckdb.DuckDBPyConnection | None = None
        self.opened_at = self.released_at = float("-inf")

    def get(self, wait: bool = True) -> duckdb.DuckDBPyConnection | None:
        """The open connection; or, without `wait`, None while readers have their turn or hold the file."""
        if self.con is None:
            if not wait and time.monotonic() - self.released_at < RELEASE_GAP_S:
                return None
            try:
                self.con = connect_when_free(self.path, wait_s=LOCK_WAIT_S if wait else 0, on_wait=self.on_wait)
            except DatabaseBusy:
                if wait:
                    raise
                return None
            self.opened_at = time.monotonic()
        return self.con

    def used(self) -> None:
        """After a use: let the file go if it has been held long enough."""
        if self.con is not None and time.monotonic() - self.opened_at >= RELEASE_EVERY_S:
            self.close()

    def close(self) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None
            self.released_at = time.monotonic()


def connect(db_path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (and if needed create) the database at db_path, schema applied; or, `read_only`,
    open an existing one sealed (READ_ONLY_CONFIG).

    Inside a `session` on the same file, a cursor of the session's connection (close it as
    usual; the session's connection stays open)."""
    path = Path(db_path)
    if read_only:
        if not path.exists():
            raise FileNotFoundError(f"no BatchBin database at {path}; run `batchbin run` first")
        return connect_when_free(path, read_only=True, wait_s=READ_LOCK_WAIT_S)
    with _sessions_lock:
        entry = _sessions.get(str(path.resolve()))
    return entry[0].cursor() if entry is not None else _open(path)


def _open(path: Path, on_wait: Callable[[str], None] | None = None) -> duckdb.DuckDBPyConnection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = connect_when_free(path, on_wait=on_wait)
    try:
        execute(con, "schema.set_memory_limit", {"limit": f"{memory_limit_mib()}MiB"})
        ensure_schema(con, str(path))
    except BaseException:
        con.close()
        raise
    return con


def memory_limit_mib() -> int:
    """DuckDB's share of this machine's physical memory, in MiB (at least 1 GiB)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(1024, int(total * DUCKDB_MEMORY_SHARE) // 2**20)


def ensure_schema(con: duckdb.DuckDBPyConnection, name: str = "the database") -> None:
    """Create the tables if missing. A database of another schema version, or another program's
    (tables, but no BatchBin version), is refused before anything in it changes.

    The schema's statements run once per text of sql/schema.sql: a file whose meta table holds
    the hash of the current text skips them (they are idempotent, but cost tens of
    milliseconds at every open); an older text's migrations (ALTER ... IF NOT EXISTS) run once."""
    version = stored_hash = None
    if fetch_one(con, "schema.has_meta")[0]:
        version, stored_hash = fetch_one(con, "schema.get_versions")
    if version is None and fetch_one(con, "schema.count_tables")[0]:
        raise NotABatchBinDatabase(f"{name} is a DuckDB database of another program (it has tables, but no BatchBin "
                                   "schema version); give BatchBin a --db file of its own")
    if version is not None and version != SCHEMA_VERSION:
        raise SchemaVersionError(f"{name} has schema version {version} but this BatchBin writes version "
                                 f"{SCHEMA_VERSION}; use a new --db file (or the BatchBin that wrote it)")
    if stored_hash == schema_hash():
        return
    execute(con, "schema.create_tables")
    if version is None:
        execute(con, "schema.set_meta", {"key": "schema_version", "value": SCHEMA_VERSION})
    execute(con, "schema.set_meta", {"key": "schema_hash", "value": schema_hash()})


@cache
def schema_hash() -> str:
    """A hash of the schema's statements: a changed schema.sql runs them again on every file."""
    return hashlib.sha256(sql("schema.create_tables").encode()).hexdigest()[:16]


def stage_stamp(db_path: str | Path, run_id: str, stage: str) -> str | None:
    """When a stage last finished for a run, or None if it never did (or the db is gone)."""
    if not Path(db_path).exists():
        return None
    con = connect(db_path)
    try:
        row = fetch_one(con, "stages.stamp", {"run_id": run_id, "stage": stage})
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
    except BaseException:
        # the statement failed: in an aborted transaction unregistering fails too, and its error
        # would hide the real one
        for name in tables:
            try:
                con.unregister(name)
            except duckdb.Error:
                pass
        raise
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
