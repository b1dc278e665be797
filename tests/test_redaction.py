"""PII never survives redaction, in segment text or in words; entities keep type, time and score only."""

from scribeline.redaction import redact
from scribeline.transcription import Segment, Transcript
from tests.conftest import transcript_of

ENTITIES = ("PERSON", "PHONE_NUMBER", "EMAIL_ADDRESS", "CREDIT_CARD", "US_SSN", "LOCATION")


SECRETS = ["John", "Smith", "Seattle", "212-555-0199", "john.smith@example.com", "4111", "536-90-4399"]


def test_each_required_entity_type_is_redacted_everywhere():
    t = transcript_of(
        "Hello, my name is John Smith and I live in Seattle.",
        "Call me at 212-555-0199 or write to john.smith@example.com today.",
        "My card number is 4111 1111 1111 1111 and my social security number is 536-90-4399.",
    )
    out = redact(t, ENTITIES)
    texts = [s.text for s in out.transcript.segments] + [w.word for s in out.transcript.segments for w in s.words]
    for secret in SECRETS:
        assert not any(secret in x for x in texts), secret
    found = {e.entity_type for e in out.entities}
    assert {"PERSON", "LOCATION", "PHONE_NUMBER", "EMAIL_ADDRESS", "CREDIT_CARD", "US_SSN"} <= found
    assert "<PERSON>" in out.transcript.segments[0].text
    assert out.transcript.segments[0].text.startswith("Hello, my name is <PERSON> and I live in")


def test_entity_spans_are_the_times_of_the_redacted_words():
    t = transcript_of("Please ask Maria Gonzalez to call back.")
    out = redact(t, ENTITIES)
    person = next(e for e in out.entities if e.entity_type == "PERSON")
    words = t.segments[0].words
    assert (person.start_s, person.end_s) == (words[2].start, words[3].end)
    assert not hasattr(person, "text") and not hasattr(person, "value")


def test_text_without_pii_is_untouched():
    t = transcript_of("The birch canoe slid on the smooth planks.")
    out = redact(t, ENTITIES)
    assert out.entities == []
    assert out.transcript.segments[0].text == "The birch canoe slid on the smooth planks."


def test_segments_without_words_are_redacted_by_whole_words():
    seg = Segment(0.0, 3.0, "please write to jane.doe@example.org today", 0, -0.2, 0.01, 1.2, 0.0, [])
    out = redact(Transcript("en", 1.0, [seg]), ENTITIES)
    assert out.transcript.segments[0].text == "please write to <EMAIL_ADDRESS> today"


def test_spoken_digit_runs_that_fail_phone_validation_are_still_redacted():
    # whisper wrote "212 555 0199", spoken by espeak-ng, as "215550199"
    out = redact(transcript_of("my phone number is 215550199 thanks", "the year 2024 was fine"), ENTITIES)
    assert out.transcript.segments[0].text == "my phone number is <PHONE_NUMBER> thanks"
    assert out.transcript.segments[1].text == "the year 2024 was fine"


def test_redaction_goes_on_when_the_analyzer_process_dies():
    # Presidio runs in a process of its own. If that process is killed (the OOM killer, a crash
    # in spaCy), the next redaction starts a fresh one rather than failing every media after it.
    import os
    import signal

    from scribeline import pii

    t = transcript_of("Hello, my name is John Smith and I live in Seattle.")
    before = redact(t, ENTITIES)
    first = pii.analyzer_pid()
    assert first != os.getpid()
    os.kill(first, signal.SIGKILL)
    after = redact(t, ENTITIES)
    assert [s.text for s in after.transcript.segments] == [s.text for s in before.transcript.segments]
    assert "<PERSON>" in after.transcript.segments[0].text
    assert pii.analyzer_pid() != first


# ------------------------------------------------------------------ operators
from scribeline.redaction import Operators  # noqa: E402


def _texts(out):
    return [s.text for s in out.transcript.segments], [w.word.strip() for s in out.transcript.segments for w in s.words]


def test_mask_keeps_each_words_shape_and_no_character_of_the_value():
    t = transcript_of("Call me at 212-555-0199 today, John.")
    out = redact(t, ENTITIES, operators=Operators({"*": "mask"}))
    texts, words = _texts(out)
    assert not any(d in texts[0] for d in ("212", "555", "0199", "John"))
    assert texts[0].startswith("Call me at ***-***-****") and "today" in texts[0]
    assert [w for w in words if "*" in w] == ["***-***-****", "****."]
    assert {e.operator for e in out.entities} == {"mask"} and all(e.value_hash is None for e in out.entities)
    assert out.redacted_words == [(0, 3), (0, 5)]


def test_hash_gives_one_tag_per_value_however_it_was_spelled_and_depends_on_the_salt():
    t = transcript_of("My number is 212-555-0199.", "Again, that is 2 1 2 5 5 5 0 1 9 9.",
                      "My other number is 415-555-0123.")
    ops = Operators({"*": "replace", "PHONE_NUMBER": "hash"}, salt="s3cret")
    out = redact(t, ENTITIES, operators=ops)
    phones = [e for e in out.entities if e.entity_type == "PHONE_NUMBER"]
    assert len(phones) == 3 and all(e.operator == "hash" for e in phones)
    assert phones[0].value_hash == phones[1].value_hash != phones[2].value_hash  # repeats countable
    texts, words = _texts(out)
    assert texts[0] == f"My number is <PHONE_NUMBER:{phones[0].value_hash}>"
    assert not any(d in " ".join(texts + words) for d in ("212", "555", "0199", "0123"))
    # The words carry the same tag as the text, one per word of the value.
    assert words.count(f"<PHONE_NUMBER:{phones[0].value_hash}>") == 1 + 10
    other = redact(t, ENTITIES, operators=Operators({"PHONE_NUMBER": "hash"}, salt="another"))
    assert [e.value_hash for e in other.entities if e.entity_type == "PHONE_NUMBER"][0] != phones[0].value_hash


def test_the_hash_operator_refuses_to_run_without_a_salt():
    import pytest

    with pytest.raises(ValueError, match="salt"):
        redact(transcript_of("Call 212-555-0199."), ENTITIES, operators=Operators({"*": "hash"}))


def test_the_analyzer_process_outlives_the_thread_that_started_it():
    # A cold `scribeline run` starts Presidio's process from a warm-up thread that ends long before
    # the first redaction; the process must still be the one that redacts (a second start costs
    # seconds on the run's critical path).
    import threading
    import time

    from scribeline import pii

    if pii._process is not None:  # a process of this test's own, started from a thread that then ends
        pii._process.shutdown(wait=True)
        pii._process = None
    pids = []
    started = threading.Thread(target=lambda: pids.append(pii.analyzer_pid()))  # waits until it is up, then ends
    started.start()
    started.join()
    first = pids[0]
    time.sleep(2)  # past the moment a thread-bound death signal would have ended it
    out = redact(transcript_of("Hello, my name is John Smith and I live in Seattle."), ENTITIES)
    assert "<PERSON>" in out.transcript.segments[0].text
    assert pii.analyzer_pid() == first


def test_presidio_loads_only_in_the_analyzers_process_and_that_process_loads_no_torch():
    # Each needless import costs a cold `scribeline run` seconds of CPU: Presidio and spaCy in the
    # pipeline's process for the redacted output's residual check (1.5-3 s), torch in the analyzer's
    # process, whose spaCy pipeline runs on numpy (2.8 s).
    import json
    import subprocess
    import sys

    code = f"""
import json, sys
from scribeline import pii, redaction, validation
from tests.conftest import transcript_of
out = redaction.redact(transcript_of("Call John Smith at 653 587 3677 tomorrow."), {ENTITIES!r})
report = validation.validate_redacted(out.transcript)
child = pii._analyzer_process().submit(eval, "[m for m in ('presidio_analyzer', 'spacy', 'torch') if __import__('sys').modules.get(m)]")
print(json.dumps({{"here": [m for m in ('presidio_analyzer', 'spacy') if m in sys.modules], "analyzer": child.result(),
                  "passed": report.passed, "text": out.transcript.segments[0].text}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert "<PERSON>" in seen["text"] and "<PHONE_NUMBER>" in seen["text"] and seen["passed"]
    assert seen["here"] == []
    assert seen["analyzer"] == ["presidio_analyzer", "spacy"]
