"""PII redaction with Presidio, at word granularity, so no fragment of a value survives.

The transcript is analysed as one text (names and numbers often straddle
sentence boundaries). Every word that overlaps a detected entity is rewritten by
its type's operator:

- ``replace``: the entity's tag (``<PERSON>``);
- ``mask``: the word's letters and digits as ``*`` (its length and punctuation stay);
- ``hash``: the tag with a salted hash of the normalised value (``<PHONE_NUMBER:3f9a1c2e>``),
  the same for every spelling of one number ("five five five 1234" and "555-1234"), so
  analysts can count repeats without seeing values.

Consecutive words of one entity collapse into a single tag in the segment text
(``replace``, ``hash``). Entities are reported with their type, time span, score and
(``hash`` only) the value's hash, never the value.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field, replace

from scribeline.pii import Region, find_pii
from scribeline.transcript import Segment, Transcript, Word

OPERATORS = ("replace", "mask", "hash")


@dataclass(frozen=True)
class Operators:
    """How each entity type's value is written: ``by_type`` maps a type (or ``*``, the default) to an operator."""

    by_type: dict[str, str] = field(default_factory=lambda: {"*": "replace"})
    salt: str = ""  # the hash operator's secret

    def of(self, entity_type: str) -> str:
        return self.by_type.get(entity_type, self.by_type.get("*", "replace"))

    def value_hash(self, entity_type: str, value: str) -> str | None:
        if self.of(entity_type) != "hash":
            return None
        if not self.salt:
            raise ValueError("the hash operator needs a salt")
        digest = hmac.new(self.salt.encode(), f"{entity_type}:{normalised(value)}".encode(), hashlib.sha256)
        return digest.hexdigest()[:8]


def normalised(value: str) -> str:
    """One spelling per value: a number's digits however they were spoken or written, else lowercase letters."""
    from scribeline.spoken_pii import digit_runs

    digits = "".join(r.digits for r in digit_runs(value))
    if len(digits) >= 3:  # a number, however it was said
        return digits
    return re.sub(r"[^0-9a-z]+", "", value.lower())


@dataclass
class PiiEntity:
    entity_type: str
    start_s: float
    end_s: float
    score: float
    segment_index: int
    recognizer: str
    operator: str = "replace"
    value_hash: str | None = None  # hash operator only: a salted hash, never the value


@dataclass
class RedactedTranscript:
    transcript: Transcript  # same shape as the input, every text field redacted
    entities: list[PiiEntity]
    redacted_words: list[tuple[int, int]] = field(default_factory=list)  # (segment, word) indexes rewritten


def redact(transcript: Transcript, entities: tuple[str, ...], threshold: float = 0.4,
           operators: Operators | None = None, residual_guard: bool = False) -> RedactedTranscript:
    """``residual_guard``: also redact what ``spoken_pii.residual_pii`` finds outside Presidio's findings
    (run when the redacted output failed its suite: see ``stages.redact``)."""
    # Lay the transcript out as one text, remembering where each segment and word sits.
    pieces, seg_spans, word_spans = [], [], []
    pos = 0
    for seg in transcript.segments:
        if pieces:
            pieces.append(" ")
            pos += 1
        text = _segment_text(seg)
        seg_spans.append((pos, pos + len(text)))
        spans, cursor = [], pos
        lead = len(_joined(seg.words)) - len(_joined(seg.words).lstrip()) if seg.words else 0
        cursor -= lead
        for w in seg.words:
            spans.append((cursor, cursor + len(w.word)))
            cursor += len(w.word)
        word_spans.append(spans)
        pieces.append(text)
        pos += len(text)
    full = "".join(pieces)
    regions = find_pii(full, entities, threshold)
    if residual_guard:
        regions = _with_residuals(full, regions)
    operators = operators or Operators()
    hashes = {id(r): operators.value_hash(r.entity_type, full[r.start:r.end]) for r in regions}

    def rewrite(region: Region, word: str) -> str:
        op = operators.of(region.entity_type)
        if op == "mask":
            return re.sub(r"[0-9A-Za-z\u00C0-\uFFFF]", "*", word)
        return f"<{region.entity_type}:{hashes[id(region)]}>" if op == "hash" else f"<{region.entity_type}>"

    found: list[PiiEntity] = []
    redacted_words: list[tuple[int, int]] = []
    new_segments = []
    for i, seg in enumerate(transcript.segments):
        s_lo, s_hi = seg_spans[i]
        hits = [r for r in regions if r.start < s_hi and r.end > s_lo]
        if not hits:
            new_segments.append(seg)
            continue
        if seg.words:
            words, text, changed = _redact_words(seg.words, word_spans[i], hits, rewrite)
            redacted_words.extend((i, k) for k in changed)
        else:
            words, text = [], _redact_chars(full[s_lo:s_hi], s_lo, hits, rewrite)
        new_segments.append(replace(seg, text=text, words=words))
        for r in hits:
            covered = [w for w, (a, b) in zip(seg.words, word_spans[i]) if a < r.end and b > r.start]
            start = covered[0].start if covered else seg.start
            end = covered[-1].end if covered else seg.end
            found.append(PiiEntity(r.entity_type, start, end, round(r.score, 4), i, r.recognizer,
                                   operators.of(r.entity_type), hashes[id(r)]))
    return RedactedTranscript(replace(transcript, segments=new_segments), found, redacted_words)


def _with_residuals(full: str, regions: list[Region]) -> list[Region]:
    """Presidio's regions plus every residual value outside them (numbers as phone numbers, e-mails)."""
    from scribeline.spoken_pii import residual_pii

    blanked = list(full)
    for r in regions:
        blanked[r.start:r.end] = " " * (r.end - r.start)
    extra = [Region(a, b, "PHONE_NUMBER" if kind == "number" else "EMAIL_ADDRESS", 1.0, "ResidualGuard")
             for a, b, kind in residual_pii("".join(blanked))]
    return sorted(regions + extra, key=lambda r: r.start)


def _joined(words: list[Word]) -> str:
    return "".join(w.word for w in words)


def _segment_text(seg: Segment) -> str:
    return _joined(seg.words).strip() if seg.words else seg.text


def _redact_words(words: list[Word], spans, hits: list[Region], rewrite) -> tuple[list[Word], str, list[int]]:
    out_words, out_text, changed, last_region = [], [], [], None
    for k, (w, (a, b)) in enumerate(zip(words, spans)):
        region = next((r for r in hits if a < r.end and b > r.start), None)
        if region is None:
            out_words.append(w)
            out_text.append(w.word)
            last_region = None
            continue
        lead = " " if w.word.startswith(" ") else ""
        new = lead + rewrite(region, w.word.strip())
        out_words.append(replace(w, word=new))
        changed.append(k)
        masked = new.strip().startswith("*") or not new.strip().startswith("<")
        if region is not last_region or masked:  # a mask keeps every word's shape; a tag stands once
            out_text.append(new)
        last_region = region
    return out_words, "".join(out_text).strip(), changed


def _redact_chars(text: str, offset: int, hits: list[Region], rewrite) -> str:
    out, cursor = [], 0
    for r in sorted(hits, key=lambda r: r.start):
        a, b = max(r.start - offset, 0), min(r.end - offset, len(text))
        # Widen to whole words so that no fragment of the value survives.
        while a > 0 and not text[a - 1].isspace():
            a -= 1
        while b < len(text) and not text[b].isspace():
            b += 1
        if a < cursor:
            continue
        out.append(text[cursor:a])
        out.append(rewrite(r, text[a:b]))
        cursor = b
    out.append(text[cursor:])
    return "".join(out)
