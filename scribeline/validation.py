"""Great Expectations suites over a transcript's segments and words.

Two severities, chosen by configuration (``Settings.critical_expectations``, names as
:func:`check_name` writes them, or expectation types). By default ``critical`` are the
structure analysts rely on (timestamps ordered and inside the media, text present) and
the transcription guards' findings (no phrase repeated within a window, no impossible
word rate, no guard flag); a failure is a verdict, not a quarantine: the media is loaded
with ``needs_review`` and the failing checks among its ``review_reasons``. ``warning``
expectations watch quality signals (log-probability, no-speech probability, compression
ratio); they set ``quality_ok = false``. Every expectation's result is returned.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from scribeline import guards
from scribeline.config import DEFAULT_CRITICAL_EXPECTATIONS
from scribeline.transcript import Transcript

_lock = threading.Lock()


@dataclass
class CheckResult:
    table: str
    expectation: str
    column: str
    severity: str  # critical | warning
    success: bool
    element_count: int
    unexpected_count: int
    details: str  # JSON of the expectation's kwargs and observed value


def check_name(c: CheckResult) -> str:
    """``table.column:expectation_type``, the name configuration and ``review_reasons`` use
    (a pair's columns joined by ``+``: names are listed comma-separated)."""
    return f"{c.table}.{c.column.replace(',', '+')}:{c.expectation}"


def _class_name(expectation_type: str) -> str:
    return "".join(part.capitalize() for part in expectation_type.split("_"))


def is_critical(c: CheckResult, critical: Sequence[str]) -> bool:
    """Whether ``critical`` names the check: by :func:`check_name`, by expectation type
    (``expect_column_values_to_be_null``) or by class (``ExpectColumnValuesToBeNull``)."""
    return bool({check_name(c), c.expectation, _class_name(c.expectation)} & set(critical))


@dataclass
class ValidationReport:
    checks: list[CheckResult]

    def classified(self, critical: Sequence[str]) -> "ValidationReport":
        """The same results, with severities from another list of critical expectations."""
        return ValidationReport([dataclasses.replace(c, severity="critical" if is_critical(c, critical) else "warning")
                                 for c in self.checks])

    @property
    def passed(self) -> bool:
        return all(c.success for c in self.checks if c.severity == "critical")

    @property
    def quality_ok(self) -> bool:
        return all(c.success for c in self.checks)

    def failures(self, severity: str = "critical") -> list[CheckResult]:
        return [c for c in self.checks if not c.success and c.severity == severity]

    @property
    def review_reasons(self) -> list[str]:
        """The failing critical checks' names (each once)."""
        return list(dict.fromkeys(check_name(c) for c in self.failures()))


def frames(transcripts: Sequence[tuple[Transcript, float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Segment and word rows of several transcripts, keyed by ``item`` (their position).

    Per-media facts become columns so one expectation serves every media at once:
    ``media_end_s`` (the media's duration, plus 50 ms because word alignment rounds
    to 20-ms frames) and ``prev_start_s`` (the previous segment's start in the same media).
    The guards' view, per decoded window (a segment's channel and window index), on each
    of its segments: ``repeated_phrase`` (``guards.repeated_phrase`` finds one in the
    window's text), ``word_rate`` (the window's words per second from its first segment's
    start to its last one's end; null under ``guards.WORD_RATE_MIN_WORDS`` words) and
    ``guard_flags`` (the names of the transcript's flags on that window or on the whole
    transcript, comma-separated; null when none).
    """
    seg_rows, word_rows = [], []
    for item, (transcript, duration_s) in enumerate(transcripts):
        end = duration_s + 0.05
        prev = None
        windows = _windows(transcript)
        for i, s in enumerate(transcript.segments):
            seg_rows.append(dict(item=item, segment_index=i, start_s=s.start, end_s=s.end, text=s.text,
                                 avg_logprob=s.avg_logprob, no_speech_prob=s.no_speech_prob,
                                 compression_ratio=s.compression_ratio, channel=-1 if s.channel is None else s.channel,
                                 media_end_s=end, prev_start_s=prev, **windows[(s.channel, s.window_index)],
                                 guard_flags=_flags_on(transcript, s)))
            prev = s.start
            for w in s.words:
                word_rows.append(dict(item=item, segment_index=i, start_s=w.start, end_s=w.end, word=w.word,
                                      probability=w.probability, media_end_s=end))
    seg_cols = ["item", "segment_index", "start_s", "end_s", "text", "avg_logprob", "no_speech_prob",
                "compression_ratio", "channel", "media_end_s", "prev_start_s", "repeated_phrase", "word_rate", "guard_flags"]
    word_cols = ["item", "segment_index", "start_s", "end_s", "word", "probability", "media_end_s"]
    segments = pd.DataFrame(seg_rows, columns=seg_cols)
    segments["prev_start_s"] = segments["prev_start_s"].astype("float64")
    segments["word_rate"] = segments["word_rate"].astype("float64")
    segments["repeated_phrase"] = segments["repeated_phrase"].astype("bool")
    segments["guard_flags"] = segments["guard_flags"].astype("object")
    return segments, pd.DataFrame(word_rows, columns=word_cols)


def _windows(transcript: Transcript) -> dict[tuple, dict]:
    """Per (channel, window index): whether a phrase repeats in its text, and its word rate."""
    texts: dict[tuple, list[str]] = {}
    spans: dict[tuple, list[float]] = {}
    for s in transcript.segments:
        key = (s.channel, s.window_index)
        texts.setdefault(key, []).append(s.text)
        span = spans.setdefault(key, [s.start, s.end])
        span[0], span[1] = min(span[0], s.start), max(span[1], s.end)
    out = {}
    for key, parts in texts.items():
        text = " ".join(parts)
        words = len(guards.words_of(text))
        seconds = spans[key][1] - spans[key][0]
        rate = None
        if words >= guards.WORD_RATE_MIN_WORDS:
            rate = round(words / seconds, 3) if seconds > 0 else float("inf")
        out[key] = dict(repeated_phrase=guards.repeated_phrase(text) is not None, word_rate=rate)
    return out


def _flags_on(transcript: Transcript, s) -> str | None:
    """The names of the transcript's flags that cover segment ``s`` (its window, or all of it)."""
    names = [f.name for f in transcript.flags
             if f.window_index is None or (f.window_index == s.window_index and (
                 f.start is None or f.end is None or (f.start <= s.end and s.start <= f.end)))]
    return ",".join(dict.fromkeys(names)) or None


def _suites():
    """(column reported to analysts, expectation) per table. Which are critical is configuration:
    ``config.DEFAULT_CRITICAL_EXPECTATIONS`` by default (see :func:`validate_many`)."""
    import great_expectations as gx

    E = gx.expectations
    inside_media = dict(column_A="media_end_s", or_equal=True)
    segments = [
        ("text", E.ExpectColumnValuesToNotBeNull(column="text")),
        ("text", E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1)),
        ("start_s", E.ExpectColumnValuesToBeBetween(column="start_s", min_value=0)),
        ("start_s", E.ExpectColumnPairValuesAToBeGreaterThanB(column_B="start_s", **inside_media)),
        ("end_s", E.ExpectColumnValuesToBeBetween(column="end_s", min_value=0)),
        ("end_s", E.ExpectColumnPairValuesAToBeGreaterThanB(column_B="end_s", **inside_media)),
        ("end_s,start_s", E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end_s", column_B="start_s", or_equal=True)),
        # Ordered within each media (the first segment has no predecessor).
        ("start_s", E.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="start_s", column_B="prev_start_s", or_equal=True, ignore_row_if="either_value_is_missing")),
        # The transcription guards' findings (see ``guards`` and :func:`frames`).
        ("repeated_phrase", E.ExpectColumnValuesToBeInSet(column="repeated_phrase", value_set=[False])),
        ("word_rate", E.ExpectColumnValuesToBeBetween(column="word_rate", min_value=0,
                                                                   max_value=guards.MAX_WORDS_PER_S)),
        ("guard_flags", E.ExpectColumnValuesToBeNull(column="guard_flags")),
        ("avg_logprob", E.ExpectColumnValuesToBeBetween(column="avg_logprob", min_value=-1.0, max_value=0.0, mostly=0.9)),
        ("no_speech_prob", E.ExpectColumnValuesToBeBetween(column="no_speech_prob", min_value=0.0, max_value=1.0)),
        ("compression_ratio", E.ExpectColumnValuesToBeBetween(column="compression_ratio", min_value=0.0, max_value=2.4, mostly=0.9)),
    ]
    words = [
        ("start_s", E.ExpectColumnValuesToBeBetween(column="start_s", min_value=0)),
        ("start_s", E.ExpectColumnPairValuesAToBeGreaterThanB(column_B="start_s", **inside_media)),
        ("end_s,start_s", E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end_s", column_B="start_s", or_equal=True)),
        ("probability", E.ExpectColumnValuesToBeBetween(column="probability", min_value=0.0, max_value=1.0)),
    ]
    # The normalized media: facts from probing and VAD (see :func:`media_frame`).
    media = [
        ("duration_s", E.ExpectColumnValuesToBeBetween(column="duration_s", min_value=0.1, max_value=MAX_MEDIA_S)),
        ("sample_rate", E.ExpectColumnValuesToBeBetween(column="sample_rate", min_value=8000)),
        ("speech_ratio", E.ExpectColumnValuesToBeBetween(column="speech_ratio", min_value=MIN_SPEECH_RATIO,
                                                         max_value=1.0)),
    ]
    return {"segments": segments, "words": words, "media": media}


def _redacted_suite():
    """The redacted output, before it is loaded: no structured value left in any spelling."""
    import great_expectations as gx

    return {"redacted": [("residual_pii", gx.expectations.ExpectColumnValuesToBeNull(column="residual_pii"))]}


MAX_MEDIA_S = 12 * 3600.0
MIN_SPEECH_RATIO = 0.02  # less: mostly silence or music (a warning, not a verdict)


def media_frame(items: Sequence[tuple[float, dict | None]]) -> pd.DataFrame:
    """One row per media: its duration and, where given, ``{"sample_rate", "speech_s"}`` from normalize/segment."""
    rows = []
    for item, (duration_s, facts) in enumerate(items):
        facts = facts or {}
        speech = facts.get("speech_s")
        rows.append(dict(item=item, duration_s=duration_s, sample_rate=facts.get("sample_rate"),
                         speech_ratio=None if speech is None or not duration_s else round(speech / duration_s, 4)))
    df = pd.DataFrame(rows, columns=["item", "duration_s", "sample_rate", "speech_ratio"])
    return df.astype({"duration_s": "float64", "sample_rate": "float64", "speech_ratio": "float64"})


def redacted_frame(transcript: Transcript) -> pd.DataFrame:
    """Every text bound for the warehouse (segment texts, words, and the whole text, where a number may
    continue across segments) with what :func:`spoken_pii.residual_pii` finds left in it."""
    from scribeline.spoken_pii import residual_pii

    texts = [("segment", s.text) for s in transcript.segments]
    texts += [("word", w.word) for s in transcript.segments for w in s.words]
    texts.append(("transcript", " ".join(s.text for s in transcript.segments)))
    rows = [dict(item=0, kind=kind, residual_pii=",".join(k for _, _, k in residual_pii(text)) or None)
            for kind, text in texts]
    return pd.DataFrame(rows, columns=["item", "kind", "residual_pii"]).astype({"residual_pii": "object"})


@functools.lru_cache(maxsize=1)
def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")  # in memory: writes no files
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("scribeline")
    return context, {
        name: source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        for name in ("segments", "words", "media", "redacted")
    }


def warm_up() -> None:
    """Import Great Expectations and build the context now (seconds of CPU time), ahead of the first validation."""
    with _lock:
        _context()


def _missing(df: pd.DataFrame, expectation_type: str, kwargs: dict) -> pd.Series:
    """Rows an expectation skips as missing, as GE counts them (for not-null, nulls are the failures)."""
    if expectation_type in ("expect_column_values_to_not_be_null", "expect_column_values_to_be_null"):
        return pd.Series(False, index=df.index)
    if "column" in kwargs:
        return df[kwargs["column"]].isna()
    a, b = df[kwargs["column_A"]].isna(), df[kwargs["column_B"]].isna()
    return (a | b) if kwargs.get("ignore_row_if") == "either_value_is_missing" else (a & b)


def validate(transcript: Transcript, duration_s: float,
             critical: Sequence[str] = DEFAULT_CRITICAL_EXPECTATIONS, media: dict | None = None) -> ValidationReport:
    return validate_many([(transcript, duration_s, media)], critical)[0]


def validate_many(transcripts: Sequence[tuple],
                  critical: Sequence[str] = DEFAULT_CRITICAL_EXPECTATIONS) -> list[ValidationReport]:
    """Validate several (transcript, media duration[, media facts]) with one Great Expectations run per table.

    A run costs about the same for one media's rows as for many, so the flow's
    concurrent validate tasks are served together (see ``batching.Coalescer``).
    Each media gets its own report: counts and success are computed from the
    unexpected rows that belong to it, with each expectation's ``mostly``. A check is
    ``critical`` when ``critical`` names it (:func:`is_critical`), else ``warning``.
    Media facts (``{"sample_rate", "speech_s"}``) feed the ``media`` suite.
    """
    pairs = [(t[0], t[1]) for t in transcripts]
    segments, words = frames(pairs)
    media = media_frame([(t[1], t[2] if len(t) > 2 else None) for t in transcripts])
    checks = _run({"segments": segments, "words": words, "media": media}, _suites(), len(transcripts))
    return [ValidationReport(c).classified(critical) for c in checks]


def validate_redacted(transcript: Transcript, critical: Sequence[str] = DEFAULT_CRITICAL_EXPECTATIONS) -> ValidationReport:
    """The redacted output's suite (``redacted``): what the load would write holds no structured value."""
    return ValidationReport(_run({"redacted": redacted_frame(transcript)}, _redacted_suite(), 1)[0]).classified(critical)


def _run(dfs: dict[str, pd.DataFrame], suites: dict, n_items: int) -> list[list[CheckResult]]:
    """Each table's suite over its frame (rows carry ``item``); results split per item."""
    import great_expectations as gx

    checks: list[list[CheckResult]] = [[] for _ in range(n_items)]
    with _lock:  # the ephemeral context is shared by the process's threads
        context, batch_defs = _context()
        for table, expectations in suites.items():
            df = dfs[table]
            suite = gx.ExpectationSuite(name=f"{table}-{threading.get_ident()}")
            for column, expectation in expectations:
                expectation.meta = {"column": column}  # results come back in another order
                suite.add_expectation(expectation)
            batch = batch_defs[table].get_batch(batch_parameters={"dataframe": df})
            result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
            for r in result.results:
                cfg = r.expectation_config
                kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
                meta = cfg.meta or {}
                missing = _missing(df, cfg.type, kwargs)
                unexpected_items = df.loc[list((r.result or {}).get("unexpected_index_list") or []), "item"]
                info = r.exception_info or {}
                if info.get("raised_exception") or any(isinstance(v, dict) and v.get("raised_exception") for v in info.values()):
                    raise RuntimeError(f"{cfg.type} on {table} raised: {info}")
                for item in range(n_items):
                    rows = df["item"] == item
                    element_count = int(rows.sum())
                    unexpected = int((unexpected_items == item).sum())
                    evaluated = element_count - int((missing & rows).sum())
                    mostly = kwargs.get("mostly") or 1.0
                    success = unexpected == 0 if mostly >= 1.0 else (
                        evaluated == 0 or (evaluated - unexpected) / evaluated >= mostly)
                    checks[item].append(CheckResult(
                        table=table, expectation=cfg.type, column=meta.get("column", kwargs.get("column", "")),
                        severity="warning", success=success, element_count=element_count,
                        unexpected_count=unexpected,
                        details=json.dumps({"kwargs": kwargs, "evaluated": evaluated}, default=str),
                    ))
    return checks
