"""Probe and normalize media with ffprobe/ffmpeg: any container in, 16 kHz mono PCM out.

Files are judged by their content (ffprobe), never by extension. Decoding streams
through a pipe in fixed-size blocks, so memory does not grow with duration, and
the output is raw little-endian PCM that later stages read by position: 16-bit
(``.s16``, what whisper itself decodes to: half the bytes of float32 to store and
upload) or float32 (``.f32``, what earlier versions stored; still read).
"""

from __future__ import annotations

import math
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import ffmpeg
import numpy as np

SAMPLE_RATE = 16_000
BLOCK_SAMPLES = SAMPLE_RATE * 30  # decode in 30 s blocks
FRAME = 480  # 30 ms level-measurement frames
TARGET_SPEECH_DBFS = -20.0
MAX_GAIN_DB = 50.0


# Raw formats of normalized audio, by file suffix: (ffmpeg format, codec, numpy dtype, scale to [-1, 1]).
RAW_FORMATS = {
    ".s16": ("s16le", "pcm_s16le", np.dtype("<i2"), 1 / 32768),
    ".f32": ("f32le", "pcm_f32le", np.dtype("<f4"), 1.0),
}


def _raw_format(path: Path) -> tuple[str, str, np.dtype, float]:
    try:
        return RAW_FORMATS[Path(path).suffix]
    except KeyError:
        raise ValueError(f"normalized audio is named *.s16 or *.f32, not {Path(path).name}") from None


def _as_float(raw: bytes, dtype: np.dtype, scale: float) -> np.ndarray:
    """Raw PCM bytes as float32 samples in [-1, 1] (float32 bytes: as stored, no copy)."""
    samples = np.frombuffer(raw, dtype=dtype)
    return samples if scale == 1.0 else samples.astype(np.float32) * np.float32(scale)


class MediaError(Exception):
    """The input cannot be turned into audio; the message is shown to operators."""


@dataclass
class MediaInfo:
    container: str
    codec: str
    sample_rate: int
    channels: int
    duration_s: float | None
    bit_rate: int | None
    audio_stream_index: int
    has_video: bool

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class NormalizedAudio:
    """A 16 kHz mono raw PCM file (see ``RAW_FORMATS``) plus the facts later stages need."""

    path: Path
    num_samples: int
    gain_db: float
    peak_dbfs: float
    speech_level_dbfs: float

    @property
    def duration_s(self) -> float:
        return self.num_samples / SAMPLE_RATE

    def as_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def probe(path: Path) -> MediaInfo:
    try:
        info = ffmpeg.probe(str(path))
    except ffmpeg.Error as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        last = detail[-1] if detail else "unknown error"
        last = last.replace(f"{path}: ", "")  # the local scratch path means nothing to operators
        raise MediaError(f"not a media file ffprobe can read ({last})") from None
    streams = info.get("streams", [])
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    has_video = any(s.get("codec_type") == "video" and s.get("disposition", {}).get("attached_pic") != 1 for s in streams)
    if not audio:
        raise MediaError("no audio stream")
    first = audio[0]
    fmt = info.get("format", {})
    duration = _float(first.get("duration")) or _float(fmt.get("duration"))
    bit_rate = _int(first.get("bit_rate")) or _int(fmt.get("bit_rate"))
    return MediaInfo(
        container=fmt.get("format_name", "unknown"),
        codec=first.get("codec_name", "unknown"),
        sample_rate=_int(first.get("sample_rate")) or 0,
        channels=_int(first.get("channels")) or 0,
        duration_s=duration,
        bit_rate=bit_rate,
        audio_stream_index=int(first["index"]),
        has_video=has_video,
    )


def normalize(src: Path, dest: Path, info: MediaInfo, channel: int | None = None) -> NormalizedAudio:
    """Decode the first audio stream to 16 kHz mono raw PCM (``dest``: 16-bit if named *.s16, float32 if *.f32).

    ``channel`` picks one channel instead of the downmix (call-centre stereo).
    Also measures the speech level so that readers can apply gain before VAD.
    """
    stream = ffmpeg.input(str(src))["a:0"]
    if channel is not None:
        stream = stream.filter("channelmap", map=str(channel), channel_layout="mono")
    raw_format, codec, dtype, scale = _raw_format(dest)
    out = ffmpeg.output(stream, "pipe:", format=raw_format, acodec=codec, ac=1, ar=SAMPLE_RATE)
    cmd = ffmpeg.compile(out, cmd="ffmpeg", overwrite_output=True)
    cmd[1:1] = ["-nostdin", "-hide_banner", "-loglevel", "error"]
    # stderr goes to a file: a pipe nobody drains fills up on noisy input and stalls ffmpeg.
    errors = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors)
    levels: list[np.ndarray] = []
    peak = 0.0
    total = 0
    carry = np.zeros(0, dtype=np.float32)
    try:
        with open(dest, "wb") as fh:
            while True:
                raw = proc.stdout.read(BLOCK_SAMPLES * dtype.itemsize)
                if not raw:
                    break
                raw = raw[: len(raw) - len(raw) % dtype.itemsize]
                fh.write(raw)
                block = _as_float(raw, dtype, scale)
                total += block.size
                if block.size:
                    peak = max(peak, float(np.abs(block).max()))
                joined = np.concatenate([carry, block])
                n = joined.size // FRAME
                frames = joined[: n * FRAME].reshape(n, FRAME)
                levels.append(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)).astype(np.float32))
                carry = joined[n * FRAME :]
    finally:
        proc.stdout.close()
        proc.wait()
        errors.seek(0)
        stderr = errors.read()[-20000:].decode(errors="replace")
        errors.close()
    if proc.returncode != 0:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {proc.returncode}"
        raise MediaError(f"ffmpeg could not decode the audio ({last})")
    if total == 0:
        raise MediaError("the audio stream decoded to zero samples")
    rms = np.concatenate(levels) if levels else np.zeros(1, dtype=np.float32)
    speech_level = _speech_level(rms)
    gain_db = 0.0
    if speech_level > 0:
        gain_db = TARGET_SPEECH_DBFS - _db(speech_level)
        gain_db = float(np.clip(gain_db, -MAX_GAIN_DB, MAX_GAIN_DB))
    if peak < 1e-6:  # digital silence: nothing to amplify
        gain_db = 0.0
    return NormalizedAudio(dest, total, round(gain_db, 2), round(_db(peak), 2), round(_db(speech_level), 2))


def _speech_level(frame_rms: np.ndarray) -> float:
    """Typical level of the loud part of the file: the median of frames within 30 dB of its loudest.

    Measuring relative to the loudest frames keeps long silences or background
    noise from dragging the estimate down (which would over-amplify the speech).
    """
    active = frame_rms[frame_rms > 1e-7]
    if active.size == 0:
        return 0.0
    loudest = float(np.percentile(active, 99.9))  # robust to a single click
    return float(np.median(active[active >= loudest * 10 ** (-30 / 20)]))


def _db(x: float) -> float:
    return 20 * math.log10(max(x, 1e-10))


class AudioFile:
    """A normalized file read by positioned reads: only the samples asked for enter memory.

    (A memory map would do the same, but its touched pages count towards the
    process's resident memory until the kernel reclaims them; on a 3-hour file
    that is most of a gigabyte.)
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        _, _, self.dtype, self.scale = _raw_format(self.path)
        self.size = self.path.stat().st_size // self.dtype.itemsize
        self.shape = (self.size,)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, s: slice) -> np.ndarray:
        """Samples [start, stop) as float32 in [-1, 1] (float32 files: as stored)."""
        start, stop, _ = s.indices(self.size)
        if stop <= start:
            return np.zeros(0, dtype=np.float32)
        width = self.dtype.itemsize
        with open(self.path, "rb") as fh:
            fh.seek(start * width)
            return _as_float(fh.read((stop - start) * width), self.dtype, self.scale)


def open_audio(path: Path) -> AudioFile:
    return AudioFile(path)


def read_samples(audio: np.ndarray, start: int, end: int, gain_db: float) -> np.ndarray:
    """Samples [start, end) with the measured gain applied and hard-limited to [-1, 1]."""
    block = np.array(audio[start:end], dtype=np.float32)  # a writable copy
    if gain_db:
        block = np.clip(block * np.float32(10 ** (gain_db / 20)), -1.0, 1.0)
    return block


def _float(x) -> float | None:
    try:
        v = float(x)
        return v if math.isfinite(v) else None
    except (TypeError, ValueError):
        return None


def _int(x) -> int | None:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None
