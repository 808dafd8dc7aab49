"""Flow runs started in-process skip Prefect's heartbeat only where no server listens to it."""

from __future__ import annotations

import prefect.settings as prefect_settings
from prefect.settings import get_current_settings, temporary_settings

from batchbin.flows.runtime import in_process_flow_runs


def test_no_heartbeat_on_the_ephemeral_api():
    with temporary_settings(updates={prefect_settings.PREFECT_API_URL: None}):
        assert get_current_settings().flows.heartbeat_frequency == 180  # Prefect's default
        with in_process_flow_runs():
            assert get_current_settings().flows.heartbeat_frequency is None
        assert get_current_settings().flows.heartbeat_frequency == 180


def test_heartbeats_stay_on_against_a_server():
    with temporary_settings(updates={prefect_settings.PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        with in_process_flow_runs():
            assert get_current_settings().flows.heartbeat_frequency == 180


def test_the_ephemeral_api_boots_meanwhile_and_answers_after_the_block():
    import httpx
    from prefect.server.api.server import SubprocessASGIServer

    from batchbin.flows.runtime import api_started_meanwhile

    with temporary_settings(updates={prefect_settings.PREFECT_API_URL: None}):
        with api_started_meanwhile():
            pass
        server = SubprocessASGIServer()  # the one Prefect's client uses (stopped at exit)
        assert server.running
        assert httpx.get(f"{server.api_url}/health", timeout=30).status_code == 200


def test_nothing_boots_against_a_server():
    import threading

    from batchbin.flows.runtime import api_started_meanwhile

    with temporary_settings(updates={prefect_settings.PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with api_started_meanwhile():
            assert not [t for t in threading.enumerate() if t.name == "prefect-api-start"]
