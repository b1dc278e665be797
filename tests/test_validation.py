from dataclasses import replace

from conftest import load_verdict

from scribeline import stages
from scribeline.config import DEFAULT_CRITICAL_EXPECTATIONS, Settings
from scribeline.transcription import Flag, Segment, Transcript, Word
from scribeline.validation import check_name, validate, validate_many


def _t(*segs):
    return Transcript("en", 1.0, list(segs))


def _seg(start, end, text="hello there", logprob=-0.2):
    return Segment(start, end, text, 0, logprob, 0.01, 1.2, 0.0, [Word(start, end, " " + text, 0.9)])


def test_a_sound_transcript_passes_every_check():
    report = validate(_t(_seg(0.0, 1.0), _seg(1.5, 2.5)), duration_s=3.0)
    assert report.passed and report.quality_ok
    assert len(report.checks) >= 10
    assert {c.table for c in report.checks} == {"segments", "words", "media"}


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
    assert all(c.element_count == 0 for c in reports[5].checks if c.table != "media")  # no segments, no words
    assert all(c.element_count == 1 for c in reports[5].checks if c.table == "media")  # one media row each
    # The same verdicts as validating each alone.
    singles = [validate(t, d) for t, d in [(sound, 3.0), (past_end, 3.0), (past_end, 10.0), (unordered, 3.0), (unsure, 5.0), (_t(), 1.0)]]
    assert [[(c.column, c.success, c.unexpected_count) for c in r.checks] for r in reports] == \
           [[(c.column, c.success, c.unexpected_count) for c in r.checks] for r in singles]


# --------------------------------------------------------------- the guards' expectations; verdicts
REPEATED = "The birch canoe slid on the smooth planks, the birch canoe slid on the smooth planks."


def test_the_guards_findings_are_expectations_too():
    fine = validate(_t(_seg(0.0, 1.0), _seg(1.5, 2.5)), duration_s=3.0)
    names = {check_name(c) for c in fine.checks}
    assert {"segments.repeated_phrase:expect_column_values_to_be_in_set",
            "segments.word_rate:expect_column_values_to_be_between",
            "segments.guard_flags:expect_column_values_to_be_null"} <= names
    repeated = validate(_t(_seg(0.0, 1.0), _seg(1.0, 6.0, text=REPEATED)), duration_s=7.0)
    assert not repeated.passed
    assert repeated.review_reasons == ["segments.repeated_phrase:expect_column_values_to_be_in_set"]
    # The window's text, not each sentence: a repeat split in two segments of one window is found.
    half = REPEATED.split(", ")[0] + "."
    assert not validate(_t(_seg(0.0, 3.0, text=half), _seg(3.0, 6.0, text=half)), duration_s=7.0).passed
    assert validate(_t(_seg(0.0, 3.0, text=half), replace(_seg(3.0, 6.0, text=half), window_index=1)), duration_s=7.0).passed
    # 20 words in 2 s of one window: more than could be said.
    fast = validate(_t(_seg(0.0, 2.0, text=" ".join(f"word{i}" for i in range(20)))), duration_s=3.0)
    assert [check_name(c) for c in fast.failures()] == ["segments.word_rate:expect_column_values_to_be_between"]
    # A guard flag on a window (or on the whole transcript) fails the flags' check on its segments.
    flagged = _t(_seg(0.0, 1.0), replace(_seg(1.5, 2.5), window_index=1))
    flagged.flags = [Flag("looping", "looped", window_index=1, start=1.5, end=2.5)]
    check = next(c for c in validate(flagged, 3.0).checks if c.column == "guard_flags")
    assert (check.severity, check.success, check.element_count, check.unexpected_count) == ("critical", False, 2, 1)
    flagged.flags = [Flag("unintelligible", "most windows fail")]
    check = next(c for c in validate(flagged, 3.0).checks if c.column == "guard_flags")
    assert check.unexpected_count == 2


def test_which_expectations_are_critical_is_configuration():
    settings = Settings.from_env({"SCRIBELINE_CRITICAL_EXPECTATIONS":
                                  "ExpectColumnValuesToBeNull, segments.end_s:expect_column_pair_values_a_to_be_greater_than_b"})
    assert settings.critical_expectations == (
        "ExpectColumnValuesToBeNull", "segments.end_s:expect_column_pair_values_a_to_be_greater_than_b")
    assert Settings().critical_expectations == DEFAULT_CRITICAL_EXPECTATIONS
    assert settings.fingerprint() != Settings().fingerprint()
    report = validate(_t(_seg(0.0, 5.0, text=REPEATED)), 6.0, critical=settings.critical_expectations)
    assert report.passed  # the repeat is only a warning here...
    assert [c.column for c in report.failures("warning")] == ["repeated_phrase"]
    critical = {check_name(c) for c in report.checks if c.severity == "critical"}
    assert critical == {"segments.guard_flags:expect_column_values_to_be_null",
                        "segments.end_s:expect_column_pair_values_a_to_be_greater_than_b"}
    # ...and under the defaults, every check the suite had as critical still is, with the guards' ones.
    default = validate(_t(_seg(0.0, 1.0)), 3.0)
    from scribeline.validation import validate_redacted

    default_redacted = validate_redacted(_t(_seg(0.0, 1.0)))
    assert {check_name(c) for c in default.checks + default_redacted.checks if c.severity == "critical"} == \
        set(DEFAULT_CRITICAL_EXPECTATIONS)


def test_a_critical_failure_is_loaded_for_review_not_quarantined(settings, tmp_path):
    path = tmp_path / "warehouse.duckdb"
    media, quality = load_verdict(settings, _t(_seg(0.0, 1.0), _seg(2.0, 9.0)), 3.0, path, "past-end")
    assert media["needs_review"] and not media["quality_ok"]
    assert media["review_reasons"] == "segments.end_s:expect_column_pair_values_a_to_be_greater_than_b"
    failed = quality[~quality["success"]]
    assert set(failed["column_name"]) == {"end_s"} and set(failed["severity"]) == {"critical"}
    # A sound transcript, and one with nothing said, are neither.
    for media_id, t in (("sound", _t(_seg(0.0, 1.0), _seg(1.5, 2.5))), ("silent", _t())):
        media, quality = load_verdict(settings, t, 3.0, path, media_id)
        assert not media["needs_review"] and media["review_reasons"] is None and media["quality_ok"]
        assert quality["success"].all() and len(quality) == len(stages.validate(settings, t.as_dict(), 3.0)["checks"])


def test_a_repeated_sentence_ends_as_needs_review_with_the_failing_expectations(settings, tmp_path):
    t = _t(_seg(0.0, 1.0), _seg(1.0, 6.0, text=REPEATED))
    t.flags = [Flag("repeated_text", "a phrase of 5+ words said 2 times in one window", window_index=0, start=0.0, end=6.0)]
    media, quality = load_verdict(settings, t, 7.0, tmp_path / "warehouse.duckdb")
    assert media["needs_review"] and not media["quality_ok"]
    assert media["review_reasons"].split(",") == [
        "repeated_text", "segments.repeated_phrase:expect_column_values_to_be_in_set",
        "segments.guard_flags:expect_column_values_to_be_null"]
    failed = quality[~quality["success"]].set_index("column_name")
    assert set(failed.index) == {"repeated_phrase", "guard_flags"}
    assert failed.loc["repeated_phrase", "unexpected_count"] == 2  # both segments of the window


# ------------------------------------------------------- media and redacted output
def test_the_normalized_media_suite_warns_on_a_file_of_almost_no_speech():
    sound = validate(_t(_seg(0.0, 1.0)), duration_s=3.0, media={"sample_rate": 16000, "speech_s": 2.0})
    assert sound.passed and sound.quality_ok
    quiet = validate(_t(_seg(0.0, 1.0)), duration_s=600.0, media={"sample_rate": 4000, "speech_s": 1.0})
    failed = {check_name(c) for c in quiet.checks if not c.success}
    assert failed == {"media.sample_rate:expect_column_values_to_be_between",
                      "media.speech_ratio:expect_column_values_to_be_between"}
    assert quiet.passed and not quiet.quality_ok  # warnings: loaded as good quality-wise, flagged in quality_ok


def test_the_redacted_output_suite_finds_a_value_left_in_any_spelling():
    from scribeline.validation import validate_redacted

    clean = _t(_seg(0.0, 1.0, "call <PHONE_NUMBER:3f9a1c2e> or write to <EMAIL_ADDRESS>"), _seg(1.0, 2.0, "in 1999 we met"))
    assert validate_redacted(clean).passed
    for left in ("call five five five, seven oh two, three one nine eight", "call 555. 702-3198",
                 "mail maria dot patel at mailpost dot org", "it is patelatmailpost.org"):
        report = validate_redacted(_t(_seg(0.0, 1.0, left)))
        assert not report.passed, left
        assert report.review_reasons == ["redacted.residual_pii:expect_column_values_to_be_null"]
    # A number that continues into the next segment is found in the whole text.
    assert not validate_redacted(_t(_seg(0.0, 1.0, "my number is 555"), _seg(1.0, 2.0, "7023198 thanks"))).passed


def test_a_value_redaction_was_not_configured_for_is_still_kept_out_and_marked_for_review(settings):
    from tests.conftest import transcript_of

    t = transcript_of("Hi, it is Maria, call me on 5 5 5 7 0 2 3 1 9 8 or maria dot patel at mailpost dot org.")
    narrow = replace(settings, pii_entities=("PERSON",))  # an operator left phone numbers and e-mails out
    out = stages.redact(narrow, t.as_dict())
    text = " ".join(s["text"] for s in out["transcript"]["segments"])
    assert "5557" not in text.replace(" ", "") and "mailpost" not in text and "<PERSON>" in text
    assert "redacted.residual_pii:expect_column_values_to_be_null" in out["review"]
    guard = [e for e in out["entities"] if e["recognizer"] == "ResidualGuard"]
    assert {e["entity_type"] for e in guard} == {"PHONE_NUMBER", "EMAIL_ADDRESS"}
    full = stages.redact(settings, t.as_dict())  # the default entities catch them: no verdict
    assert full["review"] == [] and all(c["success"] for c in full["checks"])


def _page_text(path) -> str:
    import re

    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", path.read_text()))


def test_data_docs_show_each_media_with_its_failing_expectations(settings, tmp_path):
    """`scribeline data-docs`: the stored checks as Great Expectations Data Docs, one page per media."""
    from scribeline import data_docs

    path = tmp_path / "lake.sqlite"
    load_verdict(settings, _t(_seg(0.0, 1.0), _seg(2.0, 9.0)), 3.0, path, "past-end")
    load_verdict(settings, _t(_seg(0.0, 1.0), _seg(1.5, 2.5)), 3.0, path, "sound")
    here = replace(settings, data_dir=tmp_path, warehouse_path=str(path))
    index = data_docs.build(here)
    assert index == tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    pages = {p.stem: _page_text(p) for p in index.parent.glob("validations/**/*.html")}
    assert set(pages) == {"past-end", "sound"}
    assert "Status: Failed" in pages["past-end"] and "Run Name incoming: past-end.wav" in pages["past-end"]
    assert "Status: Succeeded" in pages["sound"]
    assert "past-end.wav" in index.read_text() and "sound.wav" in index.read_text()
    assert data_docs.build(here) == index and len(list(index.parent.glob("validations/**/*.html"))) == 2  # rebuilt, not doubled
