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


def frames(transcript: Transcript) -> tuple[pd.DataFrame, pd.DataFrame]:
    seg_rows, word_rows = [], []
    for i, s in enumerate(transcript.segments):
        seg_rows.append(dict(segment_index=i, start_s=s.start, end_s=s.end, text=s.text, avg_logprob=s.avg_logprob,
                             no_speech_prob=s.no_speech_prob, compression_ratio=s.compression_ratio,
                             channel=-1 if s.channel is None else s.channel))
        for w in s.words:
            word_rows.append(dict(segment_index=i, start_s=w.start, end_s=w.end, word=w.word, probability=w.probability))
    seg_cols = ["segment_index", "start_s", "end_s", "text", "avg_logprob", "no_speech_prob", "compression_ratio", "channel"]
    word_cols = ["segment_index", "start_s", "end_s", "word", "probability"]
    return pd.DataFrame(seg_rows, columns=seg_cols), pd.DataFrame(word_rows, columns=word_cols)


def _suites(duration_s: float):
    import great_expectations as gx

    E = gx.expectations
    # Word alignment rounds to 20 ms frames: allow that much past the end.
    end = duration_s + 0.05
    segments = [
        ("critical", E.ExpectColumnValuesToNotBeNull(column="text")),
        ("critical", E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1)),
        ("critical", E.ExpectColumnValuesToBeBetween(column="start_s", min_value=0, max_value=end)),
        ("critical", E.ExpectColumnValuesToBeBetween(column="end_s", min_value=0, max_value=end)),
        ("critical", E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end_s", column_B="start_s", or_equal=True)),
        ("critical", E.ExpectColumnValuesToBeIncreasing(column="start_s")),
        ("warning", E.ExpectColumnValuesToBeBetween(column="avg_logprob", min_value=-1.0, max_value=0.0, mostly=0.9)),
        ("warning", E.ExpectColumnValuesToBeBetween(column="no_speech_prob", min_value=0.0, max_value=1.0)),
        ("warning", E.ExpectColumnValuesToBeBetween(column="compression_ratio", min_value=0.0, max_value=2.4, mostly=0.9)),
    ]
    words = [
        ("critical", E.ExpectColumnValuesToBeBetween(column="start_s", min_value=0, max_value=end)),
        ("critical", E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end_s", column_B="start_s", or_equal=True)),
        ("warning", E.ExpectColumnValuesToBeBetween(column="probability", min_value=0.0, max_value=1.0)),
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


def validate(transcript: Transcript, duration_s: float) -> ValidationReport:
    import great_expectations as gx

    dfs = dict(zip(("segments", "words"), frames(transcript)))
    checks: list[CheckResult] = []
    with _lock:  # the ephemeral context is shared by the process's threads
        context, batch_defs = _context()
        for table, expectations in _suites(duration_s).items():
            suite = gx.ExpectationSuite(name=f"{table}-{threading.get_ident()}")
            for sev, expectation in expectations:
                expectation.meta = {"severity": sev}  # results come back in another order
                suite.add_expectation(expectation)
            batch = batch_defs[table].get_batch(batch_parameters={"dataframe": dfs[table]})
            result = batch.validate(suite)
            for r in result.results:
                cfg = r.expectation_config
                kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
                column = kwargs.get("column") or ",".join(str(kwargs[k]) for k in ("column_A", "column_B") if kwargs.get(k))
                res = r.result or {}
                checks.append(CheckResult(
                    table=table, expectation=cfg.type, column=column, severity=(cfg.meta or {}).get("severity", "critical"),
                    success=bool(r.success), element_count=int(res.get("element_count") or len(dfs[table])),
                    unexpected_count=int(res.get("unexpected_count") or 0),
                    details=json.dumps({"kwargs": kwargs, "observed_value": res.get("observed_value")}, default=str),
                ))
    return ValidationReport(checks)
