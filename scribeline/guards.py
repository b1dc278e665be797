"""Hallucination and runaway guards: plain checks on decoded tokens and text.

Whisper's own safeguards (compression ratio, log-probability, no-speech) decide
whether a window is decoded again at a higher temperature. These look at what is
left after that, and at the decoding itself:

- ``looping``: the last tokens repeat one short pattern; decoding stops there.
- ``repeated_text``: a sentence or phrase said again and again inside one window
  (whisper's typical hallucination on noise: "the birch canoe slid on the smooth
  planks, the birch canoe slid on the smooth planks").
- ``word_rate``: more words than the window's speech could hold.
- ``unintelligible``: most of a track's speech windows fail whisper's checks
  (log-probability, compression ratio, a loop): the model cannot transcribe this
  speech (an English-only model given another language, or a model out of its depth
  in noise). Seen after the first pass, fallback decoding is skipped: it would only
  sample more of the same, at the highest cost.

Each finding becomes a :class:`~scribeline.transcription.Flag` on the transcript.
"""

from __future__ import annotations

import re
from collections import Counter

LOOP_REPEATS = 4  # a pattern repeated this many times back to back is a loop...
LOOP_MAX_PERIOD = 12  # ...if it is at most this many tokens long
REPEAT_MIN_WORDS = 5  # a phrase this long said twice in one window is repeated text...
REPEAT_SHORT_WORDS = 3  # ...and one this long said three times
MAX_WORDS_PER_S = 6.5  # very fast speech is ~5 words/s; more than this cannot have been said
WORD_RATE_MIN_WORDS = 12  # too few words to judge a rate on
UNINTELLIGIBLE_SHARE = 0.5  # share of speech windows failing whisper's checks...
UNINTELLIGIBLE_MIN_WINDOWS = 3  # ...out of at least this many, to give up on fallbacks after the first pass

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def looping(tokens: list[int]) -> bool:
    """Whether the sequence ends in LOOP_REPEATS back-to-back copies of one pattern."""
    for period in range(1, LOOP_MAX_PERIOD + 1):
        span = period * LOOP_REPEATS
        if len(tokens) < span:
            return False
        tail = tokens[-span:]
        if tail == tail[:period] * LOOP_REPEATS:
            return True
    return False


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def repeated_phrase(text: str) -> tuple[int, int] | None:
    """(words, times) of a phrase of REPEAT_MIN_WORDS+ words said twice or of REPEAT_SHORT_WORDS+ said
    three times; None if there is none. Not the phrase itself: the finding is stored unredacted."""
    words = words_of(text)
    for n, times in ((REPEAT_MIN_WORDS, 2), (REPEAT_SHORT_WORDS, 3)):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        for gram, count in grams.most_common(1):
            apart = _apart(words, gram)
            if count >= times and apart >= times:
                return n, apart
    return None


def _apart(words: list[str], gram: tuple[str, ...]) -> int:
    """Non-overlapping occurrences of ``gram`` ("ha ha ha ha" holds "ha ha" twice, not three times)."""
    n, i, count = len(gram), 0, 0
    while i <= len(words) - n:
        if tuple(words[i : i + n]) == gram:
            count, i = count + 1, i + n
        else:
            i += 1
    return count


def too_fast(text: str, speech_s: float) -> float | None:
    """Words per second of speech, if more than could have been said; else None."""
    n = len(words_of(text))
    if n < WORD_RATE_MIN_WORDS or speech_s <= 0:
        return None
    rate = n / speech_s
    return rate if rate > MAX_WORDS_PER_S else None


def unintelligible(failing: int, speech_windows: int, min_windows: int = 1) -> bool:
    """Whether the share of speech windows failing whisper's checks says the model cannot follow."""
    return speech_windows >= min_windows and failing / speech_windows >= UNINTELLIGIBLE_SHARE
