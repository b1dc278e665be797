"""The warehouse analysts query: a DuckLake (DuckDB tables over Parquet, with a catalog database).

A plain DuckDB file lets one process write and then no other process open it, even
to read: an analyst's connection stalled the pipeline's loads, and a second worker
could not load at all. DuckLake keeps the same SQL over Parquet files and a catalog
database: readers see committed snapshots while loads go on, and several processes
write to one warehouse. Locally the catalog is a SQLite file and the data a folder
under the data directory; at scale, a PostgreSQL catalog and data on S3 (README).

Only redacted text ever reaches these tables. A media's rows, with the ledger row of
the object they came from, are written in one transaction keyed by ``media_id`` (the
flow-run key), so loading the same media twice adds nothing. DuckLake has no primary
keys: uniqueness is the writers' job. Writers on one machine take a file lock for the
check-then-insert of a load (transactions are short); a PostgreSQL catalog relies on
Prefect's idempotency key and the per-media cache lock for the same guarantee.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import random
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import duckdb
import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS media (
    media_id            VARCHAR NOT NULL,  -- flow-run key: content sha256 + pipeline configuration
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
    temperature       DOUBLE
);
CREATE TABLE IF NOT EXISTS words (
    media_id      VARCHAR NOT NULL,
    segment_index INTEGER NOT NULL,
    word_index    INTEGER NOT NULL,
    start_s       DOUBLE NOT NULL,
    end_s         DOUBLE NOT NULL,
    word          VARCHAR NOT NULL,  -- redacted words read <PERSON>, <PHONE_NUMBER>, ...
    probability   DOUBLE,
    redacted      BOOLEAN
);
CREATE TABLE IF NOT EXISTS pii_entities (
    media_id      VARCHAR NOT NULL,
    entity_index  INTEGER NOT NULL,
    entity_type   VARCHAR NOT NULL,
    start_s       DOUBLE,
    end_s         DOUBLE,
    score         DOUBLE,
    segment_index INTEGER,
    recognizer    VARCHAR
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
    details          VARCHAR
);
CREATE TABLE IF NOT EXISTS transcript_flags (  -- what the transcription guards found (scribeline/guards.py)
    media_id     VARCHAR NOT NULL,
    flag_index   INTEGER NOT NULL,
    flag         VARCHAR NOT NULL,  -- repeated_text, word_rate, looping, token_budget, compression_ratio, unintelligible, fallback_budget
    window_index INTEGER,           -- NULL: about the whole media
    start_s      DOUBLE,
    end_s        DOUBLE,
    reason       VARCHAR
);
CREATE TABLE IF NOT EXISTS quarantine (
    quarantine_key VARCHAR NOT NULL,  -- object key of the JSON record in the quarantine bucket
    source_bucket  VARCHAR,
    source_key     VARCHAR,
    sha256         VARCHAR,
    stage          VARCHAR,
    error          VARCHAR,
    attempts       INTEGER,
    quarantined_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS retention_log (  -- every object the retention flow deleted, and why
    deleted_at  TIMESTAMP NOT NULL,
    kind        VARCHAR NOT NULL,  -- original | normalized | redacted_audio | unredacted | stage_results
    bucket      VARCHAR,           -- NULL for stage results (a local folder)
    key         VARCHAR NOT NULL,
    data_class  VARCHAR,
    age_days    DOUBLE,
    limit_days  DOUBLE,
    size_bytes  BIGINT
);
CREATE TABLE IF NOT EXISTS ledger (  -- one terminal state per object version seen in the incoming bucket
    bucket         VARCHAR NOT NULL,
    key            VARCHAR NOT NULL,
    etag           VARCHAR NOT NULL,
    size_bytes     BIGINT,
    sha256         VARCHAR,           -- NULL when the object could not be read
    media_id       VARCHAR,           -- the media its content became (shared by copies under other names)
    state          VARCHAR NOT NULL,  -- processed | needs_review | quarantined
    stage          VARCHAR,           -- where it was quarantined
    reason         VARCHAR,
    attempts       INTEGER,
    flow_run_id    VARCHAR,
    quarantine_key VARCHAR,           -- its record in the quarantine bucket
    first_seen     TIMESTAMP,
    finished       TIMESTAMP
);
-- Warehouses made before these columns existed get them (NULL for media loaded then).
ALTER TABLE media ADD COLUMN IF NOT EXISTS needs_review BOOLEAN;
ALTER TABLE media ADD COLUMN IF NOT EXISTS review_reasons VARCHAR;
ALTER TABLE media ADD COLUMN IF NOT EXISTS data_class VARCHAR;             -- public | internal | sensitive (governance)
ALTER TABLE media ADD COLUMN IF NOT EXISTS region VARCHAR;                 -- the deployment's configured region
ALTER TABLE media ADD COLUMN IF NOT EXISTS redacted_audio_object VARCHAR;  -- s3:// of the beeped/muted audio copy
ALTER TABLE media ADD COLUMN IF NOT EXISTS unredacted_object VARCHAR;      -- s3:// of the kept unredacted transcript
ALTER TABLE pii_entities ADD COLUMN IF NOT EXISTS operator VARCHAR;        -- replace | mask | hash
ALTER TABLE pii_entities ADD COLUMN IF NOT EXISTS value_hash VARCHAR;      -- hash operator: salted hash, never the value
CREATE OR REPLACE VIEW transcripts AS
SELECT m.media_id,
       's3://' || m.source_bucket || '/' || m.source_key AS source_object,
       m.language,
       m.duration_s,
       m.needs_review,
       coalesce(string_agg(s.text, ' ' ORDER BY s.start_s, s.segment_index), '') AS text
FROM media m LEFT JOIN segments s USING (media_id)
GROUP BY ALL;
CREATE TABLE IF NOT EXISTS transcript_scores (  -- a reference or human-corrected transcript scored against the machine's (scribeline/scoring.py); never its text
    media_id         VARCHAR NOT NULL,
    source_key       VARCHAR NOT NULL,  -- the media's object key the sidecar was uploaded beside
    sidecar_key      VARCHAR NOT NULL,  -- <source_key>.ref.txt | <source_key>.corrected.txt (then moved to the processed bucket under sidecars/)
    sidecar_sha256   VARCHAR NOT NULL,  -- its content's hash: one sidecar is scored once per media
    kind             VARCHAR NOT NULL,  -- reference | correction
    model            VARCHAR,           -- the media's model and pipeline_version when it was scored
    pipeline_version VARCHAR,
    wer              DOUBLE,            -- word_edits / reference_words (NULL when the sidecar has no words)
    cer              DOUBLE,            -- char_edits / reference_chars
    word_edits       INTEGER,           -- word-level Levenshtein distance: substitutions + deletions + insertions
    substitutions    INTEGER,
    deletions        INTEGER,
    insertions       INTEGER,
    reference_words  INTEGER,           -- words of the sidecar (the reference, or the human's corrected text)
    hypothesis_words INTEGER,           -- words of the machine's (redacted) transcript
    char_edits       INTEGER,
    reference_chars  INTEGER,
    scored_at        TIMESTAMP
);
-- Job latency by media duration: processing_s (from the run's start to the media's load) per
-- bucket of duration_s; realtime_factor is audio seconds per second of processing.
CREATE OR REPLACE VIEW latency_by_duration AS
WITH bucketed AS (
    SELECT duration_s, processing_s,
           CASE WHEN duration_s < 10 THEN 0 WHEN duration_s < 30 THEN 10 WHEN duration_s < 60 THEN 30
                WHEN duration_s < 300 THEN 60 WHEN duration_s < 1800 THEN 300 ELSE 1800 END AS bucket_start_s
    FROM media WHERE duration_s IS NOT NULL AND processing_s IS NOT NULL)
SELECT bucket_start_s,
       CASE bucket_start_s WHEN 0 THEN 'under 10 s' WHEN 10 THEN '10-30 s' WHEN 30 THEN '30-60 s'
            WHEN 60 THEN '1-5 min' WHEN 300 THEN '5-30 min' ELSE '30 min and over' END AS duration_bucket,
       count(*) AS media,
       sum(duration_s) AS audio_s,
       avg(processing_s) AS mean_processing_s,
       median(processing_s) AS median_processing_s,
       quantile_cont(processing_s, 0.9) AS p90_processing_s,
       max(processing_s) AS max_processing_s,
       sum(duration_s) / nullif(sum(processing_s), 0) AS realtime_factor
FROM bucketed GROUP BY bucket_start_s ORDER BY bucket_start_s;
-- One row per object version in the ledger, with what is known of it: source_prefix is its key
-- before the first '/' ('' for a key without one); codec and container come from its media row
-- ('(not recorded)' when none: quarantined objects have no media row); stage and attempts from
-- the ledger, else its quarantine record; had_error: quarantined, or it took more than one attempt.
CREATE OR REPLACE VIEW object_outcomes AS
SELECT l.bucket, l.key,
       CASE WHEN contains(l.key, '/') THEN split_part(l.key, '/', 1) ELSE '' END AS source_prefix,
       coalesce(m.codec, '(not recorded)') AS codec,
       m.container, l.state,
       coalesce(l.stage, q.stage) AS stage,
       coalesce(l.attempts, q.attempts, 1) AS attempts,
       l.state = 'quarantined' OR coalesce(l.attempts, q.attempts, 1) > 1 AS had_error,
       m.duration_s, m.processing_s, l.media_id, l.first_seen, l.finished
FROM ledger l
LEFT JOIN (SELECT media_id, any_value(codec) AS codec, any_value(container) AS container,
                  any_value(duration_s) AS duration_s, any_value(processing_s) AS processing_s
           FROM media GROUP BY media_id) m ON m.media_id = l.media_id
LEFT JOIN (SELECT quarantine_key, any_value(stage) AS stage, any_value(attempts) AS attempts
           FROM quarantine GROUP BY quarantine_key) q ON q.quarantine_key = l.quarantine_key;
-- Error and quarantine rates by codec, and by source prefix (the part of the object key before the
-- first '/'): objects per terminal state; quarantine_rate = quarantined / objects, review_rate =
-- needs_review / objects, error_rate = had_error / objects (object_outcomes).
{failure_rates_by_codec}
{failure_rates_by_prefix}
-- Throughput per hour (UTC): media loaded and their audio seconds (media.processed_at), and
-- objects that reached a terminal state (ledger.finished), quarantined ones among them.
CREATE OR REPLACE VIEW throughput_hourly AS
WITH loaded AS (
    SELECT date_trunc('hour', processed_at) AS hour, count(*) AS media, sum(duration_s) AS audio_s,
           sum(processing_s) AS processing_s
    FROM media WHERE processed_at IS NOT NULL GROUP BY 1),
finished AS (
    SELECT date_trunc('hour', finished) AS hour, count(*) AS objects_finished,
           count(*) FILTER (WHERE state = 'quarantined') AS quarantined
    FROM ledger WHERE finished IS NOT NULL GROUP BY 1)
SELECT coalesce(l.hour, f.hour) AS hour,
       coalesce(l.media, 0) AS media,
       coalesce(l.audio_s, 0) AS audio_s,
       coalesce(l.processing_s, 0) AS processing_s,
       coalesce(f.objects_finished, 0) AS objects_finished,
       coalesce(f.quarantined, 0) AS quarantined
FROM loaded l FULL OUTER JOIN finished f ON l.hour = f.hour
ORDER BY hour;
-- WER/CER against reference transcripts per model and configuration (pipeline_version) and day
-- the transcript was made (media.processed_at, UTC), the latest reference of each media counted:
-- wer and cer pooled (all edits / all reference words or characters), mean_wer over media.
CREATE OR REPLACE VIEW wer_trend AS
WITH latest AS (
    SELECT s.*, m.processed_at FROM transcript_scores s JOIN media m USING (media_id)
    WHERE s.kind = 'reference'
    QUALIFY row_number() OVER (PARTITION BY s.media_id ORDER BY s.scored_at DESC, s.sidecar_sha256) = 1)
SELECT date_trunc('day', processed_at) AS day, model, pipeline_version,
       count(*) AS media,
       sum(reference_words) AS reference_words,
       sum(word_edits) AS word_edits,
       sum(word_edits) / nullif(sum(reference_words), 0) AS wer,
       sum(char_edits) / nullif(sum(reference_chars), 0) AS cer,
       avg(wer) AS mean_wer
FROM latest GROUP BY ALL ORDER BY day, model, pipeline_version;
-- Human-correction rate per media: the word edits between the machine's transcript and the
-- latest corrected transcript uploaded for it, over the corrected transcript's words.
CREATE OR REPLACE VIEW correction_rates AS
SELECT s.media_id, s.source_key, s.model, s.pipeline_version, m.processed_at, s.scored_at,
       s.word_edits, s.reference_words AS corrected_words,
       s.word_edits / nullif(s.reference_words, 0) AS correction_rate
FROM transcript_scores s JOIN media m USING (media_id)
WHERE s.kind = 'correction'
QUALIFY row_number() OVER (PARTITION BY s.media_id ORDER BY s.scored_at DESC, s.sidecar_sha256) = 1;
-- The correction rate as a trend: per day the transcripts were made, model and configuration;
-- correction_rate pooled (all edits / all corrected words), mean_correction_rate over media.
CREATE OR REPLACE VIEW correction_trend AS
SELECT date_trunc('day', processed_at) AS day, model, pipeline_version,
       count(*) AS media,
       sum(corrected_words) AS corrected_words,
       sum(word_edits) AS word_edits,
       sum(word_edits) / nullif(sum(corrected_words), 0) AS correction_rate,
       avg(correction_rate) AS mean_correction_rate
FROM correction_rates GROUP BY ALL ORDER BY day, model, pipeline_version;
"""

_FAILURE_RATES = """CREATE OR REPLACE VIEW failure_rates_by_{name} AS
SELECT {column}, count(*) AS objects,
       count(*) FILTER (WHERE state = 'processed') AS processed,
       count(*) FILTER (WHERE state = 'needs_review') AS needs_review,
       count(*) FILTER (WHERE state = 'quarantined') AS quarantined,
       count(*) FILTER (WHERE had_error) AS had_error,
       avg(CASE WHEN state = 'quarantined' THEN 1.0 ELSE 0.0 END) AS quarantine_rate,
       avg(CASE WHEN state = 'needs_review' THEN 1.0 ELSE 0.0 END) AS review_rate,
       avg(CASE WHEN had_error THEN 1.0 ELSE 0.0 END) AS error_rate
FROM object_outcomes GROUP BY {column} ORDER BY objects DESC, {column};"""
SCHEMA = SCHEMA.replace("{failure_rates_by_codec}", _FAILURE_RATES.format(name="codec", column="codec")).replace(
    "{failure_rates_by_prefix}", _FAILURE_RATES.format(name="prefix", column="source_prefix"))


TABLES = ("media", "segments", "words", "pii_entities", "quality_checks", "transcript_flags", "quarantine", "ledger",
          "transcript_scores", "retention_log")
LEDGER_STATES = ("processed", "needs_review", "quarantined")


@dataclass(frozen=True, repr=False)
class Lake:
    """Where the warehouse lives: a DuckLake catalog and the folder (or S3 prefix) of its Parquet files."""

    catalog: str  # "sqlite:/path/lake.sqlite" or "postgres:dbname=... host=..."
    data_path: str  # a folder, or s3://bucket/prefix/
    # S3 access for an s3:// data path: (endpoint, access key, secret key, secure, region). Never printed.
    s3: tuple | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, target: "Lake | Path | str") -> "Lake":
        """A Lake as given, or the local one whose SQLite catalog is the file ``target`` (data beside it)."""
        if isinstance(target, Lake):
            return target
        text = str(target)
        if text.startswith("postgres:"):
            raise ValueError("a PostgreSQL catalog needs its data path too: build Lake(catalog, data_path)")
        path = Path(text).expanduser().resolve()
        return cls(f"sqlite:{path}", str(path.parent / f"{path.stem}-data") + "/")

    @property
    def catalog_file(self) -> Path | None:
        return Path(self.catalog.removeprefix("sqlite:")) if self.catalog.startswith("sqlite:") else None

    def __str__(self) -> str:
        """For logs and `scribeline status`: the catalog without any password in it."""
        shown = " ".join(p for p in self.catalog.split() if not p.lower().startswith("password="))
        return f"DuckLake {shown} (data {self.data_path})"

    def __repr__(self) -> str:
        return f"Lake({self})"

    def exists(self) -> bool:
        return self.catalog_file.exists() if self.catalog_file else True

    def attach_sql(self, read_only: bool = False) -> str:
        options = [f"DATA_PATH {_literal(self.data_path)}"] + (["READ_ONLY"] if read_only else [])
        return f"ATTACH {_literal('ducklake:' + self.catalog)} AS lake ({', '.join(options)})"


def _literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _load_extensions(con: duckdb.DuckDBPyConnection, lake: Lake) -> None:
    """DuckLake and its catalog's scanner, from the duckdb-extension-* wheels (no download)."""
    names = ["ducklake", "postgres_scanner" if lake.catalog.startswith("postgres:") else "sqlite_scanner"]
    if lake.data_path.startswith("s3://"):
        names.append("httpfs")
    for name in names:
        try:
            con.execute(f"LOAD {name}")
        except duckdb.Error:  # not yet installed from its wheel on this machine
            import duckdb_extensions

            duckdb_extensions.import_extension(name, con=con)
            con.execute(f"LOAD {name}")
    if lake.s3:
        endpoint, key_id, secret, secure, region = lake.s3
        con.execute(f"CREATE OR REPLACE TEMPORARY SECRET scribeline_lake_s3 (TYPE s3, KEY_ID {_literal(key_id)}, "
                    f"SECRET {_literal(secret)}, ENDPOINT {_literal(endpoint)}, URL_STYLE 'path', "
                    f"USE_SSL {str(bool(secure)).lower()}, REGION {_literal(region or 'us-east-1')})")


def connect(target: "Lake | Path | str", read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A new connection with the warehouse attached as ``lake`` and in use (analysts' SQL needs no prefix).

    Read-only connections never block, nor are blocked by, the pipeline's writers."""
    lake = Lake.of(target)
    if read_only and not lake.exists():
        raise FileNotFoundError(f"no warehouse at {lake.catalog_file}: run the pipeline first")
    if lake.catalog_file:
        lake.catalog_file.parent.mkdir(parents=True, exist_ok=True)
        if not read_only:
            _use_wal(lake.catalog_file)
        if not lake.data_path.startswith("s3://"):
            Path(lake.data_path).mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        _load_extensions(con, lake)
        _retrying(lambda: con.execute(lake.attach_sql(read_only)))
        con.execute("USE lake")
    except BaseException:
        con.close()
        raise
    return con


def _use_wal(path: Path) -> None:
    """Put the SQLite catalog in WAL mode (the file keeps it). In SQLite's default rollback-journal
    mode a reader's query and a load's commit wait on each other, a whole second at a time, and an
    open read transaction (a long analyst query) keeps every load from committing."""
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode=WAL")


# ------------------------------------------------------------------ writing
# Attaching costs ~0.3 s: each process keeps one read-write connection per warehouse, and
# its threads take turns on it. Across processes on one machine a file lock beside the
# SQLite catalog serializes loads, so a load's check-then-insert sees every earlier one.
_write_lock = threading.RLock()
_writers: dict[Lake, duckdb.DuckDBPyConnection] = {}

# Catalog contention (SQLite "database is locked", a DuckLake commit conflict) is retried.
_TRANSIENT = ("locked", "busy", "conflict", "could not serialize", "deadlock", "connection")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.Error) and any(word in str(exc).lower() for word in _TRANSIENT)


def _retrying(fn, attempts: int = 12, first_delay_s: float = 0.05):
    """Run ``fn``, retrying transient catalog errors with exponential backoff and jitter."""
    for attempt in range(attempts):
        try:
            return fn()
        except duckdb.Error as exc:
            if not _transient(exc) or attempt == attempts - 1:
                raise
            time.sleep(first_delay_s * 2 ** min(attempt, 6) * (0.5 + random.random()))
    raise AssertionError("unreachable")


@contextmanager
def writer(target: "Lake | Path | str"):
    """This process's read-write connection, held exclusively (threads and, locally, processes)."""
    lake = Lake.of(target)
    with _write_lock, _machine_lock(lake):
        con = _writers.get(lake)
        if con is None:
            fresh = lake.catalog_file is not None and not lake.exists()
            if fresh:
                _create_local(lake)
            con = connect(lake)
            if not fresh:  # an existing warehouse: tables or columns added since it was made
                _retrying(lambda: _create_schema(con))
            _writers[lake] = con
        yield con


@contextmanager
def _machine_lock(lake: Lake):
    if lake.catalog_file is None:
        yield
        return
    lake.catalog_file.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{lake.catalog_file}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _create_local(lake: Lake) -> None:
    """A new local catalog is built under a temporary name with every table, then renamed into place:
    an analyst polling a fresh warehouse sees no catalog or all of it, never a catalog without tables."""
    fresh = lake.catalog_file.with_name(lake.catalog_file.name + ".new")
    for leftover in (fresh, Path(f"{fresh}-wal"), Path(f"{fresh}-shm")):
        leftover.unlink(missing_ok=True)  # a creation interrupted earlier
    con = connect(Lake(f"sqlite:{fresh}", lake.data_path))
    try:
        _create_schema(con)
    finally:
        con.close()
    with contextlib.closing(sqlite3.connect(fresh, timeout=30)) as db:  # everything in the main file
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.replace(fresh, lake.catalog_file)


def _create_schema(con: duckdb.DuckDBPyConnection) -> None:
    # _transaction: a COMMIT that lost to another process's (a catalog conflict) has already ended
    # the transaction; a bare ROLLBACK would then raise "no transaction is active" in its place,
    # which is not retried.
    with _transaction(con):
        con.execute(SCHEMA)


def reset_connections() -> None:
    """Close this process's cached connections (tests; a worker after its warehouse moved)."""
    with _write_lock:
        for con in _writers.values():
            con.close()
        _writers.clear()


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection):
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # a failed COMMIT has already ended the transaction
        raise


def _present(con: duckdb.DuckDBPyConnection, media_ids: Sequence[str]) -> set[str]:
    """Which of these media the warehouse holds, in one query."""
    if not media_ids:
        return set()
    rows = con.execute("SELECT media_id FROM media WHERE list_contains(?, media_id)", [list(media_ids)]).fetchall()
    return {r[0] for r in rows}


def _object_id(row: dict) -> tuple[str, str, str]:
    return row["bucket"], row["key"], row.get("etag") or ""


def _ledgered(con: duckdb.DuckDBPyConnection, objects: Sequence[tuple[str, str, str]]) -> dict[tuple, dict]:
    """The ledger rows of these object versions (bucket, key, etag) that already have one."""
    if not objects:
        return {}
    frame = pd.DataFrame(list(objects), columns=["bucket", "key", "etag"])
    con.register("_objects", frame)
    try:
        found = con.execute("SELECT l.* FROM ledger l JOIN _objects o USING (bucket, key, etag)").fetchdf()
    finally:
        con.unregister("_objects")
    return {(r["bucket"], r["key"], r["etag"]): r for r in found.to_dict("records")}


def _ledger_frame(rows: list[dict]) -> pd.DataFrame:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    out = []
    for row in rows:
        if row["state"] not in LEDGER_STATES:
            raise ValueError(f"unknown ledger state {row['state']!r}")
        out.append({"bucket": row["bucket"], "key": row["key"], "etag": row.get("etag") or "",
                    "size_bytes": row.get("size_bytes"), "sha256": row.get("sha256"), "media_id": row.get("media_id"),
                    "state": row["state"], "stage": row.get("stage"), "reason": row.get("reason"),
                    "attempts": row.get("attempts"), "flow_run_id": row.get("flow_run_id"),
                    "quarantine_key": row.get("quarantine_key"), "first_seen": _naive(row.get("first_seen")) or now,
                    "finished": _naive(row.get("finished")) or now})
    return pd.DataFrame(out)


def _naive(value):
    """Timestamps as naive UTC (the column type), from datetimes or ISO strings."""
    if value is None or value == "":
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts).to_pydatetime()


# ------------------------------------------------------------------ loading
@dataclass
class MediaLoad:
    """One media's rows, and the ledger row of the object version they came from (if any)."""

    media_row: dict
    tables: dict[str, pd.DataFrame]
    ledger: dict | None = None


def load(target, media_row: dict, tables: dict[str, pd.DataFrame], ledger: dict | None = None) -> bool:
    """Insert one media and its child rows atomically. False when it was already there."""
    result = load_many(target, [MediaLoad(media_row, tables, ledger)])[0]
    if isinstance(result, Exception):
        raise result
    return result


def load_many(target, items: Sequence[MediaLoad | tuple]) -> list[bool | Exception]:
    """Insert several media through one connection; True where added, False where already there.

    Each item's ledger row is added with it (its state from the media's ``needs_review``),
    also when the media itself was already there (the same content under another name), and
    only once per object version. A statement and a commit cost more than a small media's
    rows, so the items go first in one transaction, one statement per table. If that fails,
    nothing of it stays, and each media is loaded in a transaction of its own: one media's
    failure is returned in its place and does not touch the others.
    """
    items = [it if isinstance(it, MediaLoad) else MediaLoad(*it) for it in items]
    with writer(target) as con:
        if len(items) > 1:
            try:
                return _retrying(lambda: _in_transaction(con, items))
            except Exception:  # noqa: BLE001 - each media is tried alone next
                pass
        out: list[bool | Exception] = []
        for item in items:
            try:
                out.append(_retrying(lambda: _in_transaction(con, [item]))[0])
            except Exception as exc:  # noqa: BLE001 - reported to that media's caller
                out.append(exc)
    return out


def _in_transaction(con: duckdb.DuckDBPyConnection, items: Sequence[MediaLoad]) -> list[bool]:
    with _transaction(con):
        present = _present(con, [it.media_row["media_id"] for it in items])
        done = set(_ledgered(con, [_object_id(it.ledger) for it in items if it.ledger]))
        added, new, ledger_rows = [], [], []
        for it in items:  # the same media twice in one round: the first adds it
            media_id = it.media_row["media_id"]
            added.append(media_id not in present)
            if media_id not in present:
                new.append(it)
                present.add(media_id)
            if it.ledger and _object_id(it.ledger) not in done:
                done.add(_object_id(it.ledger))
                state = "needs_review" if it.media_row.get("needs_review") else "processed"
                ledger_rows.append({**it.ledger, "media_id": media_id, "state": state})
        if new:
            _insert(con, "media", pd.DataFrame([it.media_row for it in new]))
            for name in dict.fromkeys(name for it in new for name in it.tables):
                frames = [it.tables[name] for it in new if name in it.tables and len(it.tables[name])]
                if frames:
                    _check_unique(name, frames)
                    _insert(con, name, pd.concat(frames, ignore_index=True))
        if ledger_rows:
            _insert(con, "ledger", _ledger_frame(ledger_rows))
    return added


# What each child table's rows are unique by (DuckLake has no primary keys to check it).
_ROW_KEYS = {"segments": ["media_id", "segment_index"], "words": ["media_id", "segment_index", "word_index"],
             "pii_entities": ["media_id", "entity_index"], "quality_checks": ["media_id", "check_index"],
             "transcript_flags": ["media_id", "flag_index"]}


class DuplicateRows(duckdb.ConstraintException):
    """A load's rows repeat a key: the load is refused whole."""


def _check_unique(table: str, frames: list[pd.DataFrame]) -> None:
    keys = _ROW_KEYS.get(table)
    if keys and pd.concat([f[keys] for f in frames], ignore_index=True).duplicated().any():
        raise DuplicateRows(f"{table}: rows repeat a key ({', '.join(keys)})")


def record_terminal(target, ledger: dict) -> bool:
    """The ledger row of an object version whose media (``ledger["media_id"]``) was already in the
    warehouse; its state is that media's. False if the object version had a row already."""
    with writer(target) as con:
        def write() -> bool:
            with _transaction(con):
                if _ledgered(con, [_object_id(ledger)]):
                    return False
                review = con.execute("SELECT bool_or(needs_review) FROM media WHERE media_id = ?",
                                     [ledger["media_id"]]).fetchone()[0]
                _insert(con, "ledger", _ledger_frame([{**ledger, "state": "needs_review" if review else "processed"}]))
                return True
        return _retrying(write)


def record_quarantine(target, row: dict, ledger: dict | None = None) -> bool:
    """The quarantine record (once per record key: the same bad content twice is one record) and
    the object's ledger row (once per object version), in one transaction. True if the record is new."""
    with writer(target) as con:
        def write() -> bool:
            with _transaction(con):
                new = con.execute("SELECT count(*) FROM quarantine WHERE quarantine_key = ?",
                                  [row["quarantine_key"]]).fetchone()[0] == 0
                if new:
                    con.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                [row["quarantine_key"], row["source_bucket"], row["source_key"], row.get("sha256"),
                                 row["stage"], row["error"], row["attempts"],
                                 _naive(row.get("quarantined_at")) or dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)])
                if ledger and not _ledgered(con, [_object_id(ledger)]):
                    _insert(con, "ledger", _ledger_frame([{**ledger, "state": "quarantined",
                                                           "quarantine_key": row["quarantine_key"]}]))
                return new
        return _retrying(write)


def record_deletions(target, rows: list[dict]) -> None:
    """The retention flow's deletions (``retention_log`` rows), in one transaction."""
    if not rows:
        return
    with writer(target) as con:
        def write() -> None:
            with _transaction(con):
                _insert(con, "retention_log", pd.DataFrame(rows))
        _retrying(write)


def record_scores(target, rows: list[dict]) -> int:
    """Rows of ``transcript_scores``, in one transaction; a (media, kind, sidecar content) already
    scored adds nothing (a run that ended between this commit and the sidecar's move). Returns how
    many were added."""
    if not rows:
        return 0
    with writer(target) as con:
        def write() -> int:
            with _transaction(con):
                frame = pd.DataFrame(rows)
                con.register("_scores", frame)
                try:
                    new = con.execute("SELECT s.* FROM _scores s ANTI JOIN transcript_scores t "
                                      "USING (media_id, kind, sidecar_sha256)").fetchdf()
                finally:
                    con.unregister("_scores")
                if len(new):
                    _insert(con, "transcript_scores", new)
                return len(new)
        return _retrying(write)


def _insert(con, table: str, frame: pd.DataFrame) -> None:
    columns = ", ".join(frame.columns)
    con.register("_incoming", frame)
    try:
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _incoming")
    finally:
        con.unregister("_incoming")


# ------------------------------------------------------------------ reading
@contextmanager
def reader(target):
    """A read-only connection for the pipeline's own lookups (never blocks a load)."""
    con = connect(target, read_only=True)
    try:
        yield con
    finally:
        con.close()


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return con.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'lake' AND table_name = ?",
                       [name]).fetchone()[0] > 0


def contained(target, media_ids: Sequence[str]) -> set[str]:
    """Which of these media already have their rows in the warehouse (none when there is no warehouse yet)."""
    lake = Lake.of(target)
    if not media_ids or not lake.exists():
        return set()
    with reader(lake) as con:
        return _present(con, media_ids) if _has_table(con, "media") else set()


def ledgered(target, objects: Sequence[tuple[str, str, str]]) -> dict[tuple, dict]:
    """The ledger rows of these object versions (bucket, key, etag), where they have one."""
    lake = Lake.of(target)
    if not objects or not lake.exists():
        return {}
    with reader(lake) as con:
        return _ledgered(con, objects) if _has_table(con, "ledger") else {}


def query(target, sql: str, params: list | None = None) -> pd.DataFrame:
    """Run analyst SQL on a read-only connection (no writes possible)."""
    with reader(target) as con:
        return con.execute(sql, params or []).fetchdf()


def row_counts(target) -> dict[str, int]:
    with reader(target) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def compact(target) -> None:
    """Move the rows small loads leave inlined in the catalog into Parquet files, and merge the
    small files per-media loads leave (the sweep calls it: readers' scans stay short)."""
    with writer(target) as con:
        _retrying(lambda: con.execute("CALL ducklake_flush_inlined_data('lake')").fetchall())
        _retrying(lambda: con.execute("CALL ducklake_merge_adjacent_files('lake')").fetchall())
