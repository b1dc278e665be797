"""PII redaction with Presidio, at word granularity, so no fragment of a value survives.

The transcript is analysed as one text (names and numbers often straddle
sentence boundaries). Every word that overlaps a detected entity is replaced by
the entity's tag (``<PERSON>``); consecutive redacted words of one entity
collapse into a single tag in the segment text. Entities are reported with their
type, time span and score, never their value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from scribeline.pii import Region, find_pii
from scribeline.transcript import Segment, Transcript, Word


@dataclass
class PiiEntity:
    entity_type: str
    start_s: float
    end_s: float
    score: float
    segment_index: int
    recognizer: str


@dataclass
class RedactedTranscript:
    transcript: Transcript  # same shape as the input, every text field redacted
    entities: list[PiiEntity]


def redact(transcript: Transcript, entities: tuple[str, ...], threshold: float = 0.4) -> RedactedTranscript:
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

    found: list[PiiEntity] = []
    new_segments = []
    for i, seg in enumerate(transcript.segments):
        s_lo, s_hi = seg_spans[i]
        hits = [r for r in regions if r.start < s_hi and r.end > s_lo]
        if not hits:
            new_segments.append(seg)
            continue
        if seg.words:
            words, text = _redact_words(seg.words, word_spans[i], hits)
        else:
            words, text = [], _redact_chars(full[s_lo:s_hi], s_lo, hits)
        new_segments.append(replace(seg, text=text, words=words))
        for r in hits:
            covered = [w for w, (a, b) in zip(seg.words, word_spans[i]) if a < r.end and b > r.start]
            start = covered[0].start if covered else seg.start
            end = covered[-1].end if covered else seg.end
            found.append(PiiEntity(r.entity_type, start, end, round(r.score, 4), i, r.recognizer))
    return RedactedTranscript(replace(transcript, segments=new_segments), found)


def _joined(words: list[Word]) -> str:
    return "".join(w.word for w in words)


def _segment_text(seg: Segment) -> str:
    return _joined(seg.words).strip() if seg.words else seg.text


def _redact_words(words: list[Word], spans, hits: list[Region]) -> tuple[list[Word], str]:
    out_words, out_text, last_region = [], [], None
    for w, (a, b) in zip(words, spans):
        region = next((r for r in hits if a < r.end and b > r.start), None)
        if region is None:
            out_words.append(w)
            out_text.append(w.word)
            last_region = None
            continue
        tag = f"<{region.entity_type}>"
        out_words.append(replace(w, word=(" " if w.word.startswith(" ") else "") + tag))
        if region is not last_region:
            out_text.append((" " if w.word.startswith(" ") else "") + tag)
        last_region = region
    return out_words, "".join(out_text).strip()


def _redact_chars(text: str, offset: int, hits: list[Region]) -> str:
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
        out.append(f"<{r.entity_type}>")
        cursor = b
    out.append(text[cursor:])
    return "".join(out)
