"""The transcription path on local files, without S3 or Prefect: for tests and benchmarks.

It calls the same functions the pipeline's stages call (probe, normalize,
segment, the batched transcriber), so what it measures is what the pipeline runs.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from scribeline import media, segmentation, stages
from scribeline.config import Settings
from scribeline.model_thread import cpu_threads
from scribeline.transcription import AudioJob, Transcript


@dataclass
class LocalResult:
    path: Path
    info: media.MediaInfo
    audio: media.NormalizedAudio
    windows: list[segmentation.Window]
    transcript: Transcript


@dataclass
class NormalizedTrack:
    """A file already normalized (``media.normalize``): what the segment and transcribe stages read."""

    audio: media.NormalizedAudio
    source_sample_rate: int


def transcribe_files(settings: Settings, paths: list[Path], workdir: Path | None = None) -> list[LocalResult]:
    """Normalize and segment each file, then decode all their windows in shared batches."""
    prepared = prepare_files(settings, paths, workdir)
    transcripts = _transcribe(settings, [(track, windows) for _, track, windows in prepared])
    return [LocalResult(Path(p), info, track.audio, windows, t)
            for p, (info, track, windows), t in zip(paths, prepared, transcripts)]


def prepare_files(settings: Settings, paths: list[Path], workdir: Path | None = None
                  ) -> list[tuple[media.MediaInfo, NormalizedTrack, list[segmentation.Window]]]:
    """Each file probed, normalized and segmented: what the transcribe stage reads."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="scribeline-local-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def prepare(i: int):
        info = media.probe(Path(paths[i]))
        track = NormalizedTrack(media.normalize(Path(paths[i]), workdir / f"{i}.s16", info), info.sample_rate)
        return info, track, _windows(settings, track)

    # ffmpeg and the VAD use one core each: prepare files side by side, the largest first
    # (as the pipeline's normalize and segment waves do).
    order = sorted(range(len(paths)), key=lambda i: -Path(paths[i]).stat().st_size)
    return _in_parallel(prepare, order)


def transcribe_normalized(settings: Settings, tracks: list[NormalizedTrack]) -> list[tuple[list[segmentation.Window], Transcript]]:
    """Segment and transcribe audio normalized earlier (where no ffmpeg is at hand: the GPU benchmark)."""
    order = sorted(range(len(tracks)), key=lambda i: -tracks[i].audio.num_samples)
    windows = _in_parallel(lambda i: _windows(settings, tracks[i]), order)
    return list(zip(windows, _transcribe(settings, list(zip(tracks, windows)))))


def _in_parallel(fn, order: list[int]) -> list:
    """fn(i) for every index, those in ``order`` first, one per core; results in index order."""
    with ThreadPoolExecutor(max_workers=cpu_threads()) as pool:
        done = dict(zip(order, pool.map(fn, order)))
    return [done[i] for i in range(len(order))]


def _windows(settings: Settings, track: NormalizedTrack) -> list[segmentation.Window]:
    return segmentation.segment(media.open_audio(track.audio.path), track.audio.gain_db, stages.segmentation_options(settings))


def audio_jobs(settings: Settings, segmented: list[tuple[NormalizedTrack, list[segmentation.Window]]]) -> list[AudioJob]:
    return [stages.audio_job(settings, media.open_audio(track.audio.path), track.audio.gain_db, windows, track.source_sample_rate)
            for track, windows in segmented]


def _transcribe(settings: Settings, segmented: list[tuple[NormalizedTrack, list[segmentation.Window]]]) -> list[Transcript]:
    return stages.transcriber(settings).transcribe(audio_jobs(settings, segmented))
