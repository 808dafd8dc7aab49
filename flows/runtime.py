"""How BatchBin runs flows in its own process (`batchbin run`, `train-predictor`, the benchmark).

Prefect sends a flow-run heartbeat from a thread that sleeps in 1 s steps, and joins that
thread when the flow ends: up to a second of idle waiting at the end of every flow run. The
heartbeat only serves a Prefect *server* (its automations spot crashed runs by it), so against
the ephemeral API, which nothing watches and which stops with the process, it is switched off.
With PREFECT_API_URL set (a real server), heartbeats stay on.

The ephemeral API is a server process of its own that takes ~3 s to boot; `api_started_meanwhile`
boots it in the background while the command does other start-up work.
"""

from __future__ import annotations

import contextvars
import threading
from contextlib import contextmanager
from typing import Iterator


def uses_ephemeral_api() -> bool:
    from prefect.settings import get_current_settings

    return not get_current_settings().api.url


@contextmanager
def in_process_flow_runs() -> Iterator[None]:
    """Settings for flow runs called in this process (no heartbeats on the ephemeral API)."""
    if not uses_ephemeral_api():
        yield
        return
    import prefect.settings as prefect_settings
    from prefect.settings import temporary_settings

    with temporary_settings(updates={prefect_settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@contextmanager
def api_started_meanwhile() -> Iterator[None]:
    """Boot Prefect's ephemeral API server while the block runs, and wait for it at the block's end.

    Nothing is started against a real server (PREFECT_API_URL). A failed start is left for the
    first flow call to report, with Prefect's own message."""
    if not uses_ephemeral_api():
        yield
        return

    # imported here, before the thread starts, so that the thread imports nothing while this one
    # goes on importing (concurrent imports of one package can deadlock)
    from prefect.client.orchestration import get_client
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.server.api.server import SubprocessASGIServer  # noqa: F401  (the class get_client starts)

    ensure_logging_setup()  # else the server's start message (its address, a link) would go nowhere

    def start() -> None:
        try:
            get_client(sync_client=True)  # starts the server process and waits for its health check
        except Exception:
            pass

    # in a copy of this context, so the server starts with the settings in force here
    thread = threading.Thread(target=contextvars.copy_context().run, args=(start,), name="prefect-api-start", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
