"""Hallucination and runaway guards: their findings are flags on the media, never silent text."""

import pytest

from conftest import load_verdict

from scribeline import guards, local, stages, warehouse


def test_a_sentence_said_twice_in_one_window_is_repeated_text():
    doubled = "the birch canoe slid on the smooth plinks, the birch canoe slid on the smooth plinks,"
    assert guards.repeated_phrase(doubled) == (5, 2)
    assert guards.repeated_phrase("okay okay okay okay okay okay okay okay okay") == (3, 3)
    # Real speech that comes back to its words is not a repeat.
    jfk = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    assert guards.repeated_phrase(jfk) is None


def test_looping_tokens_and_impossible_word_rates():
    assert guards.looping([5, 6, 7] + [1, 2, 3] * 4)
    assert not guards.looping([5, 6, 7] + [1, 2, 3] * 3)
    assert not guards.looping(list(range(60)))
    assert guards.too_fast(" ".join(["word"] * 30), speech_s=3.0) == pytest.approx(10.0)
    assert guards.too_fast(" ".join(["word"] * 30), speech_s=10.0) is None  # 3 words/s: speech


@pytest.fixture(scope="module")
def french_on_english_model(media_dir, settings, tmp_path_factory):
    """tiny.en given three minutes of French radio."""
    assert not stages.transcriber(settings).model.is_multilingual
    clip = media_dir / "fr_smartphone_chronicle.mp3"
    return local.transcribe_files(settings, [clip], tmp_path_factory.mktemp("fr"))[0]


def test_an_english_only_model_on_french_ends_with_a_verdict_not_confident_text(french_on_english_model, settings):
    t = french_on_english_model.transcript
    assert t.needs_review
    unintelligible = [f for f in t.flags if f.name == "unintelligible"]
    assert unintelligible and "English-only" in unintelligible[0].reason
    # Bounded: judged after the first pass, so no window was sampled again at a higher temperature,
    # and every window stopped within its token budget.
    assert {s.temperature for s in t.segments} == {0.0}
    tr = stages.transcriber(settings)
    windows = {w.index: w for w in french_on_english_model.windows}
    for index in {s.window_index for s in t.segments}:
        words = sum(len(s.words) for s in t.segments if s.window_index == index)
        assert words <= tr.max_tokens(windows[index]), index


def test_flags_reach_the_warehouse_with_the_media(french_on_english_model, settings, tmp_path):
    r = french_on_english_model
    t = r.transcript
    ingested = dict(run_key="fr-on-tiny-en", bucket="incoming", key="radio/fr.mp3", etag="e", size=1, sha256="0" * 64)
    segmented = dict(info=dict(container="mp3", codec="mp3", sample_rate=r.info.sample_rate, channels=r.info.channels,
                               bit_rate=r.info.bit_rate), duration_s=r.audio.duration_s, tracks=[dict(gain_db=0.0)])
    row, tables = stages.warehouse_rows(settings, ingested, segmented, dict(transcript=t.as_dict(), entities=[]),
                                        dict(checks=[], quality_ok=True), 1.0)
    path = tmp_path / "warehouse.duckdb"
    assert warehouse.load(path, row, tables)
    media = warehouse.query(path, "select needs_review, review_reasons from media").iloc[0]
    assert media["needs_review"] and "unintelligible" in media["review_reasons"].split(",")
    flags = warehouse.query(path, "select flag, window_index, reason from transcript_flags order by flag_index")
    assert len(flags) == len(t.flags) and "unintelligible" in set(flags["flag"])
    # A finding says what and where, never the words themselves (they are not redacted).
    words = [w.word.strip(" ,.?!").lower() for s in t.segments for w in s.words]
    phrases = {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}
    assert not any(p in reason.lower() for reason in flags["reason"] for p in phrases)


def test_french_on_tiny_en_is_loaded_for_review_with_the_failing_expectations(french_on_english_model, settings,
                                                                            tmp_path):
    r = french_on_english_model
    media, quality = load_verdict(settings, r.transcript, r.audio.duration_s, tmp_path / "warehouse.duckdb", "fr")
    assert media["needs_review"] and not media["quality_ok"]
    reasons = media["review_reasons"].split(",")
    assert "unintelligible" in reasons and "segments.guard_flags:expect_column_values_to_be_null" in reasons
    failed = quality[~quality["success"] & (quality["severity"] == "critical")]
    assert set(reasons) - {f.name for f in r.transcript.flags} == {
        f"{t}.{c.replace(',', '+')}:{e}" for t, c, e in zip(failed["table_name"], failed["column_name"], failed["expectation"])}
