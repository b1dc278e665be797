"""Recall of spoken-PII redaction on two planted sets, and over-redaction of clean speech.

The tuned set is tests/test_spoken_pii.py's (the recognizers were written against it);
the held-out set below is never used by the tests. Each set is measured as written text
(the forms whisper gives) and, with --speech, spoken by espeak-ng and transcribed by the
project's transcriber first. A planted value is caught when no 4 of its digits in a row
(separators removed) and none of its e-mail words survive in any segment text or word.

    .venv/bin/python benchmark/pii_holdout.py [--speech]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

HOLDOUT_WRITTEN = [
    (["My phone is 4 1 5. 8 8 2. 0 1 9 3."], "4158820193"),
    (["SSN is 078-05. 1120, got it?"], "078051120"),
    (["Card number: 5500 0000. 0000 0004."], "5500000000000004"),
    (["The Amex is 3782, 822463, 10005."], "378282246310005"),
    (["Reach me at seven one eight, five five five, oh one four two."], "7185550142"),
    (["My number is 9-1-7, 3-4-6, 2-2-0-1."], "9173462201"),
    (["The social is 219 09 9999."], "219099999"),
    (["Phone me on 646 555.", "0173, after six."], "6465550173"),
    (["It's triple seven, two one two, eight eight four oh."], "7772128840"),
    (["Account 0 4 4, 5 1 9, 3 3 7 0."], "0445193370"),
    (["Email j dot nguyen at fastmail dot com."], ["nguyen", "fastmail"]),
    (["It's k.okafor at outlook.com."], ["okafor", "outlook"]),
    (["Mail it to David.Chen.org."], ["chen"]),
    (["Write to sam.ortizatprotonmail.com today."], ["ortiz", "protonmail"]),
    (["Contact lee underscore wong at example dot net."], ["wong", "example"]),
]

HOLDOUT_SPOKEN = [
    ("My cell is nine one seven, three four six, two two oh one.", "9173462201"),
    ("My social is two one nine, oh nine, nine nine nine nine.", "219099999"),
    ("The visa is five five oh oh, one two three four, five six seven eight, nine oh one two.", "5500123456789012"),
    ("Reach me at seven one eight, five five five, oh one four two, any time.", "7185550142"),
    ("Email me at james dot lee at gmail dot com.", ["lee", "gmail"]),
    ("Send it to anna dot kim at outlook dot com.", ["kim", "outlook"]),
]

# Names and places, spoken (tests/test_planted_pii.py has the tuned set, run through the whole pipeline).
HOLDOUT_NAMES = [
    ("Good morning, Olivia Martinez here, I'm calling from Nashville.", ["Olivia", "Martinez", "Nashville"]),
    ("Please forward this to Kevin O'Brien at the Denver office.", ["Kevin", "Brien", "Denver"]),
    ("My husband, Daniel Wright, will pick it up in Sacramento.", ["Daniel", "Wright", "Sacramento"]),
    ("I was born in Milwaukee and my mother is Linda Hughes.", ["Milwaukee", "Linda", "Hughes"]),
    ("Ask for Rebecca Turner when you arrive in Pittsburgh.", ["Rebecca", "Turner", "Pittsburgh"]),
    ("Jason Kim from Baltimore left you a message.", ["Jason", "Kim", "Baltimore"]),
]


def name_share(cases, transcripts):
    """(planted name/place words still there after redaction, those the transcriber wrote)."""
    import re

    from test_spoken_pii import ENTITIES
    from scribeline.redaction import redact

    heard = left = 0
    for (_, words), t in zip(cases, transcripts):
        said = {w.lower() for w in re.findall(r"[A-Za-z]+", t.text)}
        out = {w.lower() for s in redact(t, ENTITIES).transcript.segments for w in re.findall(r"[A-Za-z]+", s.text)}
        for w in words:
            if w.lower() in said:
                heard += 1
                if w.lower() in out:
                    left += 1
                    print(f"  left {w!r}: {t.text!r}")
    return left, heard


def recall(cases, transcripts):
    from test_spoken_pii import ENTITIES, leaks
    from scribeline.redaction import redact

    present = caught = 0
    for (label, secret), t in zip(cases, transcripts):
        if not leaks(t, secret):
            print(f"  lost before redaction: {t.text!r}")
            continue  # the transcript lost the value before redaction: nothing to catch
        present += 1
        left = leaks(redact(t, ENTITIES).transcript, secret)
        caught += not left
        if left:
            print(f"  leaked {left}: {t.text!r}")
    return caught, present


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speech", action="store_true", help="also speak, transcribe and redact the spoken sets")
    args = ap.parse_args()
    import test_spoken_pii as tuned

    for name, written in (("tuned", tuned.WRITTEN), ("holdout", HOLDOUT_WRITTEN)):
        caught, present = recall(written, [tuned.transcript_of(*segs) for segs, _ in written])
        print(f"{name} written: {caught}/{present} planted values redacted")
    if args.speech:
        os.environ.setdefault("SCRIBELINE_DEVICE", "cpu")
        models = ROOT.parent / "shared" / "models" / "tiny.en.pt"
        if models.exists():
            os.environ.setdefault("SCRIBELINE_MODEL", str(models))
        from tests.conftest import speak
        from scribeline import local
        from scribeline.config import Settings

        tmp = Path(tempfile.mkdtemp(prefix="pii-holdout-"))
        for name, spoken in (("tuned", tuned.SPOKEN), ("holdout", HOLDOUT_SPOKEN)):
            paths = [speak(text, tmp / f"{name}{i}.wav") for i, (text, _) in enumerate(spoken)]
            results = local.transcribe_files(Settings.from_env(), paths, tmp / name)
            caught, present = recall(spoken, [r.transcript for r in results])
            print(f"{name} speech: {caught}/{present} planted values redacted "
                  f"({len(spoken) - present} lost by the transcriber before redaction)")
        paths = [speak(text, tmp / f"names{i}.wav") for i, (text, _) in enumerate(HOLDOUT_NAMES)]
        results = local.transcribe_files(Settings.from_env(), paths, tmp / "names")
        left, heard = name_share(HOLDOUT_NAMES, [r.transcript for r in results])
        print(f"holdout names and places: {left}/{heard} heard words left after redaction")
    redacted, total = tuned.redacted_share(tuned.reference_texts())
    print(f"clean references: {redacted}/{total} words redacted ({100 * redacted / total:.2f} %)")


if __name__ == "__main__":
    main()
