"""How BatchBin runs flows in its own process (`batchbin run`, `train-predictor`, the benchmark).

Prefect sends a flow-run heartbeat from a thread that sleeps in 1 s steps, and joins that
thread when the flow ends: up to a second of idle waiting at the end of every flow run. The
heartbeat only serves a Prefect *server* (its automations spot crashed runs by it), so against
the ephemeral API, which nothing watches and which stops with the process, it is switched off.
With PREFECT_API_URL set (a real server), heartbeats stay on.
"""

from __future__ import annotations

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
