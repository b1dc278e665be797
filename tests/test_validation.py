from dataclasses import replace

from scribeline.transcription import Segment, Transcript, Word
from scribeline.validation import validate, validate_many


def _t(*segs):
    return Transcript("en", 1.0, list(segs))


def _seg(start, end, text="hello there", logprob=-0.2):
    return Segment(start, end, text, 0, logprob, 0.01, 1.2, 0.0, [Word(start, end, " " + text, 0.9)])


def test_a_sound_transcript_passes_every_check():
    report = validate(_t(_seg(0.0, 1.0), _seg(1.5, 2.5)), duration_s=3.0)
    assert report.passed and report.quality_ok
    assert len(report.checks) >= 10
    assert {c.table for c in report.checks} == {"segments", "words"}


def test_timestamps_beyond_the_media_fail_critically():
    report = validate(_t(_seg(0.0, 1.0), _seg(2.0, 9.0)), duration_s=3.0)
    assert not report.passed
    failed = {(c.table, c.column) for c in report.failures()}
    assert ("segments", "end_s") in failed


def test_segments_out_of_order_or_empty_fail():
    assert not validate(_t(_seg(2.0, 2.5), _seg(0.0, 1.0)), duration_s=3.0).passed
    assert not validate(_t(replace(_seg(0.0, 1.0), text="")), duration_s=3.0).passed


def test_low_confidence_is_a_warning_not_a_failure():
    report = validate(_t(_seg(0.0, 1.0, logprob=-2.5)), duration_s=3.0)
    assert report.passed and not report.quality_ok
    assert [c.column for c in report.failures("warning")] == ["avg_logprob"]


def test_empty_transcript_passes_structurally():
    assert validate(_t(), duration_s=10.0).passed


def test_media_validated_together_get_their_own_verdicts():
    sound = _t(_seg(0.0, 1.0), _seg(1.5, 2.5))
    past_end = _t(_seg(0.0, 1.0), _seg(2.0, 9.0))  # fine for a 10-s media, not for a 3-s one
    unordered = _t(_seg(2.0, 2.5), _seg(0.0, 1.0))
    unsure = _t(*[_seg(i, i + 0.5, logprob=-2.5) for i in range(3)])
    reports = validate_many([(sound, 3.0), (past_end, 3.0), (past_end, 10.0), (unordered, 3.0), (unsure, 5.0), (_t(), 1.0)])
    assert [r.passed for r in reports] == [True, False, True, False, True, True]
    assert [r.quality_ok for r in reports] == [True, False, True, False, False, True]
    assert {(c.table, c.column) for c in reports[1].failures()} == {("segments", "end_s")}
    assert ("segments", "start_s") in {(c.table, c.column) for c in reports[3].failures()}
    # Counts are per media, not over the combined rows.
    logprob = next(c for c in reports[4].checks if c.column == "avg_logprob")
    assert (logprob.element_count, logprob.unexpected_count) == (3, 3)
    assert all(c.element_count == 0 for c in reports[5].checks)
    # The same verdicts as validating each alone.
    singles = [validate(t, d) for t, d in [(sound, 3.0), (past_end, 3.0), (past_end, 10.0), (unordered, 3.0), (unsure, 5.0), (_t(), 1.0)]]
    assert [[(c.column, c.success, c.unexpected_count) for c in r.checks] for r in reports] == \
           [[(c.column, c.success, c.unexpected_count) for c in r.checks] for r in singles]
