"""Shared fixtures: real components only (S3 server process, Prefect API, ffmpeg, whisper weights).

The environment is fixed here, before anything imports Prefect, so every test
runs against a data directory of its own and never phones home.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MEDIA = SHARED / "media"
MODELS = SHARED / "models"

_DATA = Path(tempfile.mkdtemp(prefix="scribeline-tests-"))


def _ports_free(base: int) -> bool:
    from scribeline.services import s3_ports

    for port in s3_ports(8333 + base, grpc=True):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


def free_s3_port() -> int:
    """An S3 port whose derived SeaweedFS ports are all free (see services.start_s3)."""
    for _ in range(50):
        # Every derived port below 32768, where the kernel picks the local ports of outgoing
        # connections (ip_local_port_range): an admin port at 23646 + base once lost that race.
        base = random.randrange(1000, 9100, 7)
        if _ports_free(base):
            return 8333 + base
    raise RuntimeError("no free port range for the test S3 server")


def start_sweep(api_url: str, patience_s: float = 90.0) -> bool:
    """Start the sweep deployment now (a worker of the CPU pool runs it), as an operator's button in the
    UI would: one API call. A 503 (the SQLite-backed server busy: "database is locked") is asked again,
    as Prefect's own clients do, for ``patience_s``; then, or on any other failure, False (reported)."""
    import json
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + patience_s
    while True:
        try:
            deployment = json.loads(urllib.request.urlopen(f"{api_url}/deployments/name/scribeline-sweep/sweep",
                                                           timeout=120).read())
            urllib.request.urlopen(urllib.request.Request(
                f"{api_url}/deployments/{deployment['id']}/create_flow_run", data=b"{}",
                headers={"Content-Type": "application/json"}), timeout=120).read()
            return True
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                print(f"sweep request not answered: {exc!r}")
                return False
            time.sleep(1 + random.random())
        except OSError as exc:  # URLError and timeouts
            print(f"sweep request not answered: {exc!r}")
            return False


TEST_ENV = {
    "SCRIBELINE_DATA_DIR": str(_DATA / "data"),
    "SCRIBELINE_EMBEDDED_S3_PORT": str(free_s3_port()),
    "SCRIBELINE_DEVICE": "cpu",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_HOME": str(_DATA / "prefect"),
    "PREFECT_LOCAL_STORAGE_PATH": str(_DATA / "prefect" / "results"),
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
    "GX_ANALYTICS_ENABLED": "false",
    "TQDM_DISABLE": "1",
}
if (MODELS / "tiny.en.pt").exists():
    TEST_ENV["SCRIBELINE_MODEL"] = str(MODELS / "tiny.en.pt")
else:  # elsewhere whisper downloads the weights by name
    TEST_ENV["SCRIBELINE_MODEL"] = "tiny.en"
os.environ.update(TEST_ENV)
os.environ.pop("PREFECT_API_URL", None)
for key in [k for k in os.environ if k.startswith("SCRIBELINE_") and k not in TEST_ENV]:
    os.environ.pop(key)


def manifest() -> dict[str, dict]:
    with open(MEDIA / "manifest.tsv", encoding="utf-8") as fh:
        return {row["file"]: row for row in csv.DictReader(fh, delimiter="\t")}


EXACT_ENGLISH = ["en_jfk.flac", "en_ls_1272-128104-0000.wav", "en_timit_ldc93s1.wav", "en_harvard_birch_canoe.wav"]


def wer(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    return jiwer.wer(norm(reference), norm(hypothesis))


@pytest.fixture(scope="session")
def media_dir() -> Path:
    if not MEDIA.exists():
        pytest.skip("../shared/media is not beside the checkout")
    return MEDIA


@pytest.fixture(scope="session")
def settings():
    from scribeline.config import Settings

    return Settings.from_env()


@pytest.fixture(scope="session")
def s3(settings):
    """A real SeaweedFS S3 server over HTTP on loopback, for the whole session."""
    from scribeline import services

    svc = services.start_s3(settings)
    yield settings
    services.stop(svc)


@pytest.fixture(scope="session")
def prefect_api():
    """A real temporary Prefect API (about 9 s to start): once per session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def transcriber(settings):
    from scribeline import stages

    return stages.transcriber(settings)


def niceness(pid: int) -> list[int]:
    """The niceness of each thread of a running process (Linux keeps it per thread)."""
    return [int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]) for task in Path(f"/proc/{pid}/task").iterdir()]


def speak(text: str, path: Path, speed: int = 150) -> Path:
    subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(path), text], check=True, capture_output=True)
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def load_verdict(settings, transcript, duration_s: float, path: Path, media_id: str = "m"):
    """A transcript through validate, the warehouse rows and a load into the DuckDB file ``path``:
    its ``media`` row and its ``quality_checks`` rows."""
    from scribeline import stages, warehouse

    checks = stages.validate(settings, transcript.as_dict(), duration_s)
    ingested = dict(run_key=media_id, bucket="incoming", key=f"{media_id}.wav", etag="e", size=1, sha256="0" * 64)
    segmented = dict(info=dict(container="wav", codec="pcm_s16le", sample_rate=16000, channels=1, bit_rate=256000),
                     duration_s=duration_s, tracks=[dict(gain_db=0.0)])
    row, tables = stages.warehouse_rows(settings, ingested, segmented, dict(transcript=transcript.as_dict(), entities=[]),
                                        checks, 1.0)
    assert warehouse.load(path, row, tables)
    media = warehouse.query(path, f"select * from media where media_id = '{media_id}'").iloc[0]
    quality = warehouse.query(path, f"select * from quality_checks where media_id = '{media_id}' order by check_index")
    return media, quality


def transcript_of(*sentences: str):
    """A transcript of these sentences, one segment each, its words 0.4 s apart (redaction tests)."""
    from scribeline.transcription import Segment, Transcript, Word

    segments, t = [], 0.0
    for text in sentences:
        words = []
        for token in text.split(" "):
            words.append(Word(round(t, 2), round(t + 0.3, 2), " " + token, 0.9))
            t += 0.4
        segments.append(Segment(words[0].start, words[-1].end, text, 0, -0.2, 0.01, 1.3, 0.0, words))
    return Transcript("en", 1.0, segments)


@contextlib.contextmanager
def own_buckets(prefix: str, tmp: Path, **settings: str):
    """The Settings of buckets (on the session's S3 server, created here) and a warehouse of a test's own,
    with the given settings (``audio_redaction="beep"`` -> ``SCRIBELINE_AUDIO_REDACTION=beep``), set in the
    environment until the block ends, so flows and `scribeline` commands started inside it see them too."""
    from scribeline import storage
    from scribeline.config import Settings

    env = {f"SCRIBELINE_BUCKET_{b.upper()}": f"{prefix}-{b.replace('_', '-')}"
           for b in ("incoming", "normalized", "processed", "quarantine", "redacted_audio", "restricted")}
    env["SCRIBELINE_WAREHOUSE_PATH"] = str(tmp / "lake.sqlite")
    env.update({f"SCRIBELINE_{k.upper()}": v for k, v in settings.items()})
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        own = Settings.from_env()
        storage.ensure_buckets(own)
        yield own
