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


def test_scribeline_run_starts_its_own_ephemeral_api_and_seeds_a_fresh_prefect_home(tmp_path):
    # What `scribeline run` does with nothing started (scribeline.startup), in a process of its
    # own: the API process is spawned before Prefect is imported, answers, is reniced once it
    # answers, and a second fresh PREFECT_HOME starts from the cached, migrated, empty database.
    import json
    import os
    import subprocess
    import sys

    script = (
        "import json, os, sys\n"
        "from scribeline import services\n"
        "from scribeline.config import Settings\n"
        "api = services.start_ephemeral_api(Settings.from_env())\n"
        "assert 'prefect' not in sys.modules\n"
        "api.wait()\n"
        "from prefect.settings import PREFECT_API_URL\n"
        "with services.ephemeral_flow_runs():\n"
        "    from prefect.settings import get_current_settings\n"
        "    beats = get_current_settings().flows.heartbeat_frequency\n"
        "tids = os.listdir(f'/proc/{api.process.pid}/task')\n"
        "nice = [int(open(f'/proc/{api.process.pid}/task/{t}/stat').read().rsplit(')', 1)[1].split()[16]) for t in tids]\n"
        "print(json.dumps({'url': PREFECT_API_URL.value(), 'api': api.api_url, 'seeded': api.seeded, 'nice': nice, 'beats': beats}))\n"
    )
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    for k in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL"):
        env.pop(k, None)
    runs = []
    for i in range(2):
        env["SCRIBELINE_DATA_DIR"] = str(tmp_path / f"data{i}")
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in runs:
        assert r["url"] == r["api"] and r["beats"] is None
        assert r["nice"] and set(r["nice"]) == {19}
    assert [r["seeded"] for r in runs] == [False, True]  # the first migrated and saved the empty database
    assert services.prefect_db_template().name.startswith("prefect-")
    assert list((tmp_path / "cache" / "scribeline").glob("prefect-*-empty.db"))


def test_a_server_left_stopping_is_waited_for_by_the_next_start_which_then_serves(tmp_path):
    # A one-shot `scribeline run` asks its S3 server to stop and ends (SeaweedFS takes ~1.2 s to
    # shut down); a command started at once on the same data directory must neither find the old
    # server's port taken nor use a server that is going away, and nothing written is lost.
    import dataclasses
    import os
    import time

    from scribeline import storage
    from scribeline.config import Settings
    from tests.conftest import free_s3_port

    settings = dataclasses.replace(Settings.from_env(), data_dir=tmp_path / "data", embedded_s3_port=free_s3_port())
    first = services.start_s3(settings)
    old = first.pid()
    storage.put_json(settings, settings.bucket_processed, "kept.json", {"written": "before the stop"})
    asked = time.monotonic()
    assert services.stop(first, wait=False)
    assert time.monotonic() - asked < 1.0  # not waited for: the server's own shutdown takes ~1.2 s
    assert not services.s3_running(settings)
    again = services.start_s3(settings)
    try:
        assert again.pid() not in (None, old)
        assert not os.path.exists(f"/proc/{old}")  # ended (and reaped) before the new one started
        assert not (tmp_path / "data" / "run" / "s3.stopping").exists()
        assert storage.get_json(settings, settings.bucket_processed, "kept.json") == {"written": "before the stop"}
    finally:
        services.stop(again)


def test_a_server_asked_to_stop_ends_even_if_it_hangs_in_its_shutdown(tmp_path):
    # SeaweedFS never ends if its directory is deleted while it shuts down. A command that asked its
    # server to stop and ended (stop(wait=False)) leaves a watchdog that kills it past the timeout.
    import dataclasses
    import os
    import shutil
    import time

    from scribeline.config import Settings
    from tests.conftest import free_s3_port

    settings = dataclasses.replace(Settings.from_env(), data_dir=tmp_path / "data", embedded_s3_port=free_s3_port())
    svc = services.start_s3(settings)
    pid = svc.pid()
    services.stop(svc, timeout=2, wait=False)
    shutil.rmtree(tmp_path / "data")
    deadline = time.monotonic() + 15
    while os.waitpid(pid, os.WNOHANG)[0] != pid:
        assert time.monotonic() < deadline, "the server asked to stop is still running"
        time.sleep(0.1)
