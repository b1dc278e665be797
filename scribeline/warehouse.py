"""The DuckDB warehouse analysts query: schema, idempotent load, read-only queries.

Only redacted text ever reaches these tables. A media's rows are written in one
transaction keyed by ``media_id`` (the flow-run key), so loading the same media
twice adds nothing. DuckDB allows one writing process per file: writers open
the file only for the length of a load.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import duckdb
import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS media (
    media_id            VARCHAR PRIMARY KEY,  -- flow-run key: content sha256 + pipeline configuration
    source_bucket       VARCHAR NOT NULL,
    source_key          VARCHAR NOT NULL,
    source_etag         VARCHAR,
    size_bytes          BIGINT,
    sha256              VARCHAR NOT NULL,
    container           VARCHAR,
    codec               VARCHAR,
    sample_rate         INTEGER,
    channels            INTEGER,
    bit_rate            BIGINT,
    duration_s          DOUBLE,
    language            VARCHAR,
    language_probability DOUBLE,
    model               VARCHAR,
    task                VARCHAR,
    segment_count       INTEGER,
    word_count          INTEGER,
    pii_count           INTEGER,
    no_speech           BOOLEAN,   -- no speech found anywhere in the file
    quality_ok          BOOLEAN,   -- every quality check passed (warnings included)
    needs_review        BOOLEAN,   -- a transcription guard flagged it (see transcript_flags) or a critical quality check failed
    review_reasons      VARCHAR,   -- the guards' flag names, then the failing critical checks (table.column:expectation), comma-separated
    gain_db             DOUBLE,    -- gain applied before VAD
    processing_s        DOUBLE,
    processed_at        TIMESTAMP,
    pipeline_version    VARCHAR
);
CREATE TABLE IF NOT EXISTS segments (
    media_id          VARCHAR NOT NULL,
    segment_index     INTEGER NOT NULL,
    start_s           DOUBLE NOT NULL,
    end_s             DOUBLE NOT NULL,
    text              VARCHAR NOT NULL,  -- redacted
    channel           INTEGER,           -- set when channels are transcribed separately
    avg_logprob       DOUBLE,
    no_speech_prob    DOUBLE,
    compression_ratio DOUBLE,
    temperature       DOUBLE,
    PRIMARY KEY (media_id, segment_index)
);
CREATE TABLE IF NOT EXISTS words (
    media_id      VARCHAR NOT NULL,
    segment_index INTEGER NOT NULL,
    word_index    INTEGER NOT NULL,
    start_s       DOUBLE NOT NULL,
    end_s         DOUBLE NOT NULL,
    word          VARCHAR NOT NULL,  -- redacted words read <PERSON>, <PHONE_NUMBER>, ...
    probability   DOUBLE,
    redacted      BOOLEAN,
    PRIMARY KEY (media_id, segment_index, word_index)
);
CREATE TABLE IF NOT EXISTS pii_entities (
    media_id      VARCHAR NOT NULL,
    entity_index  INTEGER NOT NULL,
    entity_type   VARCHAR NOT NULL,
    start_s       DOUBLE,
    end_s         DOUBLE,
    score         DOUBLE,
    segment_index INTEGER,
    recognizer    VARCHAR,
    PRIMARY KEY (media_id, entity_index)
);
CREATE TABLE IF NOT EXISTS quality_checks (
    media_id         VARCHAR NOT NULL,
    check_index      INTEGER NOT NULL,
    table_name       VARCHAR,
    expectation      VARCHAR,
    column_name      VARCHAR,
    severity         VARCHAR,
    success          BOOLEAN,
    element_count    INTEGER,
    unexpected_count INTEGER,
    details          VARCHAR,
    PRIMARY KEY (media_id, check_index)
);
CREATE TABLE IF NOT EXISTS transcript_flags (  -- what the transcription guards found (scribeline/guards.py)
    media_id     VARCHAR NOT NULL,
    flag_index   INTEGER NOT NULL,
    flag         VARCHAR NOT NULL,  -- repeated_text, word_rate, looping, token_budget, compression_ratio, unintelligible, fallback_budget
    window_index INTEGER,           -- NULL: about the whole media
    start_s      DOUBLE,
    end_s        DOUBLE,
    reason       VARCHAR,
    PRIMARY KEY (media_id, flag_index)
);
CREATE TABLE IF NOT EXISTS quarantine (
    quarantine_key VARCHAR PRIMARY KEY,  -- object key of the JSON record in the quarantine bucket
    source_bucket  VARCHAR,
    source_key     VARCHAR,
    sha256         VARCHAR,
    stage          VARCHAR,
    error          VARCHAR,
    attempts       INTEGER,
    quarantined_at TIMESTAMP
);
-- Warehouses made before these columns existed get them (NULL for media loaded then).
ALTER TABLE media ADD COLUMN IF NOT EXISTS needs_review BOOLEAN;
ALTER TABLE media ADD COLUMN IF NOT EXISTS review_reasons VARCHAR;
CREATE OR REPLACE VIEW transcripts AS
SELECT m.media_id,
       's3://' || m.source_bucket || '/' || m.source_key AS source_object,
       m.language,
       m.duration_s,
       m.needs_review,
       coalesce(string_agg(s.text, ' ' ORDER BY s.start_s, s.segment_index), '') AS text
FROM media m LEFT JOIN segments s USING (media_id)
GROUP BY ALL;
"""


def connect(path: Path, read_only: bool = False, retries: int = 60) -> duckdb.DuckDBPyConnection:
    """Open the warehouse; waits while another process holds the file's lock."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}: run the pipeline first")
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    for attempt in range(retries):
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or attempt == retries - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


# DuckDB lets one process write a file; inside it, writes from several threads would
# conflict on the same tables. One lock per process serializes them; the schema is
# created once per file and process.
_write_lock = threading.Lock()
_schema_ready: set[str] = set()


@contextmanager
def writer(path: Path):
    with _write_lock:
        existed = Path(path).exists()
        con = connect(path)
        try:
            key = str(Path(path).resolve())
            if key not in _schema_ready or not existed:
                con.execute(SCHEMA)
                _schema_ready.add(key)
            yield con
        finally:
            con.close()


def has_media(con: duckdb.DuckDBPyConnection, media_id: str) -> bool:
    return con.execute("SELECT count(*) FROM media WHERE media_id = ?", [media_id]).fetchone()[0] > 0


def contained(path: Path, media_ids: Sequence[str]) -> set[str]:
    """Which of these media already have their rows in the warehouse (none when there is no warehouse yet)."""
    if not media_ids or not Path(path).exists():
        return set()
    con = connect(path, read_only=True)  # one opening for the whole list: each costs ~25 ms
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "media" not in tables:
            return set()
        return _present(con, media_ids)
    finally:
        con.close()


def _present(con: duckdb.DuckDBPyConnection, media_ids: Sequence[str]) -> set[str]:
    """Which of these media the warehouse holds, in one query."""
    rows = con.execute("SELECT media_id FROM media WHERE list_contains(?, media_id)", [list(media_ids)]).fetchall()
    return {r[0] for r in rows}


def load(path: Path, media_row: dict, tables: dict[str, pd.DataFrame]) -> bool:
    """Insert one media and its child rows atomically. False when it was already there."""
    result = load_many(path, [(media_row, tables)])[0]
    if isinstance(result, Exception):
        raise result
    return result


def load_many(path: Path, items: Sequence[tuple[dict, dict[str, pd.DataFrame]]]) -> list[bool | Exception]:
    """Insert several media through one connection; True where added, False where already there.

    Opening and closing the file costs more than a small media's rows, so the
    flow's concurrent load tasks are served together. They are first inserted in
    one transaction, one statement per table: a statement and a commit cost more
    than a small media's rows (8 media: 0.16 s one by one, most of it per statement).
    If that fails, nothing of it stays, and each media is loaded in a transaction
    of its own: one media's failure is returned in its place and does not touch
    the others.
    """
    with writer(path) as con:
        together = _load_together(con, items) if len(items) > 1 else None
        if together is not None:
            return together
        out: list[bool | Exception] = []
        for media_row, tables in items:
            try:
                out.append(_load_one(con, media_row, tables))
            except Exception as exc:  # noqa: BLE001 - reported to that media's caller
                out.append(exc)
    return out


def _load_together(con: duckdb.DuckDBPyConnection, items: Sequence[tuple[dict, dict[str, pd.DataFrame]]]) -> list[bool] | None:
    """All of the items' new media in one transaction; None (rolled back) if any statement failed."""
    ids = [row["media_id"] for row, _ in items]
    con.execute("BEGIN TRANSACTION")
    try:
        present = _present(con, ids)
        added = []
        for media_id in ids:  # the same media twice in one round: the first adds it
            added.append(media_id not in present)
            present.add(media_id)
        new = [item for item, add in zip(items, added) if add]
        if new:
            _insert(con, "media", pd.DataFrame([row for row, _ in new]))
            for name in dict.fromkeys(name for _, tables in new for name in tables):
                frames = [tables[name] for _, tables in new if name in tables and len(tables[name])]
                if frames:
                    _insert(con, name, pd.concat(frames, ignore_index=True))
        con.execute("COMMIT")
        return added
    except Exception:  # noqa: BLE001 - each media is tried alone next
        con.execute("ROLLBACK")
        return None


def _load_one(con: duckdb.DuckDBPyConnection, media_row: dict, tables: dict[str, pd.DataFrame]) -> bool:
    con.execute("BEGIN TRANSACTION")
    try:
        if has_media(con, media_row["media_id"]):
            con.execute("ROLLBACK")
            return False
        _insert(con, "media", pd.DataFrame([media_row]))
        for name, frame in tables.items():
            if len(frame):
                _insert(con, name, frame)
        con.execute("COMMIT")
        return True
    except Exception:
        con.execute("ROLLBACK")
        raise


def record_quarantine(path: Path, row: dict) -> None:
    with writer(path) as con:
        con.execute(
            "INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [row["quarantine_key"], row["source_bucket"], row["source_key"], row.get("sha256"), row["stage"],
             row["error"], row["attempts"], row.get("quarantined_at") or dt.datetime.now(dt.timezone.utc)],
        )


def _insert(con, table: str, frame: pd.DataFrame) -> None:
    columns = ", ".join(frame.columns)
    con.register("_incoming", frame)
    try:
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _incoming")
    finally:
        con.unregister("_incoming")


def query(path: Path, sql: str, params: list | None = None) -> pd.DataFrame:
    """Run analyst SQL on a read-only connection (no writes possible)."""
    con = connect(path, read_only=True)
    try:
        return con.execute(sql, params or []).fetchdf()
    finally:
        con.close()


def row_counts(path: Path) -> dict[str, int]:
    con = connect(path, read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("media", "segments", "words", "pii_entities", "quality_checks", "transcript_flags", "quarantine")}
    finally:
        con.close()
