"""The user's journey, as a new user would try it: the scribeline command on a fresh data directory.

Nothing is started beforehand: `run` starts the embedded S3 server itself and
uses Prefect's ephemeral API.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_s3_port, manifest, wer

SCRIBELINE = [sys.executable, "-m", "scribeline.cli"]
TEST_MODEL = os.environ["SCRIBELINE_MODEL"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data = tmp_path_factory.mktemp("cli-data")
    e = dict(os.environ)
    for k in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL"):
        e.pop(k, None)  # the command keeps Prefect's state under its own data directory
    e.update(SCRIBELINE_DATA_DIR=str(data), SCRIBELINE_EMBEDDED_S3_PORT=str(free_s3_port()))
    return e


def scribeline(env, *args, timeout=600):
    return subprocess.run([*SCRIBELINE, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def first_run(env, media_dir, tmp_path_factory):
    bad = tmp_path_factory.mktemp("bad") / "holiday.mp3"
    bad.write_text("Dear diary, this is plain text.\n")
    result = scribeline(env, "run", str(media_dir / "en_jfk.flac"), str(bad))
    return result


def test_run_exits_0_and_prints_the_outcome_table(first_run):
    assert first_run.returncode == 0, first_run.stderr[-3000:]
    out = first_run.stdout
    assert "en_jfk.flac" in out and "processed" in out
    line = next(l for l in out.splitlines() if "holiday.mp3" in l and "uploaded" not in l)
    assert "quarantined" in line and "not a media file" in line


def test_query_shows_the_jfk_sentence(env, first_run):
    result = scribeline(env, "query", "select text from transcripts", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == 1
    assert wer(manifest()["en_jfk.flac"]["reference_text"], rows[0]["text"]) <= 0.10


def test_running_the_same_command_again_adds_no_rows(env, media_dir, first_run):
    count = "select (select count(*) from media) + (select count(*) from segments) + (select count(*) from words) as n"
    before = json.loads(scribeline(env, "query", count, "--json").stdout)[0]["n"]
    again = scribeline(env, "run", str(media_dir / "en_jfk.flac"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing added" in again.stdout
    assert json.loads(scribeline(env, "query", count, "--json").stdout)[0]["n"] == before


def test_export_writes_subtitles(env, first_run):
    media_id = json.loads(scribeline(env, "query", "select media_id from media", "--json").stdout)[0]["media_id"]
    srt = scribeline(env, "export", media_id[:12], "--format", "srt")
    assert srt.returncode == 0, srt.stderr
    assert srt.stdout.startswith("1\n00:00:0") and "-->" in srt.stdout and "country" in srt.stdout
    vtt = scribeline(env, "export", media_id, "-f", "vtt")
    assert vtt.stdout.startswith("WEBVTT")


def test_query_errors_are_clear(env, first_run):
    result = scribeline(env, "query", "select * from no_such_table")
    assert result.returncode != 0 and "no_such_table" in result.stderr


def test_up_is_idempotent_and_down_stops_everything(env):
    up = scribeline(env, "up", "--no-prefect")
    assert up.returncode == 0, up.stderr
    assert "S3 (SeaweedFS)" in up.stdout
    pid_file = Path(env["SCRIBELINE_DATA_DIR"]) / "run" / "s3.pid"
    pid = pid_file.read_text()
    again = scribeline(env, "up", "--no-prefect")
    assert again.returncode == 0 and pid_file.read_text() == pid
    down = scribeline(env, "down")
    assert "s3: stopped" in down.stdout
    assert "s3: was not running" in scribeline(env, "down").stdout


def test_a_model_that_cannot_load_fails_the_run_and_keeps_the_media(tmp_path, media_dir):
    data = tmp_path / "data"
    e = dict(os.environ)
    for k in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL"):
        e.pop(k, None)
    e.update(SCRIBELINE_DATA_DIR=str(data), SCRIBELINE_EMBEDDED_S3_PORT=str(free_s3_port()),
             SCRIBELINE_MODEL=str(tmp_path / "missing-checkpoint.pt"))
    result = scribeline(e, "run", str(media_dir / "en_timit_ldc93s1.wav"))
    assert result.returncode == 1
    assert "run failed" in result.stderr and "missing-checkpoint.pt" in result.stderr
    e["SCRIBELINE_MODEL"] = TEST_MODEL
    waiting = scribeline(e, "submit", str(media_dir / "en_harvard_birch_canoe.wav"))
    assert waiting.returncode == 0
    done = scribeline(e, "run")  # the first file was kept in incoming and is processed now
    assert done.returncode == 0 and "en_timit_ldc93s1.wav" in done.stdout and "processed" in done.stdout


def test_the_embedded_s3_server_yields_the_cores_to_transcription(s3):
    # It shares the worker's cores: at the lowest priority, its wake-ups do not stall the
    # model's threads (measured in benchmark/: the transcribe wave ~1 s faster on 2 cores).
    from scribeline import services

    pid = services.s3_service(s3).pid()
    assert pid is not None
    threads = list(Path(f"/proc/{pid}/task").iterdir())
    nice = [int(Path(t, "stat").read_text().rsplit(")", 1)[1].split()[16]) for t in threads]
    assert nice and all(n == 19 for n in nice), nice
    assert "GOMAXPROCS=1" in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
