"""The embedded services' Prefect settings."""

from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from scribeline import services


def test_flow_runs_send_heartbeats_only_to_an_api_that_outlives_the_process():
    default = get_current_settings().flows.heartbeat_frequency
    assert default  # Prefect 3.8.8 sends them every 180 s unless told otherwise
    with temporary_settings(updates={PREFECT_API_URL: None}):  # Prefect's ephemeral API
        with services.ephemeral_flow_runs():
            assert get_current_settings().flows.heartbeat_frequency is None
        assert get_current_settings().flows.heartbeat_frequency == default
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):  # a lasting server
        with services.ephemeral_flow_runs():
            assert get_current_settings().flows.heartbeat_frequency == default
