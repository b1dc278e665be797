"""The operator's path: `scribeline up`, deploy to a work pool, a scheduled run picked up by a worker."""

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_s3_port, niceness


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    data = tmp_path_factory.mktemp("ops")
    env = dict(os.environ)
    for k in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL"):
        env.pop(k, None)
    env.update(SCRIBELINE_DATA_DIR=str(data), SCRIBELINE_EMBEDDED_S3_PORT=str(free_s3_port()),
               SCRIBELINE_PREFECT_PORT=str(_free_port()))
    up = subprocess.run([sys.executable, "-m", "scribeline.cli", "up"], env=env, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    env.update(PREFECT_API_URL=f"http://127.0.0.1:{env['SCRIBELINE_PREFECT_PORT']}/api", PREFECT_HOME=str(data / "prefect"))
    yield env, up.stdout
    subprocess.run([sys.executable, "-m", "scribeline.cli", "down"], env=env, capture_output=True, timeout=120)


def run(env, *cmd, timeout=300):
    result = subprocess.run(list(cmd), env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (cmd, result.stdout[-2000:], result.stderr[-2000:])
    return result


def test_up_serves_the_prefect_ui_and_api(services):
    env, stdout = services
    port = env["SCRIBELINE_PREFECT_PORT"]
    assert f"http://127.0.0.1:{port}" in stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        assert "<html" in r.read().decode(errors="replace").lower()


def test_up_runs_both_servers_at_the_lowest_priority(services):
    """Beside the model they take a core only when it is free (README: the pipeline's waves)."""
    env, _ = services
    run_dir = Path(env["SCRIBELINE_DATA_DIR"]) / "run"
    for name in ("s3", "prefect"):
        threads = niceness(int((run_dir / f"{name}.pid").read_text()))
        assert threads and set(threads) == {19}, (name, threads)


def test_a_deployment_run_is_executed_by_a_worker(services, media_dir):
    env, _ = services
    cli = [sys.executable, "-m", "scribeline.cli"]
    prefect = [sys.executable, "-m", "prefect"]
    run(env, sys.executable, "deployments/deploy.py", "--pool", "scribeline-cpu")
    run(env, *cli, "submit", str(media_dir / "en_harvard_birch_canoe.wav"))
    run(env, *prefect, "deployment", "run", "scribeline-process-incoming/incoming-cpu")
    run(env, *prefect, "worker", "start", "--pool", "scribeline-cpu", "--run-once", timeout=600)
    rows = json.loads(run(env, *cli, "query", "select source_object, text from transcripts", "--json").stdout)
    assert [r["source_object"] for r in rows] == ["s3://scribeline-incoming/en_harvard_birch_canoe.wav"]
    assert "canoe" in rows[0]["text"].lower()
    runs = json.loads(urllib.request.urlopen(urllib.request.Request(
        env["PREFECT_API_URL"] + "/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"}),
        timeout=10).read())
    assert any(r["state_type"] == "COMPLETED" and r["name"].startswith("incoming-") for r in runs)
