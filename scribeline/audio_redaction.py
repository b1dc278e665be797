"""A redacted copy of the audio: every PII span (from the redacted words' timestamps) beeped or muted.

The spans are the redacted entities' time spans widened by ``padding_s`` on each side
(word timestamps are approximate; a syllable of a number must not survive) and merged
where they touch. The copy is made from the normalized track (16 kHz mono) and encoded
as FLAC: lossless, so everything outside the spans is the normalized audio sample for
sample. Streamed in blocks, so a three-hour file does not enter memory whole.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scribeline import media

MODES = ("beep", "mute", "off")
BEEP_HZ = 1000.0
BEEP_LEVEL = 0.25  # -12 dBFS: audible, not painful
_BLOCK = media.SAMPLE_RATE * 60


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float


def spans(entities: list[dict], padding_s: float, duration_s: float) -> list[Span]:
    """The entities' time spans, padded, clipped to the media and merged where they overlap."""
    raw = sorted((max(0.0, e["start_s"] - padding_s), min(duration_s, e["end_s"] + padding_s))
                 for e in entities if e.get("start_s") is not None and e.get("end_s") is not None)
    merged: list[list[float]] = []
    for a, b in raw:
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [Span(a, b) for a, b in merged]


def redact_track(source: media.AudioFile, out: Path, cut: list[Span], mode: str) -> Path:
    """Write ``source`` with ``cut`` beeped or muted to ``out`` (FLAC, 16 kHz mono 16-bit)."""
    if mode not in ("beep", "mute"):
        raise ValueError(f"audio redaction mode {mode!r}: use beep, mute or off")
    rate = media.SAMPLE_RATE
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "f32le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0",
           "-c:a", "flac", "-sample_fmt", "s16", str(out)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for lo in range(0, len(source), _BLOCK):
            hi = min(lo + _BLOCK, len(source))
            block = np.array(source[lo:hi], dtype=np.float32)
            for span in cut:
                a, b = max(int(span.start_s * rate), lo), min(int(np.ceil(span.end_s * rate)), hi)
                if a >= b:
                    continue
                if mode == "mute":
                    block[a - lo:b - lo] = 0.0
                else:
                    t = np.arange(a, b, dtype=np.float64) / rate
                    block[a - lo:b - lo] = (BEEP_LEVEL * np.sin(2 * np.pi * BEEP_HZ * t)).astype(np.float32)
            proc.stdin.write(block.tobytes())
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg could not write the redacted audio: {err.strip()[-500:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out
