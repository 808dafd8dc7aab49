"""A run's own row in `runs`: created or resumed with its parameters, its engine settings,
its end state, and what to tell a user whose file had no valid row. SQL in sql/runs.sql.

The batch flow calls these between its stages; they take the RunRef the stages pass on.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
from pydantic import BaseModel

from batchbin.config import JobConfig
from batchbin.engine.settings import EngineSettings
from batchbin.store import db
from batchbin.store.queries import execute


class RunRef(BaseModel):
    """What a stage passes to the next: where the data is, never the data."""

    db_path: str
    run_id: str


@contextmanager
def open_run_db(ref: RunRef) -> Iterator[duckdb.DuckDBPyConnection]:
    con = db.connect(ref.db_path)
    try:
        yield con
    finally:
        con.close()


def start_run(ref: RunRef, config: JobConfig, fingerprint: str, model_path: str) -> None:
    """Create the run's row, or mark a resumed run as running again, with its parameters."""
    with open_run_db(ref) as con:
        execute(con, "runs.start_run", {
            "run_id": ref.run_id, "input_path": str(Path(config.input_path).resolve()) if config.input_path else config.query,
            "fingerprint": fingerprint,
            "model": model_path, "config": config.model_dump_json(),
        })


def record_engine(ref: RunRef, settings: EngineSettings) -> None:
    """The engine settings the run uses (chosen once its size is known)."""
    with open_run_db(ref) as con:
        execute(con, "runs.set_engine", {"run_id": ref.run_id, "engine": json.dumps(settings.as_dict())})


def finish_run(ref: RunRef, status: str) -> None:
    """The run's end state ("finished" or "failed") and time."""
    with open_run_db(ref) as con:
        execute(con, "runs.finish_run", {"run_id": ref.run_id, "status": status})


def no_valid_request_message(ref: RunRef, input_path: str, examples: int = 3) -> str:
    """The error for a file in which no row is valid, with its first rejects as examples."""
    with open_run_db(ref) as con:
        rejects = execute(con, "runs.reject_examples", {"run_id": ref.run_id, "limit": examples}).fetchall()
    if not rejects:
        return f"no request in {input_path}: the file is empty"
    shown = "; ".join(f"row {row}: {reason}" for row, _, _, reason in rejects)
    return f"no valid request in {input_path} ({shown}); every row is in the rejects table"


def stopped_message(config: JobConfig) -> str:
    """What a user reads when a run was stopped (Ctrl-C, SIGTERM): how far it got, how to go on."""
    from batchbin.store import db
    from batchbin.store.queries import fetch_one

    resume = "run the same command again to resume (only requests without a result are generated)"
    try:
        run_id = config.run_id(config.input_fingerprint())
        con = db.connect(config.db_path, read_only=True)
        try:
            requests, results = fetch_one(con, "runs.progress", {"run_id": run_id})
        finally:
            con.close()
    except Exception:  # stopped before the run had a database: nothing to count
        return f"stopped; {resume}"
    return f"stopped: {results} of {requests} requests have their result stored in {config.db_path}; {resume}"
