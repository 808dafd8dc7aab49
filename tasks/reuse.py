"""Stage 2b, reuse: answers reused across runs. Each request of the run gets its reuse key
(batchbin/engine/reuse_key.py: model fingerprint, prompt token ids, output parameters, seed
where it samples); a request without a result whose key an earlier run's request has is
answered with that stored result (sql/reuse.sql), which names the run it came from
(`results.reused_from`). Every later stage leaves such a request alone as it does any request
with a result: the probe does not pick it, generation does not run it; the output file and the
views include it.

Keys are stored with `--no-reuse-results` too (later runs can reuse this run's answers); only the
lookup is skipped, and answers this run took from others before are dropped, to be generated.
"""

from __future__ import annotations

import pyarrow as pa
from prefect import get_run_logger, task

from batchbin.engine.fingerprint import model_fingerprint
from batchbin.engine.reuse_key import keys_of_rows
from batchbin.engine.step_loop import SamplingDefaults
from batchbin.store.db import registered, scan_once, transaction
from batchbin.store.queries import execute, fetch_arrow, fetch_one
from batchbin.store.runs import RunRef, open_run_db
from batchbin.tasks.common import Stage

KEYS_SCHEMA = pa.schema([("request_id", pa.string()), ("reuse_key", pa.string())])
PAGE_ROWS = 65536


def reuse_run(con, run_id: str, fingerprint: str | None, defaults: SamplingDefaults, enabled: bool,
              page_rows: int = PAGE_ROWS) -> int:
    """Key every request of the run and, if `enabled`, answer those an earlier run answered;
    returns how many were answered so (one transaction)."""
    with transaction(con):
        execute(con, "reuse.clear_keys", {"run_id": run_id})
        execute(con, "reuse.set_fingerprint", {"run_id": run_id, "fingerprint": fingerprint})
        after = ""
        while True:
            page = fetch_arrow(con, "reuse.requests_to_key", {"run_id": run_id, "after": after, "limit": page_rows})
            if page.num_rows == 0:
                break
            keys = list(keys_of_rows(fingerprint, page, defaults))
            table = pa.Table.from_pylist([{"request_id": rid, "reuse_key": key} for rid, key in keys], schema=KEYS_SCHEMA)
            with registered(con, incoming_keys=scan_once(table)):
                execute(con, "reuse.insert_keys", {"run_id": run_id})
            after = keys[-1][0]
        if enabled:
            execute(con, "reuse.reuse_answers", {"run_id": run_id})
    return fetch_one(con, "reuse.count_reused", {"run_id": run_id})[0]


STAGE = Stage("reuse", sql_file="reuse", modules=(__name__, "batchbin.engine.reuse_key", "batchbin.engine.fingerprint"))


@task(**STAGE.task_options())
def reuse_results(ref: RunRef, model_path: str, defaults: SamplingDefaults, enabled: bool = True,
                  after: str = "") -> RunRef:
    """Answer the run's requests that earlier runs answered already (`enabled`; see the module
    doc; `after`: the stamp of the stage before it)."""
    fingerprint = model_fingerprint(model_path)
    params = {"fingerprint": fingerprint, "defaults": defaults, "enabled": enabled, "after": after}
    with open_run_db(ref) as con:
        if not STAGE.is_done(con, ref.run_id, params):
            reused = reuse_run(con, ref.run_id, fingerprint, defaults, enabled)
            STAGE.mark_done(con, ref.run_id, params, reused)
            logger = get_run_logger()
            if fingerprint is None:
                logger.warning("reuse: %s has no local copy to fingerprint; no answer is reused from or for this run",
                               model_path)
            elif reused:
                logger.info("reuse: %s requests answered from earlier runs (not generated)", reused)
    return ref
