"""The object store: MinIO's client against any S3 server (MinIO, SeaweedFS, AWS)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path

from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error

from scribeline.config import Settings

# Extensions `submit` picks up when given a folder. Files given by name are always
# uploaded: the pipeline judges content, never the extension.
MEDIA_SUFFIXES = {
    ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".webm", ".aif", ".aiff",
    ".wma", ".amr", ".mp4", ".mkv", ".mov", ".m4v", ".avi", ".3gp", ".caf", ".mka",
}


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str
    etag: str = ""
    size: int = 0

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


MAX_KEY_BYTES = 1024  # S3's limit on an object key


def under(prefix: str, key: str) -> str:
    """``prefix/key``; a key that would make it longer than S3 allows is replaced by its hash
    (the original stays in the ledger and the quarantine record)."""
    dest = f"{prefix}/{key}"
    if len(dest.encode()) <= MAX_KEY_BYTES:
        return dest
    return f"{prefix}/{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def client(settings: Settings) -> Minio:
    access, secret = settings.credentials()
    return Minio(
        settings.endpoint,
        access_key=access,
        secret_key=secret,
        secure=settings.s3_secure,
        region=settings.s3_region or None,
    )


def ensure_buckets(settings: Settings, retries: int = 40) -> None:
    """Create the pipeline's buckets if missing (retries while a fresh server warms up)."""
    c = client(settings)
    for attempt in range(retries):
        try:
            for bucket in settings.buckets:
                if not c.bucket_exists(bucket):
                    c.make_bucket(bucket)
            return
        except S3Error as exc:
            if exc.code in {"AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"}:
                raise
            if attempt == retries - 1:
                raise
        except Exception:  # connection refused while the server starts
            if attempt == retries - 1:
                raise
        time.sleep(0.5)


# Text uploaded beside a media ``<key>`` (scribeline/scoring.py): a reference transcript or a
# human-corrected one. Not media: never listed as waiting, never quarantined.
SIDECAR_SUFFIXES = {".ref.txt": "reference", ".corrected.txt": "correction"}


def sidecar_kind(key: str) -> str | None:
    """"reference" or "correction" for a sidecar key, else None."""
    return next((kind for suffix, kind in SIDECAR_SUFFIXES.items() if key.endswith(suffix) and key != suffix), None)


def sidecar_media_key(key: str) -> str:
    """The media key a sidecar belongs to (its key without the suffix)."""
    return next(key[:-len(suffix)] for suffix in SIDECAR_SUFFIXES if key.endswith(suffix))


def _incoming(settings: Settings) -> list[ObjectRef]:
    c = client(settings)
    refs = [
        ObjectRef(settings.bucket_incoming, o.object_name, (o.etag or "").strip('"'), o.size or 0)
        for o in c.list_objects(settings.bucket_incoming, recursive=True)
        if not o.is_dir
    ]
    return sorted(refs, key=lambda r: r.key)


def list_waiting(settings: Settings) -> list[ObjectRef]:
    """The media objects waiting in the incoming bucket (sidecar transcripts left out)."""
    return [r for r in _incoming(settings) if sidecar_kind(r.key) is None]


def list_sidecars(settings: Settings) -> list[ObjectRef]:
    """The sidecar transcripts waiting in the incoming bucket."""
    return [r for r in _incoming(settings) if sidecar_kind(r.key) is not None]


def upload_file(settings: Settings, path: Path, key: str | None = None) -> ObjectRef:
    key = key or path.name
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    result = client(settings).fput_object(settings.bucket_incoming, key, str(path), content_type=content_type)
    return ObjectRef(settings.bucket_incoming, key, (result.etag or "").strip('"'), path.stat().st_size)


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; folders contribute their media files (recursively)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def download(settings: Settings, ref: ObjectRef, dest: Path) -> tuple[str, int, str]:
    """Fetch an object to ``dest``; returns (sha256, size, etag) of what was read."""
    c = client(settings)
    digest = hashlib.sha256()
    size = 0
    response = c.get_object(ref.bucket, ref.key)
    try:
        etag = (response.headers.get("ETag") or ref.etag).strip('"')
        with open(dest, "wb") as fh:
            for chunk in response.stream(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                fh.write(chunk)
    finally:
        response.close()
        response.release_conn()
    return digest.hexdigest(), size, etag


def put_file(settings: Settings, bucket: str, key: str, path: Path, content_type: str) -> ObjectRef:
    result = client(settings).fput_object(bucket, key, str(path), content_type=content_type)
    return ObjectRef(bucket, key, (result.etag or "").strip('"'), path.stat().st_size)


def get_file(settings: Settings, ref: ObjectRef, dest: Path) -> Path:
    client(settings).fget_object(ref.bucket, ref.key, str(dest))
    return dest


def exists(settings: Settings, bucket: str, key: str) -> bool:
    try:
        client(settings).stat_object(bucket, key)
        return True
    except S3Error as exc:
        if exc.code in {"NoSuchKey", "NoSuchObject", "NotFound"}:
            return False
        raise


def current(settings: Settings, ref: ObjectRef) -> ObjectRef | None:
    """The object as it is now (its etag and size), or None when it is gone."""
    try:
        st = client(settings).stat_object(ref.bucket, ref.key)
    except S3Error as exc:
        if exc.code in {"NoSuchKey", "NoSuchObject", "NotFound"}:
            return None
        raise
    return ObjectRef(ref.bucket, ref.key, (st.etag or "").strip('"'), st.size or 0)


def put_json(settings: Settings, bucket: str, key: str, document: dict) -> ObjectRef:
    data = json.dumps(document, indent=2, sort_keys=True, default=str).encode()
    result = client(settings).put_object(bucket, key, io.BytesIO(data), len(data), content_type="application/json")
    return ObjectRef(bucket, key, (result.etag or "").strip('"'), len(data))


def get_bytes(settings: Settings, ref: ObjectRef, limit: int = 16 << 20) -> bytes:
    """A small object's content (sidecar transcripts); larger than ``limit`` bytes raises ValueError."""
    response = client(settings).get_object(ref.bucket, ref.key)
    try:
        data = response.read(limit + 1)
    finally:
        response.close()
        response.release_conn()
    if len(data) > limit:
        raise ValueError(f"{ref.uri} is larger than {limit} bytes")
    return data


def get_json(settings: Settings, bucket: str, key: str) -> dict:
    response = client(settings).get_object(bucket, key)
    try:
        return json.loads(response.read())
    finally:
        response.close()
        response.release_conn()


def move(settings: Settings, ref: ObjectRef, dest_bucket: str, dest_key: str) -> ObjectRef:
    """Copy then delete: the source goes only once the copy is confirmed in place."""
    c = client(settings)
    c.copy_object(dest_bucket, dest_key, CopySource(ref.bucket, ref.key))
    stat = c.stat_object(dest_bucket, dest_key)
    if ref.size and stat.size != ref.size:
        raise RuntimeError(f"copy of {ref.uri} to s3://{dest_bucket}/{dest_key} has {stat.size} bytes, expected {ref.size}")
    c.remove_object(ref.bucket, ref.key)
    return ObjectRef(dest_bucket, dest_key, (stat.etag or "").strip('"'), stat.size or 0)


def list_keys(settings: Settings, bucket: str, prefix: str = "") -> list[str]:
    return sorted(o.object_name for o in client(settings).list_objects(bucket, prefix=prefix, recursive=True) if not o.is_dir)


def list_aged(settings: Settings, bucket: str, prefix: str = "") -> list[tuple[str, dt.datetime, int]]:
    """(key, last modified (UTC), size) of every object under ``prefix`` (the retention flow's view)."""
    return sorted((o.object_name, o.last_modified, o.size or 0)
                  for o in client(settings).list_objects(bucket, prefix=prefix, recursive=True) if not o.is_dir)


def delete(settings: Settings, bucket: str, key: str) -> None:
    client(settings).remove_object(bucket, key)
