"""What a run shows in Prefect's UI: tags, each media's report, a sweep's table, a long media's progress.

The builders here are plain functions over the stages' results (no Prefect: testable alone).
:class:`RunView` publishes them from a flow run; each of its calls is best-effort (a failure is
logged, never raised: the UI is no reason for a media to fail after its rows are committed).

- Tags: the sweep sets ``source:<bucket>/<first folder>`` and ``ext:<extension>`` when it creates a
  per-media run (tags are set at creation); the run adds ``codec:<codec>`` once normalized,
  ``lang:<language>`` once transcribed (``client.update_flow_run``) and ``class:<data class>`` where
  the stages give one.
- Report: a markdown artifact per media, keyed by its object key (``media-<slug>-<hash>``): duration,
  language, words, PII by type, the quality verdict (failing expectations, guard flags,
  ``needs_review``/``review_reasons``) and when each stage ended.
- Sweep: a table artifact (``scribeline-sweep``) of the objects it saw and what became of each.
- Progress: a media longer than ``LONG_MEDIA_S`` gets a progress artifact once its duration is known
  (after normalize; ingest knows only the byte size), moved as each stage ends.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections import Counter

LONG_MEDIA_S = 300.0  # a media longer than this gets a progress artifact
STAGES = ("ingest", "normalize", "segment", "transcribe", "validate", "redact", "load", "archive")
# The stage each one waits for (validate and redact both wait for transcribe; load for both).
_AFTER = {"normalize": ("ingest",), "segment": ("normalize",), "transcribe": ("segment",), "validate": ("transcribe",),
          "redact": ("transcribe",), "load": ("validate", "redact"), "archive": ("load",)}
SWEEP_KEY = "scribeline-sweep"
SWEEP_OUTCOMES = {"started": "started", "in_flight": "already running", "waiting": "waiting (no room this sweep)",
                  "dead_lettered": "quarantined (its runs ended without finishing it)"}


# ------------------------------------------------------------------ keys and tags
def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")


def artifact_key(object_key: str, kind: str = "media") -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for an object key: readable, and
    distinct for keys that read alike once lowercased (``A.wav``/``a.wav``) through a short hash."""
    digest = hashlib.sha256(object_key.encode()).hexdigest()[:8]
    return f"{kind}-{_slug(object_key)[:60].strip('-') or 'object'}-{digest}"


def _tag_value(value) -> str:
    return re.sub(r"\s+", "_", str(value).strip())[:80]


def source_tags(bucket: str, key: str) -> list[str]:
    """What the sweep knows of an object when it creates its run: where it came from and its extension."""
    folder = key.split("/", 1)[0] if "/" in key.strip("/") else ""
    ext = key.rsplit("/", 1)[-1].rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else ""
    tags = [f"source:{bucket}/{folder}" if folder else f"source:{bucket}"]
    return tags + ([f"ext:{_tag_value(ext)}"] if ext else [])


def media_tags(results: dict) -> list[str]:
    """What a media's stages have found out so far: its codec (after normalize), its language (after
    transcribe) and its data class where a stage gives one."""
    tags = []
    codec = (results.get("normalize") or results.get("segment") or {}).get("info", {}).get("codec")
    if codec:
        tags.append(f"codec:{_tag_value(codec)}")
    language = (results.get("transcribe") or {}).get("language")
    if language:
        tags.append(f"lang:{_tag_value(language)}")
    # HOOK (data class): tagged once a stage result carries a ``data_class`` (the governance work adds
    # it to media); nothing here sets it.
    for stage in ("ingest", "normalize", "redact", "validate", "load"):
        value = (results.get(stage) or {}).get("data_class") if isinstance(results.get(stage), dict) else None
        if value:
            tags.append(f"class:{_tag_value(value)}")
            break
    return tags


# ---------------------------------------------------------------------- report
def _md(text) -> str:
    """Text shown as is in markdown (object keys and reasons may hold *, _, |, < ...)."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~])", r"\\\1", str(text)).replace("\n", " ")


def review_reasons(results: dict) -> list[str]:
    """The guards' flags, then the failing critical checks: what the warehouse's ``review_reasons`` holds."""
    flags = (results.get("redact") or {}).get("transcript", results.get("transcribe") or {}).get("flags", [])
    return list(dict.fromkeys([f["name"] for f in flags] + list((results.get("validate") or {}).get("review", []))))


def seconds_since(started_at: dt.datetime, ended_at: dict[str, dt.datetime]) -> dict[str, float]:
    """Each stage's end as seconds after ``started_at`` (never below 0)."""
    return {stage: max((t - started_at).total_seconds(), 0.0) for stage, t in ended_at.items()}


def stage_timings(ended: dict[str, float]) -> list[dict]:
    """Each stage's end (seconds since the media's processing began) and how long after the stage(s)
    it waited for it ended: the media's own wall-clock, waits for the rest of its wave included."""
    rows = []
    for stage in STAGES:
        if stage not in ended:
            continue
        before = max((ended[s] for s in _AFTER.get(stage, ()) if s in ended), default=0.0)
        rows.append({"stage": stage, "ended_s": round(ended[stage], 2), "took_s": round(max(ended[stage] - before, 0.0), 2)})
    return rows


def media_markdown(outcome: dict, results: dict, ended: dict[str, float] | None = None) -> str:
    """A media's report: the facts an operator looks for on its run's Artifacts tab."""
    key, state = outcome.get("key", results.get("ingest", {}).get("key", "?")), outcome.get("state", "?")
    lines = [f"# {_md(key)}", ""]
    ingest = results.get("ingest") or {}
    segment = results.get("segment") or results.get("normalize") or {}
    redact = results.get("redact") or {}
    transcript = redact.get("transcript") or results.get("transcribe") or {}
    reasons = review_reasons(results)
    verdict = {"quarantined": "quarantined", "finished": "finished earlier"}.get(state, state)
    if state == "processed" and reasons:
        verdict = "needs review"
    facts = [("Outcome", f"**{verdict}**")]
    if state == "quarantined":
        facts += [("Stage", _md(outcome.get("stage", ""))), ("Reason", _md(outcome.get("reason", ""))),
                  ("Quarantine record", _md(outcome.get("quarantine_record", "")))]
    if outcome.get("note"):
        facts.append(("Note", _md(outcome["note"])))
    if ingest:
        facts += [("Object", _md(f"s3://{ingest.get('bucket')}/{ingest.get('key')}")),
                  ("Size", f"{ingest.get('size', 0) / 1e6:.2f} MB"), ("Media id", f"`{ingest.get('run_key', '')}`")]
    duration = segment.get("duration_s", outcome.get("duration_s"))
    if duration is not None:
        facts.append(("Duration", f"{duration:.1f} s"))
    info = segment.get("info") or {}
    if info:
        facts.append(("Codec", _md(f"{info.get('codec')}, {info.get('sample_rate')} Hz, {info.get('channels')} ch")))
    if "speech_s" in segment:
        facts.append(("Speech found", f"{segment['speech_s']:.1f} s"))
    if transcript:
        words = sum(len(s["words"]) or len(s["text"].split()) for s in transcript.get("segments", []))
        facts += [("Language", f"{_md(transcript.get('language'))} (p = {transcript.get('language_probability', 0):.2f})"),
                  ("Words", str(words)), ("Segments", str(len(transcript.get("segments", []))))]
    elif outcome.get("language"):
        facts += [("Language", _md(outcome["language"])), ("Words", str(outcome.get("words", "")))]
    if outcome.get("seconds") is not None:
        facts.append(("Processing", f"{outcome['seconds']:.1f} s"))
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts] + [""]

    if "entities" in redact:
        counts = Counter(e["entity_type"] for e in redact["entities"])
        lines += ["## PII redacted", ""]
        lines += (["| Entity type | Count |", "|---|---:|"] + [f"| {_md(t)} | {n} |" for t, n in sorted(counts.items())]
                  if counts else ["None found."])
        lines.append("")

    checks = (results.get("validate") or {}).get("checks")
    if checks is not None or transcript.get("flags"):
        failing = [c for c in checks or [] if not c["success"]]
        quality_ok = (results.get("validate") or {}).get("quality_ok")
        lines += ["## Quality", "",
                  f"- Quality checks: **{'all passed' if not failing else f'{len(failing)} of {len(checks or [])} failed'}**"
                  f" (quality\\_ok = {str(bool(quality_ok)).lower()})",
                  f"- needs\\_review: **{str(bool(reasons)).lower()}**"
                  + (f"; review\\_reasons: {', '.join(_md(r) for r in reasons)}" if reasons else "")]
        if failing:
            lines += ["", "| Failing expectation | Table.column | Severity | Unexpected |", "|---|---|---|---:|"]
            lines += [f"| {_md(c['expectation'])} | {_md(c['table'])}.{_md(c['column'])} | {c['severity']} | "
                      f"{c['unexpected_count']} of {c['element_count']} |" for c in failing]
        flags = transcript.get("flags") or []
        if flags:
            lines += ["", "| Guard flag | Where | Reason |", "|---|---|---|"]
            lines += [f"| {_md(f['name'])} | {_where(f)} | {_md(f['reason'])} |" for f in flags]
        lines.append("")

    timings = stage_timings(ended or {})
    if timings:
        lines += ["## Stage timings", "", "| Stage | Ended (s after start) | Took (s) |", "|---|---:|---:|"]
        lines += [f"| {t['stage']} | {t['ended_s']:.2f} | {t['took_s']:.2f} |" for t in timings] + [""]
    return "\n".join(lines)


def _where(flag: dict) -> str:
    if flag.get("start") is None:
        return "whole media"
    return f"{flag['start']:.1f}–{flag['end']:.1f} s"


def media_description(outcome: dict) -> str:
    """The one line the Artifacts page lists beside the key."""
    key, state = outcome.get("key", "?"), outcome.get("state", "?")
    if state == "quarantined":
        return f"{key}: quarantined at {outcome.get('stage')}"
    parts = [f"{key}: {state}"]
    if outcome.get("duration_s") is not None:
        parts.append(f"{outcome['duration_s']} s")
    if outcome.get("language"):
        parts.append(str(outcome["language"]))
    if outcome.get("words") is not None:
        parts.append(f"{outcome['words']} words")
    return ", ".join(parts)


# ----------------------------------------------------------------------- sweep
def sweep_rows(outcomes: list[tuple]) -> list[dict]:
    """The sweep's table: one row per object, ``outcomes`` as (ObjectRef, outcome, attempt or None)."""
    return [{"object": f"s3://{ref.bucket}/{ref.key}", "size_mb": round((ref.size or 0) / 1e6, 2),
             "outcome": SWEEP_OUTCOMES.get(outcome, outcome), "attempt": attempt or ""}
            for ref, outcome, attempt in outcomes]


# -------------------------------------------------------------------- progress
def progress_percent(results: dict) -> float:
    """The share of a media's stages that have ended (transcription is the long one)."""
    return round(100.0 * sum(s in results for s in STAGES) / len(STAGES), 1)


def is_long(results: dict) -> bool:
    duration = (results.get("segment") or results.get("normalize") or {}).get("duration_s")
    return duration is not None and duration > LONG_MEDIA_S


# ------------------------------------------------------------------- publishing
class RunView:
    """Publishes the above from the current flow run; outside a flow run it does nothing."""

    def __init__(self, log=None):
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        self.flow_run_id = ctx.flow_run.id if ctx and ctx.flow_run else None
        self.tags = set(ctx.flow_run.tags or []) if self.flow_run_id else set()
        self.log = log
        self._progress: dict[str, object] = {}  # object key -> progress artifact id

    def _guard(self, what: str, fn, *args):
        if self.flow_run_id is None:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - the UI is informative only
            if self.log:
                self.log.warning("could not publish %s to Prefect: %s: %s", what, type(exc).__name__, exc)
            return None

    def tag(self, all_results: list[dict]) -> None:
        """Add what the stages found (codec, language, data class) to the run's tags."""
        self._guard("tags", self._tag_now, all_results)

    def _tag_now(self, all_results: list[dict]) -> None:
        from prefect import get_client

        tags = self.tags | {t for r in all_results for t in media_tags(r)}
        if tags != self.tags:
            with get_client(sync_client=True) as client:  # tags are replaced, not merged: all of them
                client.update_flow_run(self.flow_run_id, tags=sorted(tags))
            self.tags = tags

    def progress(self, key: str, results: dict) -> None:
        """Create (once its duration is known) or move a long media's progress artifact."""
        if not is_long(results):
            return
        self._guard("progress", self._progress_now, key, results)

    def _progress_now(self, key: str, results: dict) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        done = [s for s in STAGES if s in results]
        description = f"{key}: {done[-1] if done else 'waiting'} done ({len(done)} of {len(STAGES)} stages)"
        if key not in self._progress:
            self._progress[key] = create_progress_artifact(progress_percent(results), key=artifact_key(key, "progress"),
                                                           description=description)
        else:
            update_progress_artifact(self._progress[key], progress_percent(results), description=description)

    def report(self, outcome: dict, results: dict, ended_at: dict[str, dt.datetime], started_at: dt.datetime) -> None:
        """The media's markdown artifact; ``ended_at``: when each stage's task run ended."""
        from prefect.artifacts import create_markdown_artifact

        self._guard("report", lambda: create_markdown_artifact(
            media_markdown(outcome, results, seconds_since(started_at, ended_at)), key=artifact_key(outcome["key"]),
            description=media_description(outcome)))


def publish_sweep(outcomes: list[tuple], log=None) -> None:
    """The sweep's table artifact (when it saw any object); best-effort."""
    if not outcomes:
        return
    try:
        from prefect.artifacts import create_table_artifact

        counts = Counter(SWEEP_OUTCOMES.get(o, o) for _, o, _ in outcomes)
        create_table_artifact(sweep_rows(outcomes), key=SWEEP_KEY, description=(
            f"sweep at {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC: "
            + ", ".join(f"{n} {o}" for o, n in counts.items())))
    except Exception as exc:  # noqa: BLE001 - informative only
        if log:
            log.warning("could not publish the sweep's table: %s: %s", type(exc).__name__, exc)
