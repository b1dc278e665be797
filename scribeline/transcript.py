"""What a transcription produces: words, segments, the guards' flags, the transcript, and the
options that produce it. Plain data, no torch: the flow's own process (loading, the warehouse's
rows) reads transcripts without loading the model's libraries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None  # None: detect from speech windows
    task: str = "transcribe"  # or "translate" (to English)
    batch_size: int = 0  # 0: choose from the device
    word_timestamps: bool = True
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    beam_size: int | None = 5  # beam search at temperature 0 (None: greedy)
    best_of: int = 5  # samples per window when falling back to temperature > 0
    language_windows: int = 3  # speech windows used to detect a file's language
    max_tokens_per_s: float = 16.0  # a window decodes at most this many tokens per second of its audio (+ 8)
    decode_budget_factor: float = 2.0  # a track may hold the model this many times its duration...
    decode_budget_min_s: float = 60.0  # ...but at least this long; fallbacks stop at half of it


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass
class Segment:
    """A sentence (or a whole window without word timestamps) with its quality signals."""

    start: float
    end: float
    text: str
    window_index: int
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    words: list[Word] = field(default_factory=list)
    channel: int | None = None


@dataclass
class Flag:
    """A guard's finding on a transcript: what, where, and why (see ``guards``)."""

    name: str  # e.g. repeated_text, word_rate, unintelligible, token_budget, decode_budget
    reason: str
    window_index: int | None = None
    start: float | None = None
    end: float | None = None


@dataclass
class Transcript:
    language: str
    language_probability: float
    segments: list[Segment]
    windows_decoded: int = 0
    windows_silent: int = 0  # windows whisper judged to hold no speech
    flags: list[Flag] = field(default_factory=list)

    @property
    def needs_review(self) -> bool:
        return bool(self.flags)

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments).strip()

    @property
    def no_speech(self) -> bool:
        return not self.segments

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Transcript":
        segs = [Segment(**{**s, "words": [Word(**w) for w in s["words"]]}) for s in d["segments"]]
        return cls(d["language"], d["language_probability"], segs, d.get("windows_decoded", 0), d.get("windows_silent", 0),
                   [Flag(**f) for f in d.get("flags", [])])
