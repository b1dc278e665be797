"""Personal data in the forms speech takes in whisper's output.

Whisper writes a dictated number in pieces ("653-58. 736-7.", "4626. 436. 061. 1585.",
"0 to 0 7 9 4 6 double 5 1 2") and an e-mail address spoken aloud as words or run
together ("maria dot patel at mailpost dot org", "Maria.patelatmailpost.org",
"Robert.Walker.com"). Presidio's own recognizers see no single number and no "@"
there. ``digit_runs`` joins the pieces of a number across separators, spelled
digits and the words whisper hears for digits; ``classify`` names a run by its digit
count and the words before it; the e-mail forms are patterns. Presidio's recognizers
built on them are in ``spoken_recognizers`` (the analyzer's process): this module
imports no Presidio, so the residual check of the redacted output (``residual_pii``)
costs the pipeline's process no Presidio and spaCy import (1.5-3 s of CPU, measured).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DIGIT_WORDS = {"zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9", "niner": "9"}
# Words whisper writes for a spoken digit inside a number ("0 to 0", "for 1277"): a digit only between digits.
SOUND_ALIKES = {"to": "2", "too": "2", "for": "4", "won": "1", "ate": "8", "i'm": "9"}
REPEATS = {"double": 2, "triple": 3}
HESITATIONS = {"uh", "um", "er", "ah", "dash", "hyphen", "space"}
_TOKEN = re.compile(r"\d+|[A-Za-z]+(?:'[A-Za-z]+)?")
_SEPARATOR = re.compile(r"[\s.,;:/()\-\u2013\u2014]*")  # what may stand between two pieces of one number
_QUANTITY = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")  # "1,500,000": an amount, not a dictated number
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")  # an IP address, left to Presidio's IP recognizer

CONTEXT = {  # by priority: "social security number" is an SSN, not a phone number
    "US_SSN": ("social", "security", "ssn"),
    "CREDIT_CARD": ("card", "credit", "debit", "visa", "mastercard", "amex"),
    "PHONE_NUMBER": ("phone", "call", "number", "cell", "mobile", "reach", "text", "dial", "fax", "extension"),
}
CONTEXT_WORDS = 8  # words before a number that may say what it is


@dataclass
class DigitRun:
    start: int
    end: int
    digits: str
    groups: list[int]  # digits per written piece, e.g. [3, 2, 4] for "653-58-7367"


def digit_runs(text: str) -> list[DigitRun]:
    """Maximal runs of digits (written or spelled) joined across separators, hesitations and sound-alikes."""
    tokens = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text)]
    runs: list[DigitRun] = []
    i = 0
    while i < len(tokens):
        if _digits(tokens, i) is None:
            i += 1
            continue
        # A leading sound-alike directly before a number ("for 1277-913") goes with it, uncounted.
        first = i - 1 if i > 0 and tokens[i - 1][2].lower() in SOUND_ALIKES and _joined(text, tokens, i - 1) else i
        digits, groups, last, j = "", [], i, i
        pending: list[int] = []  # bridge words waiting for a digit after them
        while j < len(tokens):
            if j > last and not _joined(text, tokens, j - 1):
                break
            d = _digits(tokens, j)
            if d is not None:
                for k in pending:  # sound-alikes between digits were digits
                    digits += SOUND_ALIKES.get(tokens[k][2].lower(), "")
                pending = []
                d, step = d
                digits += d
                groups.append(len(d))
                last, j = j + step - 1, j + step
                continue
            word = tokens[j][2].lower()
            if (word in SOUND_ALIKES or word in HESITATIONS) and len(pending) < 1:
                pending.append(j)
                j += 1
                continue
            break
        runs.append(DigitRun(tokens[first][0], tokens[last][1], digits, groups))
        i = last + 1
    return runs


def _joined(text: str, tokens, k: int) -> bool:
    """Whether only separators stand between token k and token k+1."""
    if k + 1 >= len(tokens):
        return False
    gap = text[tokens[k][1]:tokens[k + 1][0]]
    return _SEPARATOR.fullmatch(gap) is not None


def _digits(tokens, j: int) -> tuple[str, int] | None:
    """The digits token j stands for and how many tokens it takes ("double 5": two), or None."""
    word = tokens[j][2].lower()
    if word.isdigit():
        return word, 1
    if word in DIGIT_WORDS:
        # "o"/"oh" alone is an interjection: a zero only beside another digit.
        if word in ("o", "oh") and not any(
                0 <= k < len(tokens) and (tokens[k][2].isdigit() or tokens[k][2].lower() in DIGIT_WORDS.keys() - {"o", "oh"})
                for k in (j - 1, j + 1)):
            return None
        return DIGIT_WORDS[word], 1
    if word in REPEATS and j + 1 < len(tokens):
        nxt = tokens[j + 1][2].lower()
        d = nxt if nxt.isdigit() and len(nxt) == 1 else DIGIT_WORDS.get(nxt)
        if d is not None:
            return d * REPEATS[word], 2
    return None


def classify(text: str, run: DigitRun, min_digits: int = 7) -> str | None:
    """PHONE_NUMBER, US_SSN or CREDIT_CARD by the words before the run and its digit count; None if no PII."""
    n = len(run.digits)
    before = re.findall(r"[a-z]+", text[max(0, run.start - 120):run.start].lower())[-CONTEXT_WORDS:]
    for entity, words in CONTEXT.items():
        if n >= 5 and any(w.startswith(words) for w in before):
            return entity
    written = text[run.start:run.end].strip()
    if _QUANTITY.fullmatch(written) or _DOTTED_QUAD.fullmatch(written) or text[max(0, run.start - 1):run.start] == "$":
        return None
    if n < min_digits:
        return None
    if 13 <= n <= 19:
        return "CREDIT_CARD"
    if n == 9 and run.groups == [3, 2, 4]:
        return "US_SSN"
    return "PHONE_NUMBER"  # a long dictated number: phone or account number


EMAIL_TLD = r"(?:com|org|net|edu|gov|io|co|us|uk|info|biz|me|ai)"
EMAIL_NAME = r"[a-z0-9][a-z0-9_-]*"
EMAIL_DOT = r"(?:\s*\.\s*|\s+dot\s+)"
# maria dot patel at mailpost dot org / maria.patel at mailpost.org: the redaction's recognizer
# (spoken_recognizers.py) and the residual check below match the same spelling.
SPOKEN_EMAIL = rf"\b{EMAIL_NAME}(?:{EMAIL_DOT}{EMAIL_NAME})*\s+at\s+{EMAIL_NAME}(?:{EMAIL_DOT}{EMAIL_NAME})*{EMAIL_DOT}{EMAIL_TLD}\b"
EMAIL_CONTEXT = ["email", "e-mail", "mail", "write", "address", "contact", "reach", "send"]


NER_ENTITIES = {"PERSON", "LOCATION", "NRP", "ORGANIZATION"}


def plausible_name(entity_type: str, value: str) -> bool:
    """Whether a spaCy name/place finding may stand: whisper capitalizes names, so a finding with no
    capital letter ("canoe", "the north") is a common word."""
    return entity_type not in NER_ENTITIES or any(c.isupper() for c in value)


# ------------------------------------------------------------------ residuals
# What the redacted output is checked for (validation's ``redacted`` suite): a structured value
# that survived redaction, in any spelling. Redaction tags (``<PHONE_NUMBER:3f9a1c2e>``) are
# blanked first: their hash's digits are no spoken number.
_TAG = re.compile(r"<[A-Z_]+(?::[0-9a-f]+)?>")
_WRITTEN_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_SPOKEN_EMAIL = re.compile(SPOKEN_EMAIL, re.I)
_RUN_TOGETHER_EMAIL = re.compile(rf"\b{EMAIL_NAME}(?:\.{EMAIL_NAME})*at[a-z0-9-]+\.{EMAIL_TLD}\b", re.I)
RESIDUAL_MIN_DIGITS = 7  # a phone number's local part; card numbers and SSNs are longer


def residual_pii(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of every structured value left in ``text``: a number of 7+ digits however
    it is written or spelled (not an amount, not an IP address), or an e-mail address written,
    spoken ("maria dot patel at mailpost dot org") or run together ("patelatmailpost.org")."""
    clean = _TAG.sub(lambda m: " " * len(m.group()), text)  # same offsets
    found = []
    for run in digit_runs(clean):
        written = clean[run.start:run.end].strip()
        if (len(run.digits) >= RESIDUAL_MIN_DIGITS and not _QUANTITY.fullmatch(written)
                and not _DOTTED_QUAD.fullmatch(written)):
            found.append((run.start, run.end, "number"))
    for pattern in (_WRITTEN_EMAIL, _SPOKEN_EMAIL, _RUN_TOGETHER_EMAIL):
        found += [(m.start(), m.end(), "email") for m in pattern.finditer(clean)
                  if not any(a < m.end() and m.start() < b for a, b, _ in found)]
    return sorted(found)
