"""Several processes on one local DuckLake (SQLite catalog): writers never double a media, and
a reader holding one read-only connection keeps working and only ever sees whole loads.

Real processes, no mocks: each writer and the reader is ``python -c`` started from the
repository root, and they only meet through the warehouse's catalog, files and lock file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from scribeline import warehouse
from tests.test_warehouse import _rows

ROOT = Path(__file__).resolve().parent.parent

# argv: catalog, data_path, go-file, spec file (JSON list of [media_id, ledger]).
# Opens its writer connection, touches <spec>.ready, waits for the go file, then loads.
# Prints one JSON object: {media_id: true | false | "ExceptionType: message"}.
WRITER = r"""
import json, sys, time
from pathlib import Path
from scribeline import warehouse
from tests.test_warehouse import _rows

catalog, data_path, go, spec = sys.argv[1:5]
lake = warehouse.Lake(catalog, data_path)
plan = json.loads(Path(spec).read_text())
with warehouse.writer(lake):  # attach now, so the loads of both writers start together
    pass
Path(spec).with_suffix(".ready").touch()
while not Path(go).exists():
    time.sleep(0.01)
out = {}
for media_id, ledger in plan:
    try:
        out[media_id] = warehouse.load(lake, *_rows(media_id), ledger=ledger)
    except Exception as exc:
        out[media_id] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

# argv: catalog, data_path, stop-file, ready-file, then the counts to poll (SQL expressions).
# Holds ONE read-only connection; polls every 0.1 s until the stop file appears, then once
# more, all counts in one statement (one snapshot). Prints {"polls": [[n, ...], ...], "errors": [...],
# "durations": [seconds each poll took, ...]}.
READER = r"""
import json, sys, time
from pathlib import Path
from scribeline import warehouse

catalog, data_path, stop, ready = sys.argv[1:5]
poll_sql = "SELECT " + ", ".join(f"({q})" for q in sys.argv[5:])
lake = warehouse.Lake(catalog, data_path)
con = warehouse.connect(lake, read_only=True)
Path(ready).touch()
polls, errors, durations = [], [], []
def poll():
    started = time.monotonic()
    try:
        polls.append(list(con.execute(poll_sql).fetchone()))
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    durations.append(time.monotonic() - started)
while not Path(stop).exists():
    poll()
    time.sleep(0.1)
poll()
con.close()
print(json.dumps({"polls": polls, "errors": errors, "durations": durations}))
"""


def _spawn(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process timed out; stderr:\n{err[-3000:]}")
    assert proc.returncode == 0, f"process failed ({proc.returncode}):\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _start_reader(lake: warehouse.Lake, tmp_path: Path, *queries: str) -> tuple[subprocess.Popen, Path]:
    ready, stop = tmp_path / "reader.ready", tmp_path / "reader.stop"
    proc = _spawn(READER, lake.catalog, lake.data_path, stop, ready, *queries)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"reader did not start: {proc.communicate()[1][-3000:]}")
        time.sleep(0.02)
    return proc, stop


def _start_writers(lake: warehouse.Lake, tmp_path: Path, plans: dict[str, list]) -> dict[str, subprocess.Popen]:
    """One writer process per plan, all loading from the same moment. They are started one after
    another, each attached before the next starts: writers connecting at once can fail a first load
    (test_warehouse_postgres.py::test_a_schema_commit_that_loses_a_race_is_retried)."""
    go, writers = tmp_path / "go", {}
    for name, plan in plans.items():
        spec = tmp_path / f"{name}.json"
        spec.write_text(json.dumps(plan))
        writers[name] = proc = _spawn(WRITER, lake.catalog, lake.data_path, go, spec)
        deadline = time.monotonic() + 60
        while not spec.with_suffix(".ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"writer {name} did not start: {proc.communicate()[1][-3000:]}")
            time.sleep(0.02)
    go.touch()
    return writers


def _ledger(bucket: str, key: str, etag: str = "e1") -> dict:
    return dict(bucket=bucket, key=key, etag=etag, size_bytes=10, sha256="ab" * 32,
                first_seen="2026-01-01T00:00:00+00:00")


def _make_warehouse(tmp_path: Path) -> warehouse.Lake:
    """The warehouse with its schema (the reader needs it), and no connection left open here."""
    lake = warehouse.Lake.of(tmp_path / "lake.sqlite")
    with warehouse.writer(lake):
        pass
    warehouse.reset_connections()
    return lake


def _data_files(lake: warehouse.Lake) -> set[Path]:
    return {p for p in Path(lake.data_path).rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def _close_connections():
    yield
    warehouse.reset_connections()


def _writers_while_reading(lake: warehouse.Lake, tmp_path: Path, plans: dict[str, list],
                           *queries: str) -> tuple[dict[str, dict], dict]:
    """Run the writer processes to the end while a reader polls ``queries``; their results and what it saw."""
    reader, stop = _start_reader(lake, tmp_path, *queries)
    writers = _start_writers(lake, tmp_path, plans)
    try:
        results = {name: _finish(proc) for name, proc in writers.items()}
    finally:
        stop.touch()
        seen = _finish(reader)
    return results, seen


def test_two_writers_and_a_reader_share_one_warehouse(tmp_path):
    lake = _make_warehouse(tmp_path)
    shared = [f"s-{i:02d}" for i in range(10)]
    plans = {}
    for name in ("w1", "w2"):
        own = [(f"{name}-{i:02d}", _ledger("in", f"{name}/{i:02d}.wav")) for i in range(40)]
        # s-00..s-04: the same object version delivered to both writers (one ledger row between them);
        # s-05..s-09: the same content uploaded under two names (one media, a ledger row per object).
        both = [(m, _ledger("in", f"shared/{m}.wav") if i < 5 else _ledger("in", f"{name}/{m}.wav"))
                for i, m in enumerate(shared)]
        if name == "w2":
            both.reverse()  # the writers meet in the middle of the shared media
        plan = []
        for i in range(40):  # a shared media every fourth load, so both writers are at them at once
            plan.append(own[i])
            if i % 4 == 0:
                plan.append(both[i // 4])
        plans[name] = plan

    results, seen = _writers_while_reading(lake, tmp_path, plans, "select count(*) from media",
                                           "select count(*) from ledger")

    for name, result in results.items():
        assert set(result) == {m for m, _ in plans[name]}
        failures = {m: r for m, r in result.items() if not isinstance(r, bool)}
        assert not failures, f"{name}: loads raised {failures}"
        assert all(result[f"{name}-{i:02d}"] is True for i in range(40))
    for m in shared:  # each shared media added by exactly one writer
        assert [results["w1"][m], results["w2"][m]].count(True) == 1, (m, results["w1"][m], results["w2"][m])
    assert sum(results[n][m] for n in results for m in shared) == 10

    media = warehouse.query(lake, "select media_id from media")["media_id"]
    assert len(media) == 90 and media.is_unique
    assert set(media) == {m for plan in plans.values() for m, _ in plan}
    counts = warehouse.row_counts(lake)
    assert counts["segments"] == 180 and counts["words"] == 180
    assert warehouse.query(lake, "select media_id, segment_index, count(*) n from segments "
                                 "group by all having n > 1").empty
    assert warehouse.query(lake, "select media_id, segment_index, word_index, count(*) n from words "
                                 "group by all having n > 1").empty
    ledger = warehouse.query(lake, "select bucket, key, etag, media_id, state from ledger")
    assert not ledger.duplicated(["bucket", "key", "etag"]).any()
    assert len(ledger) == 80 + 5 + 10  # own objects, s-00..04 once, s-05..09 once per writer
    assert set(ledger["state"]) == {"processed"}
    per_media = ledger.groupby("media_id").size()
    assert all(per_media[m] == (1 if m < "s-05" else 2) for m in shared)

    assert seen["errors"] == [], seen["errors"][:5]
    polls = seen["polls"]
    assert len(polls) >= 5
    for column in (0, 1):
        values = [p[column] for p in polls]
        assert values == sorted(values), f"reader saw a count go down: {values}"
    assert polls[-1] == [90, 95]  # the one connection keeps seeing new snapshots
    assert any(0 < p[0] < 90 for p in polls), "the reader never read while loads went on"


def test_a_load_that_fails_halfway_leaves_nothing_even_to_a_concurrent_reader(tmp_path):
    lake = _make_warehouse(tmp_path)
    assert warehouse.load(lake, *_rows("good-0"), ledger=_ledger("in", "good-0.wav"))
    reader, stop = _start_reader(
        lake, tmp_path,
        "select count(*) from media", "select count(*) from segments", "select count(*) from words",
        "select count(*) from ledger", "select count(*) from media where media_id like 'bad-%'")
    try:
        for i in range(5):
            row, tables = _rows(f"bad-{i}")
            # media and segments are inserted before the words' repeated keys are found
            tables["words"] = pd.concat([tables["words"], tables["words"]], ignore_index=True)
            files = _data_files(lake)
            with pytest.raises(warehouse.DuplicateRows):
                warehouse.load(lake, row, tables, ledger=_ledger("in", f"bad-{i}.wav"))
            assert _data_files(lake) == files  # no Parquet file of it left behind either
            time.sleep(0.15)
            # the connection is usable after the rollback, and a good load right after counts
            assert warehouse.load(lake, *_rows(f"good-{i + 1}"), ledger=_ledger("in", f"good-{i + 1}.wav"))
            time.sleep(0.15)
    finally:
        stop.touch()
        seen = _finish(reader)

    assert warehouse.query(lake, "select count(*) n from media where media_id like 'bad-%'")["n"][0] == 0
    counts = warehouse.row_counts(lake)
    assert counts["media"] == 6 and counts["segments"] == 12 and counts["words"] == 12 and counts["ledger"] == 6
    for table in ("segments", "words", "ledger"):
        assert warehouse.query(lake, f"select count(*) n from {table} where media_id like 'bad-%'")["n"][0] == 0
    assert seen["errors"] == []
    polls = seen["polls"]
    assert polls[-1] == [6, 12, 12, 6, 0]
    for media, segments, words, ledger, bad in polls:
        # whole good loads only: never a bad media, never a media without its segments, words and ledger row
        assert bad == 0 and segments == words == 2 * media and ledger == media, polls


def test_a_load_goes_through_while_an_analyst_query_is_open(tmp_path):
    # warehouse.connect's promise: read-only connections never block, nor are blocked by, the writers.
    # A long analyst query holds its snapshot (and the catalog read) open the way this transaction does.
    lake = _make_warehouse(tmp_path)
    assert warehouse.load(lake, *_rows("m0"))
    outcome = {}

    def load():
        try:
            outcome["added"] = warehouse.load(lake, *_rows("m1"))
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    analyst = warehouse.connect(lake, read_only=True)
    thread = threading.Thread(target=load, daemon=True)
    try:
        analyst.execute("BEGIN TRANSACTION")
        assert analyst.execute("select count(*) from media").fetchone()[0] == 1
        thread.start()
        thread.join(5)
        assert not thread.is_alive(), "the load waited for the analyst's open query"
        assert analyst.execute("select count(*) from media").fetchone()[0] == 1  # its snapshot, still
        analyst.execute("COMMIT")
        assert analyst.execute("select count(*) from media").fetchone()[0] == 2
    finally:
        analyst.close()
        if thread.is_alive():
            thread.join(60)
    assert outcome == {"added": True}
    assert warehouse.row_counts(lake)["media"] == 2
