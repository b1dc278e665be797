"""Personal data in the forms speech takes in whisper's output never reaches the warehouse.

Plain-text cases are the forms users found in tiny.en transcripts; the speech cases are
spoken by espeak-ng, transcribed by the project's transcriber and redacted. A planted
number leaks if any 4 of its digits in a row survive anywhere in the redacted text or
words, separators removed and spelled digits read as digits. A second, held-out set of
planted sentences lives in benchmark/pii_holdout.py and is never tuned on here.
"""

from __future__ import annotations

import csv
import re

import pytest

from tests.conftest import MEDIA, ROOT, speak, transcript_of
from scribeline import local
from scribeline.config import Settings
from scribeline.redaction import redact
from scribeline.spoken_pii import DIGIT_WORDS
from scribeline.transcription import Transcript

ENTITIES = Settings().pii_entities

# (transcript segments as whisper wrote them, planted digits or e-mail words)
WRITTEN = [
    (["My social security number is 653-58. 736-7."], "653587367"),
    (["The card number is 4626. 436. 061. 1585."], "46264360611585"),
    (["You can call me on 1-6. 5-5-5, 7-0-2 any time."], "16555702"),
    (["Yes, it's 2-6-3, 8-3, I'm 3-2."], "2638332"),
    (["Call me on 0 to 0 7 9 4 6 double 5 1 2"], "007946512"),
    (["Social Security for 1277-913"], "1277913"),
    (["My phone number is 555-702318"], "555702318"),
    (["My social security number is 653.", "587367"], "653587367"),  # split across segments
    (["The card number is 4626.", "436. 061. 1585. Thanks."], "46264360611585"),
    (["My number is five five five, seven oh two, double three one eight."], "5557023318"),
    (["The card number is 4.6.2.6.4.3.6.0.6.1.1.5.8.5.0.4 okay"], "4626436061158504"),
    (["My email is Maria.patelatmailpost.org"], ["patel", "mailpost"]),
    (["Write to Robert.Walker.com please."], ["walker"]),
    (["Send it to patellatmailpost.org"], ["mailpost"]),
    (["It's maria dot patel at mailpost dot org, thanks."], ["patel", "mailpost"]),
    (["You can email me at mario.pertella to mailpost.org."], ["pertella", "mailpost"]),
    (["Please write to Robert.com"], ["robert"]),
]

# (what espeak-ng says, planted digits or e-mail words)
SPOKEN = [
    ("My phone number is five five five, seven zero two, three one nine eight.", "5557023198"),
    ("My social security number is six five three, five eight, seven three six seven.", "653587367"),
    ("The card number is four six two six, four three six zero, six one one five, eight five zero four.",
     "4626436061158504"),
    ("Call me on oh two oh, seven nine four six, double five one two.", "02079465512"),
    ("My number is 2 6 3 8 3 3 2 9 1 0.", "2638332910"),
    ("Social security 4 1 2, 7 7, 9 0 1 3.", "412779013"),
    ("You can email me at maria dot patel at mailpost dot org.", ["patel", "mailpost"]),
    ("Please write to robert dot walker at example dot com, thanks.", ["walker", "example"]),
]


def warehouse_texts(t: Transcript) -> list[str]:
    """Every text field the load stage writes: segment texts and words."""
    return [s.text for s in t.segments] + [w.word for s in t.segments for w in s.words]


def digits_of(text: str) -> str:
    words = re.findall(r"\d+|[A-Za-z]+", text)
    return "".join(w if w.isdigit() else DIGIT_WORDS.get(w.lower(), "") for w in words)


def leaks(t: Transcript, secret) -> list[str]:
    """The pieces of a planted value still in the transcript's text fields."""
    texts = warehouse_texts(t)
    if isinstance(secret, str):
        found = [digits_of(x) for x in texts] + [digits_of(" ".join(s.text for s in t.segments))]
        return sorted({secret[i:i + 4] for i in range(len(secret) - 3) if any(secret[i:i + 4] in d for d in found)})
    return [w for w in secret if any(w in x.lower() for x in texts)]


@pytest.mark.parametrize("segments,secret", WRITTEN, ids=[" ".join(s)[:40] for s, _ in WRITTEN])
def test_written_forms_of_spoken_pii_are_redacted(segments, secret):
    before = transcript_of(*segments)
    assert leaks(before, secret), "the case plants nothing"
    out = redact(before, ENTITIES)
    assert leaks(out.transcript, secret) == [], [s.text for s in out.transcript.segments]
    # words and segments stay consistent: same words, same times, text built from the words
    for a, b in zip(before.segments, out.transcript.segments):
        assert [(w.start, w.end) for w in a.words] == [(w.start, w.end) for w in b.words]
        tags = [w.word.strip() for w in b.words]
        assert b.text.split() == [x for k, x in enumerate(tags) if not (x.startswith("<") and k and tags[k - 1] == x)]


def test_numbers_and_names_that_are_no_personal_data_stay():
    out = redact(transcript_of("the year 2024 was fine and 1,500,000 people came", "canoe", "They went to the north by canoe."),
                 ENTITIES)
    assert [s.text for s in out.transcript.segments] == [
        "the year 2024 was fine and 1,500,000 people came", "canoe", "They went to the north by canoe."]


def test_a_real_ip_address_is_still_one():
    out = redact(transcript_of("the server is at 192.168.10.20 today"), ENTITIES)
    assert out.transcript.segments[0].text == "the server is at <IP_ADDRESS> today"


def reference_texts() -> list[str]:
    """English reference texts with no personal data: the shared media's and the benchmark's exact ones."""
    texts = []
    if (MEDIA / "manifest.tsv").exists():
        with open(MEDIA / "manifest.tsv", encoding="utf-8") as fh:
            texts += [r["reference_text"] for r in csv.DictReader(fh, delimiter="\t")
                      if r["language"] == "en" and r["reference_text"].strip()]
    with open(ROOT / "benchmark" / "corpus.tsv", encoding="utf-8") as fh:
        texts += [r["reference"] for r in csv.DictReader(fh, delimiter="\t")
                  if r["language"] == "en" and r["ref_quality"] == "exact" and r["reference"].strip()]
    return texts


def redacted_share(texts: list[str]) -> tuple[int, int]:
    redacted = total = 0
    for text in texts:
        words = [w.word.strip() for s in redact(transcript_of(text), ENTITIES).transcript.segments for w in s.words]
        total += len(words)
        redacted += sum(w.startswith("<") and w.endswith(">") for w in words)
    return redacted, total


def test_clean_speech_is_at_most_one_word_in_a_hundred_redacted():
    redacted, total = redacted_share(reference_texts())
    assert total > 300
    assert redacted / total <= 0.01, (redacted, total)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spoken-pii")
    paths = [speak(text, tmp / f"{i}.wav") for i, (text, _) in enumerate(SPOKEN)]
    results = local.transcribe_files(Settings.from_env(), paths, tmp / "work")
    return [r.transcript for r in results]


def test_spoken_pii_is_redacted_after_transcription(spoken):
    planted = 0
    for (said, secret), t in zip(SPOKEN, spoken):
        planted += bool(leaks(t, secret))
        out = redact(t, ENTITIES)
        assert leaks(out.transcript, secret) == [], (said, t.text, [s.text for s in out.transcript.segments])
    assert planted >= len(SPOKEN) - 2  # the transcripts did hold the values: the test is not empty
