"""Stage 1, load: read a JSONL, Parquet or CSV file of requests (batchbin/io/readers.py), or the
rows of a table job's query (batchbin/io/query_jobs.py), validate
every row (batchbin/io/request_schema.py), store valid rows in `prompts` and every invalid one in
`rejects` with its row number, field and reason. Nothing a user sent is silently dropped.
"""

from __future__ import annotations

from typing import Callable

import duckdb
import pyarrow as pa
from prefect import get_run_logger, task

from batchbin.store.db import CHUNK_ROWS, registered, scan_once, transaction
from batchbin.io.query_jobs import QueryJob, describe_fields, query_requests
from batchbin.io.readers import iter_rows
from batchbin.io.request_schema import validated_chunks
from batchbin.store.queries import execute, fetch_one
from batchbin.store.runs import RunRef, open_run_db
from batchbin.tasks.common import Stage, chunk_progress


PROMPT_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("row_number", pa.int32()), ("prompt", pa.string()), ("messages", pa.string()),
    ("max_tokens", pa.int32()), ("temperature", pa.float64()), ("top_p", pa.float64()), ("seed", pa.int64()),
    ("stop", pa.list_(pa.string())), ("metadata", pa.string()), ("response_format", pa.string()),
    ("min_tokens", pa.int32()), ("ignore_eos", pa.bool_()),
])
REJECT_SCHEMA = pa.schema([
    ("row_number", pa.int32()), ("request_id", pa.string()), ("field", pa.string()), ("reason", pa.string()), ("raw", pa.string()),
])


def load_requests(con: duckdb.DuckDBPyConnection, run_id: str, input_path: str | None, chunk_rows: int = CHUNK_ROWS,
                  progress: Callable[[int], None] | None = None, query_job: QueryJob | None = None,
                  log_progress: Callable[[str], None] | None = None) -> dict:
    """Read, validate and store one input file (or a table job's query rows), `chunk_rows` rows
    at a time, in place of the run's prompts and load-time rejects; return how many rows were
    valid / rejected.

    One transaction: a file that cannot be read to its end leaves the run's stored rows as they were.
    A table job's query runs first, outside it: its problems are found before anything is written."""
    counts = {"requests": 0, "rejects": 0}
    rows = iter_rows(input_path) if query_job is None else query_requests(query_job)
    if query_job is not None and log_progress and (line := describe_fields(rows)):
        log_progress(line)
    with transaction(con):
        execute(con, "load.clear_requests", {"run_id": run_id})
        for valid, rejects in validated_chunks(rows, chunk_rows):
            with registered(con, incoming_prompts=scan_once(pa.Table.from_pylist(valid, schema=PROMPT_SCHEMA)),
                            incoming_rejects=scan_once(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA))):
                execute(con, "load.insert_requests", {"run_id": run_id})
            counts["requests"] += len(valid)
            counts["rejects"] += len(rejects)
            if progress:
                progress(counts["requests"] + counts["rejects"])
    return counts


class LoadResult(RunRef):
    requests: int
    rejects: int


STAGE = Stage("load", sql_file="load", modules=(__name__, "batchbin.io.readers", "batchbin.io.request_schema",
                                                "batchbin.io.openai_batch", "batchbin.io.query_jobs",
                                                "batchbin.io.templates", "batchbin.io.field_order"))


@task(**STAGE.task_options())
def load(ref: RunRef, input_path: str | None, input_fingerprint: str, query: str | None = None,
         template: str | None = None, field_order: str = "input") -> LoadResult:
    """Load and validate the input file (or a table job's query: `query`, `template`, `field_order`) into prompts/rejects."""
    params = {"input": input_fingerprint}
    with open_run_db(ref) as con:
        if not STAGE.is_done(con, ref.run_id, params):
            job = QueryJob(query, template, field_order) if query is not None else None
            counts = load_requests(con, ref.run_id, input_path,
                                   progress=chunk_progress(get_run_logger().info, "rows read"), query_job=job,
                                   log_progress=get_run_logger().info)
            STAGE.mark_done(con, ref.run_id, params, counts["requests"])
        requests, rejects = fetch_one(con, "load.counts", {"run_id": ref.run_id})
    return LoadResult(db_path=ref.db_path, run_id=ref.run_id, requests=requests, rejects=rejects)
