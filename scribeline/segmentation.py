"""Voice-activity detection (silero-vad) and the cut-and-merge of speech into windows.

Speech probabilities come from silero's sequence model, block by block over the
normalized audio file, so memory stays flat however long the file. Speech spans
are then merged into windows of at most ``max_window_s`` that start and end in
pauses (the cut-and-merge of WhisperX), so no word is cut at a window boundary.
All offsets are integer sample counts.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from scribeline.media import SAMPLE_RATE, read_samples
from scribeline.model_thread import cpu_threads

PAD_S = 0.2  # context kept around speech at window edges


@dataclass(frozen=True)
class Span:
    start: int  # sample offsets, end exclusive
    end: int


@dataclass
class Window:
    """A stretch of audio, ≤ max_window_s, that whisper decodes as one input."""

    index: int
    start: int
    end: int
    speech: list[Span] = field(default_factory=list)

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE

    @property
    def num_samples(self) -> int:
        return self.end - self.start

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Window":
        return cls(d["index"], d["start"], d["end"], [Span(**s) for s in d.get("speech", [])])


@dataclass
class SegmentationOptions:
    threshold: float = 0.5
    max_window_s: float = 30.0
    min_speech_ms: int = 250
    min_silence_ms: int = 300
    speech_pad_ms: int = 60


@functools.lru_cache(maxsize=1)
def _silero():
    """Import silero_vad without its side effect: it calls torch.set_num_threads(1) on import,
    which would halve whisper's speed on every later batch in this process."""
    import torch

    threads = torch.get_num_threads()
    import silero_vad

    torch.set_num_threads(threads)
    return silero_vad


@functools.lru_cache(maxsize=1)
def _vad_model():
    # The sequence model runs one ONNX call per 512 frames instead of one per frame.
    return _silero().load_silero_vad(sequence=True)


class _GainView:
    """Lets silero read samples [start, end) of a normalized file block by block, with gain applied."""

    def __init__(self, audio: np.ndarray, gain_db: float, start: int = 0, end: int | None = None):
        self.audio, self.gain_db, self.start = audio, gain_db, start
        self.size = (int(audio.shape[0]) if end is None else end) - start

    def __getitem__(self, s: slice) -> np.ndarray:
        lo, hi = s.start or 0, s.stop if s.stop is not None else self.size
        return read_samples(self.audio, self.start + lo, self.start + min(hi, self.size), self.gain_db)


FRAME_SAMPLES = 512  # one silero probability per 512 samples (32 ms)
PARALLEL_VAD_MIN_S = 120.0  # recordings at least this long are scored in parallel parts...
VAD_PREROLL_S = 30.0  # ...each part but the first starting this early, its frames dropped (8 s left probabilities apart for 40 s)


def speech_probabilities(audio: np.ndarray, gain_db: float = 0.0, parts: int | None = None) -> np.ndarray:
    """Per-512-sample-frame speech probability over the whole file.

    The sequence model is numpy + ONNX Runtime (one intra-op thread, GIL released in its
    kernels), no torch, so it runs in the calling thread and several files' VAD run side
    by side. Its recurrent state makes one file a serial chain of frames: a long recording
    is cut at frame boundaries into ``parts`` (default: one per core) scored in parallel.
    Each part after the first starts VAD_PREROLL_S early so the model's state has mostly
    settled by its first kept frame: the speech spans come out the same, a boundary now and
    then a frame (32 ms) apart (tested). ``parts=1`` scores the file as one stream.
    """
    total = int(audio.shape[0])
    if total == 0:
        return np.zeros(0, dtype=np.float32)
    frames = -(-total // FRAME_SAMPLES)
    if parts is None:
        parts = cpu_threads() if total >= PARALLEL_VAD_MIN_S * SAMPLE_RATE else 1
    parts = max(1, min(parts, frames))
    if parts == 1:
        return _vad_model().audio_forward(_GainView(audio, gain_db), sampling_rate=SAMPLE_RATE)
    bounds = [round(i * frames / parts) * FRAME_SAMPLES for i in range(parts)] + [total]
    preroll = int(VAD_PREROLL_S * SAMPLE_RATE) // FRAME_SAMPLES * FRAME_SAMPLES

    def score(i: int) -> np.ndarray:
        start = max(0, bounds[i] - preroll)
        probs = _vad_model().audio_forward(_GainView(audio, gain_db, start, bounds[i + 1]), sampling_rate=SAMPLE_RATE)
        return probs[(bounds[i] - start) // FRAME_SAMPLES :]

    with ThreadPoolExecutor(max_workers=parts) as pool:
        return np.concatenate(list(pool.map(score, range(parts))))


def speech_spans(probs: np.ndarray, num_samples: int, opts: SegmentationOptions) -> list[Span]:
    get_speech_timestamps_from_probs = _silero().get_speech_timestamps_from_probs
    # Long unbroken speech is split by silero at its quietest point before the limit.
    max_speech = opts.max_window_s - 2 * PAD_S - 0.1
    stamps = get_speech_timestamps_from_probs(
        probs.tolist(),
        sampling_rate=SAMPLE_RATE,
        threshold=opts.threshold,
        min_speech_duration_ms=opts.min_speech_ms,
        max_speech_duration_s=max_speech,
        min_silence_duration_ms=opts.min_silence_ms,
        speech_pad_ms=opts.speech_pad_ms,
        audio_length_samples=num_samples,
    )
    return [Span(int(s["start"]), min(int(s["end"]), num_samples)) for s in stamps if s["end"] > s["start"]]


def merge_spans(spans: list[Span], num_samples: int, max_window_s: float = 30.0) -> list[Window]:
    """Greedy merge of consecutive spans into windows ≤ max_window_s, cut only in pauses."""
    pad = int(PAD_S * SAMPLE_RATE)
    limit = int(max_window_s * SAMPLE_RATE) - 2 * pad
    groups: list[list[Span]] = []
    for span in spans:
        if groups and span.end - groups[-1][0].start <= limit:
            groups[-1].append(span)
        else:
            groups.append([span])
    windows: list[Window] = []
    for i, group in enumerate(groups):
        start, end = group[0].start, group[-1].end
        # Pad into the pause, but never past the middle of the gap to a neighbour.
        lo = 0 if i == 0 else (groups[i - 1][-1].end + start) // 2
        hi = num_samples if i == len(groups) - 1 else (end + groups[i + 1][0].start) // 2
        windows.append(Window(i, max(lo, start - pad), min(hi, end + pad), list(group)))
    return windows


def segment(audio: np.ndarray, gain_db: float, opts: SegmentationOptions | None = None) -> list[Window]:
    """Speech windows of a normalized file; an empty list means no speech anywhere."""
    opts = opts or SegmentationOptions()
    probs = speech_probabilities(audio, gain_db)
    spans = speech_spans(probs, int(audio.shape[0]), opts)
    return merge_spans(spans, int(audio.shape[0]), opts.max_window_s)
