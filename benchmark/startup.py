"""Cold start-up benchmark: one short file through ``scribeline run`` with nothing started.

    .venv/bin/python -m benchmark.startup [--repeat 5] [--file ../shared/media/en_jfk.flac]
                                          [--no-template] [--tree DIR] [--json OUT]
    .venv/bin/python -m benchmark.startup --floor

Each round runs ``python -m scribeline.cli run FILE`` in a fresh process with a fresh
data directory (``SCRIBELINE_DATA_DIR`` in /tmp): no ``scribeline up``, so the command
starts the embedded S3 server and Prefect's ephemeral API itself, loads the model and
the engines, runs the flow and stops what it started. What stays warm between rounds
is what a machine keeps: Python's bytecode caches, the OS file cache, and the empty
migrated Prefect database kept in the user's cache directory (``--no-template`` gives
every round an empty cache directory: the first run on a machine).

Prints each round's wall time (from the start of the process to its exit), the CPU
time of the command and everything it started (reaped children included: the S3
server, Prefect's API, the Presidio analyzer), the machine's load average before the
round, and the median; then the median start and end of each step of the command's
timeline (``SCRIBELINE_STARTUP_TIMELINE``, seconds since the process started).
``--tree DIR`` runs another checkout's ``scribeline`` with this one's environment (the
version before a change: it writes no timeline, only wall and CPU times). ``--floor``
measures only what a cold run must load (Prefect, torch and the model, Great
Expectations, Presidio, Prefect's API), each alone in a fresh process: the sum of their
CPU times over the cores is the least wall time a cold run can take on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scribeline import services
from scribeline.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = ROOT.parent / "shared" / "media" / "en_jfk.flac"


def one_round(file: Path, tree: Path, no_template: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="scribeline-startup-") as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, SCRIBELINE_DATA_DIR=str(tmp / "data"), SCRIBELINE_STARTUP_TIMELINE=str(tmp / "timeline.json"))
        for k in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH"):
            env.pop(k, None)  # the command keeps Prefect's state under its data directory
        model = ROOT.parent / "shared" / "models" / "tiny.en.pt"
        if model.exists():  # what the checkout's default finds (a --tree elsewhere would download it)
            env.setdefault("SCRIBELINE_MODEL", str(model))
        if no_template:
            env["XDG_CACHE_HOME"] = str(tmp / "cache")
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "scribeline.cli", "run", str(file)], cwd=tree, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0 or "processed" not in out:
            raise SystemExit(f"scribeline run failed (status {status}):\n{out[-3000:]}")
        timeline = tmp / "timeline.json"
        spans = json.loads(timeline.read_text())["spans"] if timeline.exists() else {}
        # The command asked its S3 server to stop and ended; the server ends ~1.2 s later (and never,
        # if its directory is deleted first), as the next command on a data directory waits for it.
        services.await_s3_stopped(dataclasses.replace(Settings.from_env(), data_dir=tmp / "data"))
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "load1": round(load, 2),
            "spans": spans}


# What a cold run has to load, each measured alone in a fresh process (``--floor``): the CPU
# seconds (user + system) before any media is processed.
FLOOR = {
    "Python interpreter": "pass",
    "Prefect (client) imported": "import prefect",
    "torch and whisper imported, model loaded (int8)":
        "from scribeline import config, transcription; transcription.load_model(config.Settings.from_env().model, 'cpu', cpu_int8=True)",
    "Great Expectations imported, context built": "from scribeline import validation; validation.warm_up()",
    "Presidio and spaCy loaded (its process: no torch)":
        "import sys; from scribeline.procs import NotInstalled; sys.meta_path.insert(0, NotInstalled({'torch'})); "
        "from scribeline import pii; pii.analyzer()",
    "Prefect's API started until it answers (its process)":
        "import os, tempfile; os.environ['SCRIBELINE_DATA_DIR'] = tempfile.mkdtemp(); "
        "from scribeline import services; from scribeline.config import Settings; "
        "api = services.start_ephemeral_api(Settings.from_env()).wait(); "
        "f = open(f'/proc/{api.process.pid}/stat').read().rsplit(')', 1)[1].split(); "
        "print('CPU', (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')); api.stop()",
}


def floor() -> None:
    """Each start-up of ``FLOOR`` alone, its CPU time; their sum over the cores is a cold run's least wall time."""
    total = 0.0
    print(f"{'what a cold run loads, alone in a fresh process':56} CPU s")
    for name, code in FLOOR.items():
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{name}: failed")
        cpu = usage.ru_utime + usage.ru_stime
        if "CPU " in out:  # the measured process is a child that outlives the wait: its own figure
            cpu = float(out.split("CPU ")[1].split()[0])
        total += cpu
        print(f"  {name:54} {cpu:5.2f}")
    cores = os.cpu_count()
    print(f"  {'sum':54} {total:5.2f}\n\non {cores} cores, these alone take at least {total / cores:.1f} s of wall time")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--file", type=Path, default=DEFAULT_FILE)
    p.add_argument("--no-template", action="store_true", help="no cached Prefect database: every round migrates")
    p.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose scribeline runs (default: this one)")
    p.add_argument("--json", type=Path, help="write the rounds here")
    p.add_argument("--floor", action="store_true", help="only the CPU time of what a cold run loads, each alone")
    args = p.parse_args(argv)
    if args.floor:
        return floor()

    rounds = []
    for i in range(args.repeat):
        r = one_round(args.file.resolve(), args.tree.resolve(), args.no_template)
        rounds.append(r)
        print(f"round {i + 1}: wall {r['wall_s']:6.2f} s   cpu {r['cpu_s']:6.2f} s   load before {r['load1']:.2f}", flush=True)
    walls = [r["wall_s"] for r in rounds]
    print(f"\nmedian wall {statistics.median(walls):.2f} s  [{min(walls):.2f}-{max(walls):.2f}], "
          f"median cpu {statistics.median(r['cpu_s'] for r in rounds):.2f} s, {len(rounds)} rounds, "
          f"{os.cpu_count()} cores, file {args.file.name}")
    names = {n for r in rounds for n in r["spans"]}
    if names:
        print("\nstep (median over rounds, s since the process started)   start     end   took")
        rows = []
        for n in names:
            starts = [r["spans"][n][0] for r in rounds if n in r["spans"]]
            ends = [r["spans"][n][1] for r in rounds if n in r["spans"] and r["spans"][n][1] is not None]
            s, e = statistics.median(starts), (statistics.median(ends) if ends else None)
            rows.append((s, n, e))
        for s, n, e in sorted(rows):
            took = "" if e is None else f"{e - s:6.2f}"
            print(f"  {n:52} {s:6.2f}  {'' if e is None else f'{e:6.2f}':>6}  {took}")
    if args.json:
        args.json.write_text(json.dumps({"file": str(args.file), "tree": str(args.tree), "no_template": args.no_template,
                                         "rounds": rounds}, indent=1))


if __name__ == "__main__":
    main()
