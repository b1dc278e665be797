"""The production runtime on real processes: `scribeline up` (S3 server, Prefect server, the warm worker
serving both pools), the scheduled sweep's per-media runs, and exactly-once under faults."""

import html
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scribeline import artifacts, services, storage, warehouse
from scribeline.config import Settings
from tests.conftest import ROOT, free_s3_port, niceness, start_sweep


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env, *args, timeout=300, check=True):
    result = subprocess.run([sys.executable, "-m", "scribeline.cli", *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    assert not check or result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])
    return result


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("ops")
    env = dict(os.environ)
    for k in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL"):
        env.pop(k, None)
    env.update(SCRIBELINE_DATA_DIR=str(data), SCRIBELINE_EMBEDDED_S3_PORT=str(free_s3_port()),
               SCRIBELINE_PREFECT_PORT=str(_free_port()),
               # Faults are injected below: a run RUNNING for 4 minutes is taken for lost by the sweep
               # (a killed worker's runs are marked Crashed by its supervisor before that).
               SCRIBELINE_RUN_LEASE_S="240")
    up = cli(env, "up")
    env.update(PREFECT_API_URL=f"http://127.0.0.1:{env['SCRIBELINE_PREFECT_PORT']}/api", PREFECT_HOME=str(data / "prefect"))
    yield env, up.stdout, Settings.from_env(env)
    cli(env, "down", check=False)


def test_up_serves_the_prefect_ui_and_api(stack):
    env, stdout, _ = stack
    port = env["SCRIBELINE_PREFECT_PORT"]
    assert f"http://127.0.0.1:{port}" in stdout
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        assert "<html" in r.read().decode(errors="replace").lower()


def test_up_runs_both_servers_at_the_lowest_priority(stack):
    """Beside the model they take a core only when it is free (README: the pipeline's waves)."""
    env, _, _ = stack
    run_dir = Path(env["SCRIBELINE_DATA_DIR"]) / "run"
    for name in ("s3", "prefect"):
        threads = niceness(int((run_dir / f"{name}.pid").read_text()))
        assert threads and set(threads) == {19}, (name, threads)


def _api(env, path, body=None, timeout=30):
    req = urllib.request.Request(env["PREFECT_API_URL"] + path, data=json.dumps(body or {}).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=timeout).read())


def sweep(env) -> bool:
    """A sweep now, by one API call (conftest.start_sweep). On a loaded 2-core machine the server may answer
    late; then the schedule's next sweep (every minute) does the same work, so a late answer is reported,
    not fatal."""
    return start_sweep(env["PREFECT_API_URL"])


def ledger(settings):
    return warehouse.query(settings.warehouse, "SELECT * FROM ledger") if settings.warehouse.exists() else None


def wait_for(predicate, timeout: float, every: float = 2.0, on_wait=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if on_wait:
            on_wait()
        time.sleep(every)
    return False


def test_a_short_file_goes_through_the_deployments(stack, media_dir):
    env, _, settings = stack
    cli(env, "submit", str(media_dir / "en_harvard_birch_canoe.wav"))
    assert sweep(env)

    def done():
        rows = ledger(settings)
        return rows is not None and "en_harvard_birch_canoe.wav" in set(rows["key"])

    assert wait_for(done, 300), Path(env["SCRIBELINE_DATA_DIR"], "run", "worker.log").read_text()[-4000:]
    rows = json.loads(cli(env, "query", "select source_object, text from transcripts", "--json").stdout)
    assert [r["source_object"] for r in rows] == ["s3://scribeline-incoming/en_harvard_birch_canoe.wav"]
    assert "canoe" in rows[0]["text"].lower()
    runs = _api(env, "/flow_runs/filter")
    names = {r["name"]: r["state_type"] for r in runs if r["state_type"] == "COMPLETED"}
    assert "media-en_harvard_birch_canoe.wav" in names and any(n.startswith("sweep-") for n in names)
    # Both runs ran inside the warm worker process (its model stays loaded), not in a process of their own.
    worker_pid = int(Path(env["SCRIBELINE_DATA_DIR"], "run", "worker-process.pid").read_text())
    hosted = {r["name"]: r["infrastructure_pid"] for r in runs if r["state_type"] == "COMPLETED"}
    assert hosted["media-en_harvard_birch_canoe.wav"] == f"scribeline-warm:{socket.gethostname()}:{worker_pid}"
    assert {pid for name, pid in hosted.items() if name.startswith("sweep-")} == {hosted["media-en_harvard_birch_canoe.wav"]}
    status = json.loads(cli(env, "status").stdout)
    assert status["ledger"] == {"processed": 1} and status["workers_running"]


def _browse(url: str, *args: str) -> str:
    """A page of Prefect's UI (a single-page app) in headless Chromium, after its scripts ran."""
    result = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                             "--window-size=1400,1000", *args, url], capture_output=True, text=True, timeout=180)
    return result.stdout


def _text(dom: str) -> str:
    dom = re.sub(r"<(script|style|svg)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/setup.sh)")
def test_the_ui_shows_the_media_run_and_its_report(stack):
    """The run of test_a_short_file_goes_through_the_deployments as an operator sees it in Prefect's UI:
    its page (name, state, tags) and its report, rendered. Screenshots in test-output/."""
    env, _, _ = stack
    base = f"http://127.0.0.1:{env['SCRIBELINE_PREFECT_PORT']}"
    runs = [r for r in _api(env, "/flow_runs/filter")
            if r["name"] == "media-en_harvard_birch_canoe.wav" and r["state_type"] == "COMPLETED"]
    assert runs, "test_a_short_file_goes_through_the_deployments leaves the run this test looks at"
    run = runs[0]
    # The sweep tagged it at creation (source, extension); the run added what its stages found.
    assert {"scribeline", "attempt-1", "source:scribeline-incoming", "ext:wav", "codec:pcm_s16le", "lang:en"} <= set(run["tags"])
    (report,) = [a for a in _api(env, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}})
                 if a["type"] == "markdown"]
    assert report["key"] == artifacts.artifact_key("en_harvard_birch_canoe.wav")
    sweeps = _api(env, "/artifacts/filter", {"artifacts": {"key": {"any_": [artifacts.SWEEP_KEY]}}})
    assert any("s3://scribeline-incoming/en_harvard_birch_canoe.wav" in json.dumps(a["data"]) for a in sweeps)

    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    page = _text(_browse(f"{base}/runs/flow-run/{run['id']}", "--dump-dom"))
    assert "media-en_harvard_birch_canoe.wav" in page and "Completed" in page, page[:3000]
    assert "codec:pcm_s16le" in page and "lang:en" in page and "Artifacts" in page
    words = re.search(r"\| Words \| (\d+) \|", report["data"]).group(1)
    shown = _text(_browse(f"{base}/artifacts/artifact/{report['id']}", "--dump-dom"))
    # The markdown rendered (a table, not its pipes): the facts, the verdict and the stage timings.
    assert "Words " + words in shown and "Language en" in shown and "Outcome processed" in shown, shown[:3000]
    assert "Quality" in shown and "needs_review" in shown and "Stage timings" in shown and "| Words |" not in shown
    assert "media-en_harvard_birch_canoe.wav" in shown  # the side panel's flow run
    # (?tab=Artifacts on a run's page does not stick on a fresh load: the UI hides that tab until the
    # run's state has loaded and falls back to Logs. The artifact's own page is the one to link.)
    for name, url in (("ui-flow-run.png", f"{base}/runs/flow-run/{run['id']}"),
                      ("ui-media-report.png", f"{base}/artifacts/artifact/{report['id']}")):
        (out / name).unlink(missing_ok=True)
        _browse(url, f"--screenshot={out / name}")
        assert (out / name).stat().st_size > 20_000, name



# --------------------------------------------------------------- faults
ANALYST = """
import sys, time, pathlib
from scribeline import warehouse
lake, errors, stop = warehouse.Lake.of(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
con = warehouse.connect(lake, read_only=True)  # an analyst's session, held open throughout
con.execute("SET enable_progress_bar = false")  # (a slow query would draw one on stdout, where the count goes)
polls = 0
while not stop.exists():
    try:
        con.execute("SELECT state, count(*) FROM ledger GROUP BY state").fetchall()
        con.execute("SELECT media_id, length(text) FROM transcripts").fetchall()
        polls += 1
    except Exception as exc:
        with open(errors, "a") as fh:
            fh.write(f"{type(exc).__name__}: {exc}\\n")
    time.sleep(0.5)
print(polls)
"""


def _objects(media_dir: Path, tmp: Path) -> tuple[dict[str, Path], set[str]]:
    """50 objects: 12 distinct recordings, 28 copies of them under other names, 10 malformed."""
    sources = ["en_harvard_birch_canoe.wav", "en_timit_ldc93s1.wav", "en_ls_1272-128104-0000.wav", "en_jfk.flac",
               "de_leopard_test.wav", "en_stereo_overlap_2spk.wav"]
    distinct = []
    for name in sources:
        distinct.append(media_dir / name)
        other = tmp / (Path(name).stem + ".ogg")  # the same speech, other bytes
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(media_dir / name), "-c:a", "libopus", "-b:a", "24k",
                        str(other)], check=True)
        distinct.append(other)
    objects = {f"distinct/{i:02d}-{p.name}": p for i, p in enumerate(distinct)}
    rng = random.Random(7)
    for i in range(28):
        p = rng.choice(distinct)
        objects[f"copies/{i:02d} copy of {p.name}"] = p
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "truncated.flac").write_bytes((media_dir / "en_jfk.flac").read_bytes()[:3000])
    (bad / "notes.mp3").write_text("these are meeting notes, not audio\n" * 20)
    (bad / "random.m4a").write_bytes(random.Random(3).randbytes(40_000))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=blue:s=64x64:d=2", "-an",
                    str(bad / "silent_video.mp4")], check=True)
    malformed = set()
    for p in sorted(bad.iterdir()):
        for where in ("uploads", "again"):  # each malformed content twice, under two names
            key = f"{where}/{p.name}"
            objects[key] = p
            malformed.add(key)
    assert len(objects) == 50
    return objects, malformed


def test_every_object_ends_exactly_once_through_faults(stack, media_dir, tmp_path):
    """50 objects through the deployments while the warm worker is SIGKILLed mid-run, the S3 server
    is down for 30 s and two sweeps start at once; an analyst polls the warehouse all along."""
    env, _, settings = stack
    objects, malformed = _objects(media_dir, tmp_path)
    before = ledger(settings)
    done_before = 0 if before is None else len(before)
    for key, path in objects.items():
        storage.upload_file(settings, path, key=key)
    errors, stop = tmp_path / "analyst-errors.txt", tmp_path / "stop"
    analyst = subprocess.Popen([sys.executable, "-c", ANALYST, str(settings.warehouse.catalog_file), str(errors), str(stop)],
                               env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        with ThreadPoolExecutor(2) as pool:  # two sweeps at once
            assert any(pool.map(lambda _: sweep(env), range(2)))
        # Kill the warm worker (the process that holds the model and hosts the runs) once media are in
        # transcription; its supervisor marks its runs Crashed and starts it again.
        run_dir = Path(env["SCRIBELINE_DATA_DIR"]) / "run"
        log_before = (run_dir / "worker.log").read_text().count("Task run 'transcribe")
        assert wait_for(lambda: (run_dir / "worker.log").read_text().count("Task run 'transcribe") > log_before, 300, 0.5)
        killed = int((run_dir / "worker-process.pid").read_text())
        os.kill(killed, signal.SIGKILL)  # its supervisor (`scribeline worker`) starts it again
        assert wait_for(lambda: int((run_dir / "worker-process.pid").read_text()) != killed, 60, 0.5)
        # The runs it hosted are Crashed at once (not after the run lease): their objects' next attempt.
        # (Marked beside the restart by the supervisor's API calls: waited for, as a busy API delays them.)
        def marked():
            return re.findall(r"(\d+) flow run\(s\) of the ended worker marked Crashed", (run_dir / "worker.log").read_text())

        assert wait_for(marked, 120, 0.5) and int(marked()[-1]) >= 1, (run_dir / "worker.log").read_text()[-3000:]
        # The S3 server goes away for 30 s.
        services.stop(services.s3_service(settings))
        time.sleep(30)
        cli(env, "up")
        ticks = {"n": 0}

        def resweep():
            ticks["n"] += 1
            if ticks["n"] % 6 == 0:  # the schedule does this every minute; here every 30 s
                sweep(env)

        def all_ended():
            rows = ledger(settings)
            return rows is not None and len(rows) - done_before >= len(objects) and not storage.list_waiting(settings)

        ended = wait_for(all_ended, 1200, every=5.0, on_wait=resweep)
    finally:
        stop.touch()
        printed = analyst.communicate(timeout=60)[0].strip().splitlines()
        polls = int(printed[-1]) if printed and printed[-1].isdigit() else 0
    log = (Path(env["SCRIBELINE_DATA_DIR"]) / "run" / "worker.log").read_text()
    assert ended, log[-5000:]

    # Objects in = terminal states out: one ledger row per object version, nothing left waiting.
    rows = ledger(settings)
    rows = rows[rows["key"].isin(objects)]
    assert sorted(rows["key"]) == sorted(objects)
    assert set(rows["state"]) <= {"processed", "needs_review", "quarantined"}
    quarantined = set(rows.loc[rows["state"] == "quarantined", "key"])
    assert quarantined == malformed, (quarantined ^ malformed, rows[rows["key"].isin(quarantined ^ malformed)].to_dict("records"))
    # The same content under several names was transcribed once: one media per distinct content.
    good = rows[rows["state"] != "quarantined"]
    assert good["media_id"].nunique() == 12 and good["sha256"].nunique() == 12
    # Zero duplicates in any table, and no half-loaded media.
    keys = {"media": "media_id", "segments": "media_id, segment_index", "words": "media_id, segment_index, word_index",
            "pii_entities": "media_id, entity_index", "quality_checks": "media_id, check_index",
            "transcript_flags": "media_id, flag_index", "quarantine": "quarantine_key", "ledger": "bucket, key, etag"}
    for table, key in keys.items():
        dupes = warehouse.query(settings.warehouse, f"SELECT {key}, count(*) n FROM {table} GROUP BY ALL HAVING n > 1")
        assert dupes.empty, (table, dupes.head().to_dict("records"))
    half = warehouse.query(settings.warehouse, "SELECT m.media_id FROM media m LEFT JOIN segments s USING (media_id) "
                                               "GROUP BY m.media_id, m.segment_count HAVING count(s.media_id) <> m.segment_count")
    assert half.empty
    # Every quarantine record is readable; the same bad bytes under two names are one record.
    records = {k for k in rows.loc[rows["state"] == "quarantined", "quarantine_key"]}
    assert len(records) == 5
    for record_key in records:
        record = storage.get_json(settings, settings.bucket_quarantine, record_key)
        assert record["stage"] and record["error"] and record["source_key"] in malformed
    # The analyst never saw an error.
    assert polls > 20 and not errors.exists(), errors.read_text()[:2000] if errors.exists() else polls
    # Runs that waited for a slot of the GPU pool stayed Scheduled, none marked Late: on the SQLite-
    # backed server those markings, one transaction per waiting run, locked the database and stalled.
    assert _api(env, "/flow_runs/count", {"flow_runs": {"state": {"name": {"any_": ["Late"]}}}}) == 0
