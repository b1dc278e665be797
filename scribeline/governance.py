"""Data classes, regions and retention: which rules a media falls under, decided by where it came from.

A source (bucket and key prefix) maps to a data class (``public``, ``internal``,
``sensitive``); the longest matching prefix wins, and anything unmapped is the default
class. A class can add PII entity types to redact and shorten how long each kind of
derived object is kept; it can never lengthen the global ages. A source can also be
mapped to a region: an object from a source of another region than this deployment's is
quarantined unread.

Written in settings as short strings, so that an environment variable can carry them:

- ``SCRIBELINE_DATA_CLASS_SOURCES="scribeline-incoming/hr/=sensitive,scribeline-incoming/press/=public"``
- ``SCRIBELINE_DATA_CLASS_ENTITIES="sensitive=NRP|US_DRIVER_LICENSE"``
- ``SCRIBELINE_RETENTION_DAYS="original=365,normalized=30,redacted_audio=365,unredacted=7"``
- ``SCRIBELINE_DATA_CLASS_RETENTION_DAYS="sensitive=original:30|normalized:7|unredacted:1"``
- ``SCRIBELINE_REGION="eu-west-1"``, ``SCRIBELINE_SOURCE_REGIONS="scribeline-incoming/us/=us-east-1"``
"""

from __future__ import annotations

from dataclasses import dataclass

DATA_CLASSES = ("public", "internal", "sensitive")
# What the retention flow deletes, by kind: the bucket each lives in is in ``Settings``.
RETENTION_KINDS = ("original", "normalized", "redacted_audio", "unredacted")

# Built in, overridable: sensitive sources get more entity types redacted and shorter ages.
DEFAULT_CLASS_ENTITIES = "sensitive=NRP|US_DRIVER_LICENSE|US_PASSPORT|US_BANK_NUMBER|MEDICAL_LICENSE|URL"
DEFAULT_RETENTION_DAYS = "original=365,normalized=30,redacted_audio=365,unredacted=7"
DEFAULT_CLASS_RETENTION_DAYS = "sensitive=original:30|normalized:7|redacted_audio:90|unredacted:1"


class GovernanceError(ValueError):
    """A governance setting that cannot be read: the message says which and why."""


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip() or not value.strip():
            raise GovernanceError(f"{what}: {item!r} is not NAME=VALUE")
        out.append((name.strip(), value.strip()))
    return out


def _days(text: str, what: str, sep: str = "=") -> dict[str, float]:
    """``kind=days,...`` (global) or ``kind:days|...`` (inside a class's entry)."""
    out = {}
    for item in (p.strip() for p in text.split("," if sep == "=" else "|")):
        if not item:
            continue
        kind, _, value = item.partition(sep)
        if kind.strip() not in RETENTION_KINDS:
            raise GovernanceError(f"{what}: unknown kind {kind.strip()!r} (one of {', '.join(RETENTION_KINDS)})")
        try:
            out[kind.strip()] = float(value)
        except ValueError:
            raise GovernanceError(f"{what}: {item!r} needs a number of days") from None
    return out


@dataclass(frozen=True)
class Governance:
    sources: tuple[tuple[str, str], ...]  # (bucket/prefix, class), longest prefix first
    default_class: str
    class_entities: dict[str, tuple[str, ...]]
    retention_days: dict[str, float]
    class_retention_days: dict[str, dict[str, float]]
    region: str
    source_regions: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, settings) -> "Governance":
        sources = _pairs(settings.data_class_sources, "SCRIBELINE_DATA_CLASS_SOURCES")
        classes = {c for _, c in sources} | {settings.default_data_class}
        unknown = classes - set(DATA_CLASSES)
        if unknown:
            raise GovernanceError(f"unknown data class {sorted(unknown)} (one of {', '.join(DATA_CLASSES)})")
        entities = {name: tuple(e for e in value.split("|") if e)
                    for name, value in _pairs(settings.data_class_entities, "SCRIBELINE_DATA_CLASS_ENTITIES")}
        per_class = {name: _days(value, "SCRIBELINE_DATA_CLASS_RETENTION_DAYS", ":")
                     for name, value in _pairs(settings.data_class_retention_days, "SCRIBELINE_DATA_CLASS_RETENTION_DAYS")}
        return cls(
            sources=tuple(sorted(sources, key=lambda p: -len(p[0]))),
            default_class=settings.default_data_class,
            class_entities=entities,
            retention_days=_days(settings.retention_days, "SCRIBELINE_RETENTION_DAYS"),
            class_retention_days=per_class,
            region=settings.region,
            source_regions=tuple(sorted(_pairs(settings.source_regions, "SCRIBELINE_SOURCE_REGIONS"),
                                        key=lambda p: -len(p[0]))),
        )

    def data_class(self, bucket: str, key: str) -> str:
        """The class of an object: its source's longest matching prefix, else the default."""
        return _longest(self.sources, f"{bucket}/{key}") or self.default_class

    def entities(self, data_class: str, base: tuple[str, ...]) -> tuple[str, ...]:
        """The entity types redacted for a class: the configured ones plus the class's own."""
        return tuple(dict.fromkeys(base + self.class_entities.get(data_class, ())))

    def retention(self, data_class: str, kind: str) -> float | None:
        """Days a kind of object of this class is kept (None: forever). A class only shortens."""
        ages = [a for a in (self.retention_days.get(kind), self.class_retention_days.get(data_class, {}).get(kind))
                if a is not None]
        return min(ages) if ages else None

    def source_region(self, bucket: str, key: str) -> str:
        """The region a source is configured in ('' when unmapped: this deployment's)."""
        return _longest(self.source_regions, f"{bucket}/{key}") or ""

    def foreign_region(self, bucket: str, key: str) -> str | None:
        """Why an object may not be processed here, or None: its source is in another region."""
        theirs = self.source_region(bucket, key)
        if self.region and theirs and theirs != self.region:
            return (f"region: s3://{bucket}/{key} comes from a source configured for region {theirs!r}; "
                    f"this deployment processes region {self.region!r} only (left unprocessed)")
        return None


def _longest(pairs: tuple[tuple[str, str], ...], path: str) -> str | None:
    for prefix, value in pairs:  # sorted longest first
        if path.startswith(prefix):
            return value
    return None
