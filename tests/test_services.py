"""The embedded services' Prefect settings and priority."""

from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from scribeline import services
from tests.conftest import niceness


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


def test_the_ephemeral_api_runs_at_the_lowest_priority_beside_the_model():
    from prefect.server.api.server import SubprocessASGIServer

    with temporary_settings(updates={PREFECT_API_URL: None}):
        with services.ephemeral_flow_runs():
            server = SubprocessASGIServer()
            assert server.running and server.server_process is not None
            threads = niceness(server.server_process.pid)
    assert len(threads) > 1 and set(threads) == {19}  # every thread, not only the first
