"""Stopping a run: SIGTERM, SIGINT (a terminal's Ctrl-C) or a cancellation from Prefect's API ends
`scribeline run` within 10 s with a message and a non-zero status; nothing is half-loaded, nothing
is quarantined, and every unfinished object is still in the incoming bucket.

Each test runs the command as a subprocess on a data directory of its own, over a long recording
(178 s: minutes of transcription on 2 cores) and two short ones. The S3 server is started here
first, so the command finds it running and leaves it up for the checks afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import free_s3_port

SCRIBELINE = [sys.executable, "-m", "scribeline.cli"]
MEDIA = ["fr_smartphone_chronicle.mp3", "en_jfk.flac", "en_timit_ldc93s1.wav"]
STOP_WITHIN_S = 10.0


@pytest.fixture
def run_env(tmp_path):
    from scribeline import services
    from scribeline.config import Settings

    env = dict(os.environ)
    for k in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL"):
        env.pop(k, None)  # the command keeps Prefect's state under its own data directory
    env.update(SCRIBELINE_DATA_DIR=str(tmp_path / "data"), SCRIBELINE_EMBEDDED_S3_PORT=str(free_s3_port()))
    settings = Settings.from_env(env)
    svc = services.start_s3(settings)
    yield env, settings
    services.stop(svc)


class Run:
    """`scribeline run` in a session of its own (a signal to its group reaches only it and its children)."""

    def __init__(self, env: dict, paths: list[str]):
        self.proc = subprocess.Popen([*SCRIBELINE, "run", *paths], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                for line in self.lines:
                    if m := re.search(pattern, line):
                        return m
                assert self.proc.poll() is None, f"the run ended before {pattern!r}:\n{self.output[-3000:]}"
                assert time.monotonic() < deadline, f"no {pattern!r} within {timeout} s:\n{self.output[-3000:]}"
                self._new_line.wait(1.0)

    def stopped_within(self, since: float, timeout: float = 120) -> tuple[int, float]:
        """Exit status and seconds from ``since`` until the process ended."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"still running {timeout} s after the stop:\n{self.output[-3000:]}")
        return rc, time.monotonic() - since

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def start_run(run_env, media_dir):
    env, _ = run_env
    runs = []

    def start(extra_env: dict | None = None) -> Run:
        runs.append(Run({**env, **(extra_env or {})}, [str(media_dir / name) for name in MEDIA]))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()


def assert_nothing_finished(settings) -> None:
    """Every object still waiting, no row in the warehouse, no quarantine record, nothing archived."""
    from scribeline import storage, warehouse

    assert storage.list_keys(settings, settings.bucket_incoming) == sorted(MEDIA)
    assert storage.list_keys(settings, settings.bucket_quarantine) == []
    assert storage.list_keys(settings, settings.bucket_processed) == []
    if settings.warehouse.exists():
        assert set(warehouse.row_counts(settings.warehouse).values()) == {0}


def test_sigterm_during_transcription_stops_the_run_within_10_s(run_env, start_run):
    _, settings = run_env
    run = start_run()
    run.wait_for(r"normalize\+segment: 3 media")  # the transcribe wave is submitted next
    time.sleep(2.0)  # the model is decoding
    signalled = time.monotonic()
    run.proc.send_signal(signal.SIGTERM)
    rc, took = run.stopped_within(signalled)
    assert rc == 143, run.output[-3000:]
    assert took <= STOP_WITHIN_S, f"{took:.1f} s:\n{run.output[-3000:]}"
    assert "stopped (SIGTERM)" in run.output and "still in the incoming bucket" in run.output
    assert "Stopped" in run.output  # the transcribe tasks ended by the stop, not by finishing
    assert_nothing_finished(settings)


def test_ctrl_c_before_transcription_starts_none(run_env, start_run):
    # A terminal's Ctrl-C reaches the whole process group (ffmpeg, the redaction process, ...),
    # not only the command. Sent while the media are decoded and segmented: no transcription starts.
    _, settings = run_env
    run = start_run()
    run.wait_for(r"ingest: 3 media")
    signalled = time.monotonic()
    os.killpg(run.proc.pid, signal.SIGINT)
    rc, took = run.stopped_within(signalled)
    assert rc == 130, run.output[-3000:]
    assert took <= STOP_WITHIN_S, f"{took:.1f} s:\n{run.output[-3000:]}"
    assert "stopped (SIGINT)" in run.output
    assert "Task run 'transcribe" not in run.output and "quarantined" not in run.output
    assert_nothing_finished(settings)


def test_a_flow_run_cancelled_from_the_api_stops_the_run(run_env, start_run, prefect_api):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Cancelling

    _, settings = run_env
    run = start_run({"PREFECT_API_URL": PREFECT_API_URL.value()})  # the test's API, which it can cancel through
    name = run.wait_for(r"Beginning flow run '([^']+)'").group(1)
    run.wait_for(r"ingest: 3 media")  # the model is loaded; the media are decoded next
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))[0]
        cancelled = time.monotonic()
        client.set_flow_run_state(flow_run.id, Cancelling(message="cancelled by the test"))
        rc, took = run.stopped_within(cancelled)
        final = client.read_flow_run(flow_run.id).state
    assert rc == 143, run.output[-3000:]
    assert took <= STOP_WITHIN_S, f"{took:.1f} s:\n{run.output[-3000:]}"
    assert "the flow run was cancelled" in run.output
    assert final.is_cancelled() or final.is_cancelling(), final
    assert_nothing_finished(settings)


def test_cancelling_one_hosted_run_leaves_its_neighbours_running():
    """A warm worker hosts several media's runs in one process, each in a stop scope of its own
    (scribeline.warm_worker): one run's cancellation stops its own stages, never a neighbour's;
    a signal to the worker stops them all."""
    from scribeline import stopping

    stopping.reset()
    seen: dict[str, list] = {}
    go = threading.Event()

    def hosted(name: str, cancel: bool) -> None:
        with stopping.scope():
            target = stopping.current()  # what the run's cancellation watcher thread is given
            if cancel:
                watcher = threading.Thread(target=target.request, args=("cancelled",))
                watcher.start()
                watcher.join(5)
            go.wait(5)
            seen[name] = [stopping.requested(), stopping.reason()]
            try:
                stopping.check()
                seen[name].append("went on")
            except stopping.Stopped as exc:
                seen[name].append(f"stopped: {exc}")

    threads = [threading.Thread(target=hosted, args=("a", True)), threading.Thread(target=hosted, args=("b", False))]
    for t in threads:
        t.start()
    time.sleep(0.2)
    go.set()
    for t in threads:
        t.join(10)
    assert seen == {"a": [True, "cancelled", "stopped: cancelled"], "b": [False, "", "went on"]}
    assert not stopping.requested()  # nothing outside the runs was asked to stop

    try:
        stopping.request_process("SIGTERM")
        with stopping.scope():
            assert stopping.requested() and stopping.reason() == "SIGTERM"
    finally:
        stopping.reset()
