"""The warehouse on a PostgreSQL catalog (the compose stack's setup): a throwaway cluster
from the local PostgreSQL binaries, data in a local folder instead of S3.

PostgreSQL refuses to run as root, so under root the cluster runs as ``nobody``; only the
catalog lives in the cluster, the Parquet folder is written by DuckDB in this process and in
the writer processes (root).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import duckdb
import pytest

from scribeline import warehouse
from tests.test_warehouse import _rows
from tests.test_warehouse_concurrency import _ledger, _writers_while_reading

INITDB, PG_CTL = shutil.which("initdb"), shutil.which("pg_ctl")
if not (INITDB and PG_CTL):
    pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not on PATH", allow_module_level=True)
BINDIR = Path(os.path.realpath(INITDB)).parent
SUPERUSER = "postgres"
AS_SERVER_USER = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []


def _client(name: str) -> str:
    found = BINDIR / name
    return str(found) if found.exists() else (shutil.which(name) or pytest.skip(f"no {name} binary"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], cwd: Path, timeout: float = 60) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def cluster():
    """A PostgreSQL cluster on 127.0.0.1:<free port> with trust auth; yields the port."""
    if AS_SERVER_USER and not shutil.which("runuser"):
        pytest.skip("running as root and no runuser to start PostgreSQL as an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="scribeline-pg-"))
    base.chmod(0o777)  # the server user creates its data directory, socket and log here
    pgdata, log = base / "pgdata", base / "server.log"
    _run(AS_SERVER_USER + [INITDB, "-D", str(pgdata), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                           "--no-sync"], cwd=base, timeout=120)
    for attempt in range(3):
        port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} -c fsync=off"
        try:
            _run(AS_SERVER_USER + [PG_CTL, "-D", str(pgdata), "-l", str(log), "-o", options, "-w", "-t", "60",
                                   "start"], cwd=base, timeout=90)
            break
        except RuntimeError:
            if attempt == 2:
                raise RuntimeError(log.read_text()[-3000:] if log.exists() else "PostgreSQL did not start")
    try:
        yield port
    finally:
        subprocess.run(AS_SERVER_USER + [PG_CTL, "-D", str(pgdata), "-m", "immediate", "stop"], cwd=base,
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def lake(cluster, tmp_path):
    """A fresh database ``lake`` in the cluster, and a data folder of this test's own."""
    port = cluster
    server = ["-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER]
    _run([_client("dropdb"), *server, "--if-exists", "lake"], cwd=tmp_path)
    _run([_client("createdb"), *server, "lake"], cwd=tmp_path)
    yield warehouse.Lake(f"postgres:dbname=lake host=127.0.0.1 port={port} user={SUPERUSER}",
                         str(tmp_path / "data") + "/")
    warehouse.reset_connections()


def test_loads_ledger_and_quarantine_on_a_postgres_catalog(lake, tmp_path):
    assert lake.catalog_file is None and lake.exists()
    assert warehouse.load(lake, *_rows("m1"), ledger=_ledger("in", "a/m1.wav")) is True
    assert warehouse.load(lake, *_rows("m1"), ledger=_ledger("in", "a/m1.wav")) is False  # again: nothing
    assert warehouse.load(lake, *_rows("m1"), ledger=_ledger("in", "b/copy.wav")) is False  # same content, new object
    assert warehouse.load_many(lake, [_rows("m2"), _rows("m3"), _rows("m2")]) == [True, True, False]

    counts = warehouse.row_counts(lake)
    assert counts["media"] == 3 and counts["segments"] == 6 and counts["words"] == 6 and counts["ledger"] == 2
    ledger = warehouse.query(lake, "select bucket, key, etag, media_id, state, size_bytes, sha256, first_seen "
                                   "from ledger order by key")
    assert list(ledger["key"]) == ["a/m1.wav", "b/copy.wav"]
    assert set(ledger["media_id"]) == {"m1"} and set(ledger["state"]) == {"processed"}
    assert list(ledger["etag"]) == ["e1", "e1"] and list(ledger["size_bytes"]) == [10, 10]
    assert str(ledger["first_seen"][0]) == "2026-01-01 00:00:00"
    text = warehouse.query(lake, "select text from transcripts where media_id = ?", ["m2"])["text"][0]
    assert text == "Hello <PERSON>. Good bye."

    record = dict(quarantine_key="quarantine/ab.json", source_bucket="in", source_key="bad.wav", sha256="cd" * 32,
                  stage="decode", error="not audio", attempts=3)
    assert warehouse.record_quarantine(lake, record, _ledger("in", "bad.wav")) is True
    assert warehouse.record_quarantine(lake, record, _ledger("in", "bad.wav")) is False  # the same again: nothing
    assert warehouse.record_quarantine(lake, record, _ledger("in", "bad-copy.wav")) is False  # same bytes, new object
    assert warehouse.query(lake, "select count(*) n from quarantine")["n"][0] == 1
    bad = warehouse.query(lake, "select key, state, quarantine_key from ledger "
                                "where state = 'quarantined' order by key")
    assert list(bad["key"]) == ["bad-copy.wav", "bad.wav"] and set(bad["quarantine_key"]) == {"quarantine/ab.json"}

    assert warehouse.record_terminal(lake, {**_ledger("in", "c/third.wav"), "media_id": "m1"}) is True
    assert warehouse.record_terminal(lake, {**_ledger("in", "c/third.wav"), "media_id": "m1"}) is False
    ledger = warehouse.query(lake, "select bucket, key, etag from ledger")
    assert len(ledger) == 5 and not ledger.duplicated().any()

    with pytest.raises(Exception):  # noqa: B017 - analysts' connections cannot write
        warehouse.query(lake, "delete from media")
    assert warehouse.row_counts(lake)["media"] == 3


def test_two_writer_processes_and_a_reader_on_a_postgres_catalog(lake, tmp_path):
    with warehouse.writer(lake):  # the schema, so the reader can attach and query
        pass
    warehouse.reset_connections()
    plans = {name: [(f"{name}-{i:02d}", _ledger("in", f"{name}/{i:02d}.wav")) for i in range(15)]
             for name in ("w1", "w2")}

    results, seen = _writers_while_reading(lake, tmp_path, plans, "select count(*) from media",
                                           "select count(*) from segments", "select count(*) from ledger")

    for name, result in results.items():
        assert result == {m: True for m, _ in plans[name]}, f"{name}: {result}"
    media = warehouse.query(lake, "select media_id from media")["media_id"]
    assert len(media) == 30 and media.is_unique
    assert warehouse.query(lake, "select media_id, segment_index, count(*) n from segments "
                                 "group by all having n > 1").empty
    ledger = warehouse.query(lake, "select bucket, key, etag from ledger")
    assert len(ledger) == 30 and not ledger.duplicated().any()

    assert seen["errors"] == [], seen["errors"][:5]
    polls = seen["polls"]
    assert polls[-1] == [30, 60, 30]  # the one connection keeps seeing new snapshots
    assert any(0 < p[0] < 30 for p in polls), "the reader never read while loads went on"
    for column in range(3):
        values = [p[column] for p in polls]
        assert values == sorted(values), f"reader saw a count go down: {values}"
    for media_n, segments_n, ledger_n in polls:  # whole loads only
        assert segments_n == 2 * media_n and ledger_n == media_n, polls


class _LosesCommitRace:
    """A connection whose first COMMIT comes just after another connection committed the schema."""

    def __init__(self, con: duckdb.DuckDBPyConnection, rival: duckdb.DuckDBPyConnection):
        self.con, self.rival, self.armed = con, rival, True

    def execute(self, sql, *args):
        if sql == "COMMIT" and self.armed:
            self.armed = False
            warehouse._create_schema(self.rival)
        return self.con.execute(sql, *args)


def test_a_schema_commit_that_loses_a_race_is_retried(lake):
    # Two writer processes opening their connections at once both commit the schema (CREATE OR REPLACE
    # VIEW rewrites the view each time); the later COMMIT is a DuckLake conflict, which is transient.
    # With a PostgreSQL catalog (no machine lock) this failed a worker's first load now and then; locally
    # the machine lock serializes connecting writers.
    with warehouse.writer(lake):
        pass
    warehouse.reset_connections()
    first, second = warehouse.connect(lake), warehouse.connect(lake)
    try:
        losing = _LosesCommitRace(first, second)  # loses once, then commits alone
        warehouse._retrying(lambda: warehouse._create_schema(losing))
        assert first.execute("select count(*) from media").fetchone()[0] == 0
    finally:
        first.close()
        second.close()
