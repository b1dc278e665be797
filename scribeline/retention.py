"""Retention: delete what a media left behind in the object store once its class's age for that kind is past.

Kinds and where they live (the warehouse keeps only redacted data and is not touched):

- ``original``: the source object, moved to the processed bucket (``<sha16>/<key>``);
- ``normalized``: the 16 kHz tracks in the normalized bucket (``<media_id>/...``);
- ``redacted_audio``: the beeped/muted copies (``<class>/<sha16>/<key>...``);
- ``unredacted``: kept unredacted transcripts in the restricted bucket (``unredacted/<class>/...``);
- ``stage_results``: Prefect's persisted stage results on this machine's disk. They include the
  transcribe stage's output, which is unredacted text, so they go at the shortest ``unredacted`` age.

A kind's age comes from the object's last-modified time. Every deletion is recorded in the
warehouse's ``retention_log`` (never the content). The quarantine bucket is left alone: a
quarantined object waits for a person.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from scribeline import storage, warehouse
from scribeline.config import Settings
from scribeline.governance import DATA_CLASSES


@dataclass
class Deletion:
    kind: str
    bucket: str | None
    key: str
    data_class: str
    age_days: float
    limit_days: float
    size_bytes: int


def _age(now: dt.datetime, modified: dt.datetime) -> float:
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=dt.timezone.utc)
    return (now - modified).total_seconds() / 86400


def _media_classes(settings: Settings) -> dict[str, str]:
    if not settings.warehouse.exists():
        return {}
    rows = warehouse.query(settings.warehouse, "SELECT media_id, data_class FROM media")
    return {r.media_id: r.data_class or settings.default_data_class for r in rows.itertuples()}


def _class_in_key(key: str, settings: Settings) -> str:
    head = key.split("/", 1)[0]
    return head if head in DATA_CLASSES else settings.default_data_class


def due(settings: Settings, now: dt.datetime | None = None) -> list[Deletion]:
    """Every object past its age, by kind (nothing is deleted here)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    gov = settings.governance
    classes = _media_classes(settings)

    def class_of(kind: str, key: str) -> str:
        if kind == "original":  # <sha16>/<the source key>
            return gov.data_class(settings.bucket_incoming, key.split("/", 1)[-1])
        if kind == "normalized":  # <media_id>/<track>
            return classes.get(key.split("/", 1)[0], settings.default_data_class)
        if kind == "unredacted":  # unredacted/<class>/...
            return _class_in_key(key.removeprefix("unredacted/"), settings)
        return _class_in_key(key, settings)  # redacted_audio: <class>/...

    out: list[Deletion] = []
    for kind, bucket in (("original", settings.bucket_processed), ("normalized", settings.bucket_normalized),
                         ("redacted_audio", settings.bucket_redacted_audio), ("unredacted", settings.bucket_restricted)):
        for key, modified, size in storage.list_aged(settings, bucket):
            data_class = class_of(kind, key)
            limit = gov.retention(data_class, kind)
            age = _age(now, modified)
            if limit is not None and age > limit:
                out.append(Deletion(kind, bucket, key, data_class, round(age, 4), limit, size))
    results = stage_results_dir()
    limits = [a for a in (gov.retention(c, "unredacted") for c in DATA_CLASSES) if a is not None]
    if results and results.is_dir() and limits:
        limit = min(limits)
        for path in sorted(p for p in results.rglob("*") if p.is_file()):
            st = path.stat()
            age = _age(now, dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc))
            if age > limit:
                out.append(Deletion("stage_results", None, str(path), "*", round(age, 4), limit, st.st_size))
    return out


def stage_results_dir() -> Path | None:
    """Where Prefect persists task results on this machine (``PREFECT_LOCAL_STORAGE_PATH``)."""
    where = os.environ.get("PREFECT_LOCAL_STORAGE_PATH")
    if where:
        return Path(where).expanduser()
    home = os.environ.get("PREFECT_HOME")
    return Path(home).expanduser() / "storage" if home else None


def apply(settings: Settings, now: dt.datetime | None = None) -> list[Deletion]:
    """Delete everything :func:`due`, then record it in ``retention_log``. Returns the deletions."""
    deletions = due(settings, now)
    done = []
    for d in deletions:
        if d.bucket is None:
            Path(d.key).unlink(missing_ok=True)
        else:
            storage.delete(settings, d.bucket, d.key)
        done.append(d)
    stamp = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    warehouse.record_deletions(settings.warehouse, [{"deleted_at": stamp, **asdict(d)} for d in done])
    return done
