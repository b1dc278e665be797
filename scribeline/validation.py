"""Great Expectations suites over a transcript's segments and words.

Two severities: ``critical`` expectations guard the structure analysts rely on
(timestamps ordered and inside the media, text present); a failure quarantines
the media. ``warning`` expectations watch quality signals (log-probability,
no-speech probability, compression ratio); they are stored and flagged on the
``media`` row, but do not stop the load. Every expectation's result is returned.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from scribeline.transcription import Transcript

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


@dataclass
class ValidationReport:
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(c.success for c in self.checks if c.severity == "critical")

    @property
    def quality_ok(self) -> bool:
        return all(c.success for c in self.checks)

    def failures(self, severity: str = "critical") -> list[CheckResult]:
        return [c for c in self.checks if not c.success and c.severity == severity]


def frames(transcripts: Sequence[tuple[Transcript, float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Segment and word rows of several transcripts, keyed by ``item`` (their position).

    Per-media facts become columns so one expectation serves every media at once:
    ``media_end_s`` (the media's duration, plus 50 ms because word alignment rounds
    to 20-ms frames) and ``prev_start_s`` (the previous segment's start in the same media).
    """
    seg_rows, word_rows = [], []
    for item, (transcript, duration_s) in enumerate(transcripts):
        end = duration_s + 0.05
        prev = None
        for i, s in enumerate(transcript.segments):
            seg_rows.append(dict(item=item, segment_index=i, start_s=s.start, end_s=s.end, text=s.text,
                                 avg_logprob=s.avg_logprob, no_speech_prob=s.no_speech_prob,
                                 compression_ratio=s.compression_ratio, channel=-1 if s.channel is None else s.channel,
                                 media_end_s=end, prev_start_s=prev))
            prev = s.start
            for w in s.words:
                word_rows.append(dict(item=item, segment_index=i, start_s=w.start, end_s=w.end, word=w.word,
                                      probability=w.probability, media_end_s=end))
    seg_cols = ["item", "segment_index", "start_s", "end_s", "text", "avg_logprob", "no_speech_prob",
                "compression_ratio", "channel", "media_end_s", "prev_start_s"]
    word_cols = ["item", "segment_index", "start_s", "end_s", "word", "probability", "media_end_s"]
    segments = pd.DataFrame(seg_rows, columns=seg_cols)
    segments["prev_start_s"] = segments["prev_start_s"].astype("float64")
    return segments, pd.DataFrame(word_rows, columns=word_cols)


def _suites():
    """(severity, column reported to analysts, expectation) per table."""
    import great_expectations as gx

    E = gx.expectations
    inside_media = dict(column_A="media_end_s", or_equal=True)
    segments = [
        ("critical", "text", E.ExpectColumnValuesToNotBeNull(column="text")),
        ("critical", "text", E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1)),
        ("critical", "start_s", E.ExpectColumnValuesToBeBetween(column="start_s", min_value=0)),
        ("critical", "start_s", E.ExpectColumnPairValuesAToBeGreaterThanB(column_B="start_s", **inside_media)),
        ("critical", "end_s", E.ExpectColumnValuesToBeBetween(column="end_s", min_value=0)),
        ("critical", "end_s", E.ExpectColumnPairValuesAToBeGreaterThanB(column_B="end_s", **inside_media)),
        ("critical", "end_s,start_s", E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end_s", column_B="start_s", or_equal=True)),
        # Ordered within each media (the first segment has no predecessor).
        ("critical", "start_s", E.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="start_s", column_B="prev_start_s", or_equal=True, ignore_row_if="either_value_is_missing")),
        ("warning", "avg_logprob", E.ExpectColumnValuesToBeBetween(column="avg_logprob", min_value=-1.0, max_value=0.0, mostly=0.9)),
        ("warning", "no_speech_prob", E.ExpectColumnValuesToBeBetween(column="no_speech_prob", min_value=0.0, max_value=1.0)),
        ("warning", "compression_ratio", E.ExpectColumnValuesToBeBetween(column="compression_ratio", min_value=0.0, max_value=2.4, mostly=0.9)),
    ]
    words = [
        ("critical", "start_s", E.ExpectColumnValuesToBeBetween(column="start_s", min_value=0)),
        ("critical", "start_s", E.ExpectColumnPairValuesAToBeGreaterThanB(column_B="start_s", **inside_media)),
        ("critical", "end_s,start_s", E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end_s", column_B="start_s", or_equal=True)),
        ("warning", "probability", E.ExpectColumnValuesToBeBetween(column="probability", min_value=0.0, max_value=1.0)),
    ]
    return {"segments": segments, "words": words}


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
        for name in ("segments", "words")
    }


def warm_up() -> None:
    """Import Great Expectations and build the context now (seconds of CPU time), ahead of the first validation."""
    with _lock:
        _context()


def _missing(df: pd.DataFrame, expectation_type: str, kwargs: dict) -> pd.Series:
    """Rows an expectation skips as missing, as GE counts them (for not-null, nulls are the failures)."""
    if expectation_type == "expect_column_values_to_not_be_null":
        return pd.Series(False, index=df.index)
    if "column" in kwargs:
        return df[kwargs["column"]].isna()
    a, b = df[kwargs["column_A"]].isna(), df[kwargs["column_B"]].isna()
    return (a | b) if kwargs.get("ignore_row_if") == "either_value_is_missing" else (a & b)


def validate(transcript: Transcript, duration_s: float) -> ValidationReport:
    return validate_many([(transcript, duration_s)])[0]


def validate_many(transcripts: Sequence[tuple[Transcript, float]]) -> list[ValidationReport]:
    """Validate several (transcript, media duration) pairs with one Great Expectations run per table.

    A run costs about the same for one media's rows as for many, so the flow's
    concurrent validate tasks are served together (see ``batching.Coalescer``).
    Each media gets its own report: counts and success are computed from the
    unexpected rows that belong to it, with each expectation's ``mostly``.
    """
    import great_expectations as gx

    dfs = dict(zip(("segments", "words"), frames(transcripts)))
    checks: list[list[CheckResult]] = [[] for _ in transcripts]
    with _lock:  # the ephemeral context is shared by the process's threads
        context, batch_defs = _context()
        for table, expectations in _suites().items():
            df = dfs[table]
            suite = gx.ExpectationSuite(name=f"{table}-{threading.get_ident()}")
            for sev, column, expectation in expectations:
                expectation.meta = {"severity": sev, "column": column}  # results come back in another order
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
                for item in range(len(transcripts)):
                    rows = df["item"] == item
                    element_count = int(rows.sum())
                    unexpected = int((unexpected_items == item).sum())
                    evaluated = element_count - int((missing & rows).sum())
                    mostly = kwargs.get("mostly") or 1.0
                    success = unexpected == 0 if mostly >= 1.0 else (
                        evaluated == 0 or (evaluated - unexpected) / evaluated >= mostly)
                    checks[item].append(CheckResult(
                        table=table, expectation=cfg.type, column=meta.get("column", kwargs.get("column", "")),
                        severity=meta.get("severity", "critical"), success=success, element_count=element_count,
                        unexpected_count=unexpected,
                        details=json.dumps({"kwargs": kwargs, "evaluated": evaluated}, default=str),
                    ))
    return [ValidationReport(c) for c in checks]
