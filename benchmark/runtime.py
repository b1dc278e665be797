"""The production runtime's figures: end-to-end latency of one short file through warm deployments,
and throughput with one and with two warm workers serving the GPU pool, against `scribeline run`.

Starts its own stack (`scribeline up`: S3, Prefect server, the warm worker serving both pools) in
a temporary data directory, on free ports:

    .venv/bin/python -m benchmark.runtime [--files N] [--out benchmark/results-runtime.json]

Files: the realistic corpus's English recordings under a minute where fetched (noisy, telephony,
multi-speaker; see corpus.tsv), else transcodings of ../shared/media. Latency: a file is uploaded
and a sweep started at once by one API call (the schedule would add up to its period); measured from the upload to the file's ledger row, for three short recordings
(distinct content: nothing cached). Throughput: N files made distinct by transcoding the shared
recordings, all uploaded, one sweep; measured to the last ledger row, with one warm worker,
then (fresh data directory) with a second one started beside it. The one-shot `scribeline run`
on the same files, services up, is the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT.parent / "shared" / "media"
SHORT = ["en_harvard_birch_canoe.wav", "en_timit_ldc93s1.wav", "en_ls_1272-128104-0000.wav"]
SOURCES = ["en_harvard_birch_canoe.wav", "en_timit_ldc93s1.wav", "en_ls_1272-128104-0000.wav", "en_jfk.flac",
           "en_stereo_overlap_2spk.wav"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _s3_port() -> int:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import free_s3_port

    return free_s3_port()


class Stack:
    def __init__(self, data: Path):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SCRIBELINE_"))}
        self.env.update(SCRIBELINE_DATA_DIR=str(data), SCRIBELINE_EMBEDDED_S3_PORT=str(_s3_port()),
                        SCRIBELINE_PREFECT_PORT=str(_port()), SCRIBELINE_DEVICE="cpu", DO_NOT_TRACK="1",
                        PREFECT_SERVER_ANALYTICS_ENABLED="false", TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="",
                        SCRIBELINE_MAX_RUNS_IN_FLIGHT="200")
        model = ROOT.parent / "shared" / "models" / "tiny.en.pt"
        self.env["SCRIBELINE_MODEL"] = str(model) if model.exists() else "tiny.en"
        self.data = data
        self.started = time.perf_counter()
        self.cli("up")
        self.up_s = time.perf_counter() - self.started
        self.env.update(PREFECT_API_URL=f"http://127.0.0.1:{self.env['SCRIBELINE_PREFECT_PORT']}/api",
                        PREFECT_HOME=str(data / "prefect"))
        self.extra: list[subprocess.Popen] = []

    def cli(self, *args) -> str:
        r = subprocess.run([sys.executable, "-m", "scribeline.cli", *args], env=self.env, cwd=ROOT, capture_output=True,
                           text=True, timeout=900)
        if r.returncode:
            raise RuntimeError(f"scribeline {' '.join(args)}: {r.stderr[-2000:]}")
        return r.stdout

    def wait_warm(self, timeout=300) -> None:
        log = self.data / "run" / "worker.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and "scribeline worker: serving" in log.read_text():
                return
            time.sleep(0.5)
        raise RuntimeError("the worker did not start")

    def second_worker(self) -> None:
        log = open(self.data / "run" / "worker2.log", "ab")
        self.extra.append(subprocess.Popen([sys.executable, "-m", "scribeline.cli", "worker", "--once", "--pool",
                                            "scribeline-gpu"],
                                           env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 300
        while b"scribeline worker: serving" not in (self.data / "run" / "worker2.log").read_bytes():
            if time.monotonic() > deadline:
                raise RuntimeError("second worker did not start")
            time.sleep(0.5)

    def upload(self, files: dict[str, Path]) -> None:
        from minio import Minio

        creds = json.loads((self.data / "s3-credentials.json").read_text())
        c = Minio(f"127.0.0.1:{self.env['SCRIBELINE_EMBEDDED_S3_PORT']}", access_key=creds["access_key"],
                  secret_key=creds["secret_key"], secure=False)
        for key, path in files.items():
            c.fput_object("scribeline-incoming", key, str(path))

    def sweep(self) -> None:
        """A sweep now, as the UI's Run button starts one: one API call (a `prefect deployment run`
        process would put its own start-up into the latency)."""
        sys.path.insert(0, str(ROOT))
        from tests.conftest import start_sweep

        if not start_sweep(self.env["PREFECT_API_URL"]):
            raise RuntimeError("the sweep could not be started")

    def ledger_keys(self) -> set[str]:
        """Read as an analyst does, while the workers load (DuckLake: readers never block writers)."""
        from scribeline import warehouse
        from scribeline.config import Settings

        settings = Settings.from_env(self.env)
        if not settings.warehouse.exists():
            return set()
        try:
            return set(warehouse.query(settings.warehouse, "SELECT key FROM ledger")["key"])
        except Exception:  # noqa: BLE001 - the catalog may not have its tables yet
            return set()

    def wait_for(self, keys: set[str], timeout=1800) -> float:
        start = time.perf_counter()
        while not keys <= self.ledger_keys():
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"not done: {sorted(keys - self.ledger_keys())[:5]}")
            time.sleep(0.5)
        return time.perf_counter()

    def down(self) -> None:
        for p in self.extra:
            p.terminate()
            p.wait(30)
        self.cli("down")


CORPUS = Path(__file__).resolve().parent / ".corpus"


def distinct_files(n: int, tmp: Path) -> dict[str, Path]:
    """n files of distinct content, so nothing is cached: the realistic corpus's English recordings
    under a minute (benchmark/fetch_corpus.py) where fetched, else transcodings of the shared ones."""
    english = sorted(p for p in CORPUS.glob("en_*") if p.suffix != ".opus" and "apollo" not in p.name) if CORPUS.exists() else []
    if len(english) >= n:
        return {f"bench/{p.name}": p for p in english[:n]}
    out = {}
    codecs = [("flac", ["-c:a", "flac"]), ("ogg", ["-c:a", "libopus", "-b:a", "32k"]), ("mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]),
              ("m4a", ["-c:a", "aac", "-b:a", "64k"]), ("wav", ["-ar", "22050"])]
    i = 0
    while len(out) < n:
        src = MEDIA / SOURCES[i % len(SOURCES)]
        ext, args = codecs[(i // len(SOURCES)) % len(codecs)]
        dest = tmp / f"{i:03d}-{src.stem}.{ext}"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), *args, str(dest)], check=True)
        out[f"bench/{dest.name}"] = dest
        i += 1
    return out


def throughput(files: dict[str, Path], workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="scribeline-bench-") as d:
        stack = Stack(Path(d))
        try:
            stack.wait_warm()
            if workers == 2:
                stack.second_worker()
            start = time.perf_counter()
            stack.upload(files)
            stack.sweep()
            end = stack.wait_for(set(files))
            return {"workers": workers, "files": len(files), "seconds": round(end - start, 1),
                    "media_s_per_s": None}
        finally:
            stack.down()


def one_shot(files: dict[str, Path]) -> float:
    with tempfile.TemporaryDirectory(prefix="scribeline-bench-") as d:
        stack = Stack(Path(d))
        try:
            stack.cli("down")  # only S3 and the Prefect server for the one-shot run, as `run` users have them
            stack.cli("up", "--no-workers")
            stack.upload(files)
            start = time.perf_counter()
            stack.cli("run")
            return round(time.perf_counter() - start, 1)
        finally:
            stack.down()


def latency() -> dict:
    with tempfile.TemporaryDirectory(prefix="scribeline-bench-") as d:
        stack = Stack(Path(d))
        try:
            stack.wait_warm()
            times = []
            for name in SHORT:
                start = time.perf_counter()
                stack.upload({f"latency/{name}": MEDIA / name})
                stack.sweep()
                times.append(stack.wait_for({f"latency/{name}"}) - start)
            return {"up_s": round(stack.up_s, 1), "seconds": [round(t, 1) for t in times],
                    "median_s": round(statistics.median(times), 1)}
        finally:
            stack.down()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=20)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = distinct_files(args.files, Path(tmp))
        media_s = sum(float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                            str(f)], capture_output=True, text=True).stdout) for f in files.values())
        result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                  "load_before": os.getloadavg()[0], "media_s": round(media_s, 1), "latency": latency(),
                  "one_shot_run_s": one_shot(files), "throughput": [throughput(files, 1), throughput(files, 2)]}
    for t in result["throughput"]:
        t["media_s_per_s"] = round(media_s / t["seconds"], 2)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
