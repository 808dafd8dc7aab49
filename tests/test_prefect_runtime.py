"""Flow runs started in-process skip Prefect's heartbeat only where no server listens to it."""

from __future__ import annotations

import prefect.settings as prefect_settings
from prefect.settings import get_current_settings, temporary_settings

from batchbin.prefect_runtime import in_process_flow_runs


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
