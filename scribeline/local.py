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
from scribeline.transcription import Transcript


@dataclass
class LocalResult:
    path: Path
    info: media.MediaInfo
    audio: media.NormalizedAudio
    windows: list[segmentation.Window]
    transcript: Transcript


def transcribe_files(settings: Settings, paths: list[Path], workdir: Path | None = None) -> list[LocalResult]:
    """Normalize and segment each file, then decode all their windows in shared batches."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="scribeline-local-"))
    workdir.mkdir(parents=True, exist_ok=True)
    opts = stages.segmentation_options(settings)

    def prepare(i: int):
        path = Path(paths[i])
        info = media.probe(path)
        norm = media.normalize(path, workdir / f"{i}.s16", info)
        samples = media.open_audio(norm.path)
        return path, info, norm, samples, segmentation.segment(samples, norm.gain_db, opts)

    # ffmpeg and the VAD use one core each: prepare files side by side, the largest first
    # (as the pipeline's normalize and segment waves do), then decode them all together.
    order = sorted(range(len(paths)), key=lambda i: -Path(paths[i]).stat().st_size)
    with ThreadPoolExecutor(max_workers=cpu_threads()) as pool:
        done = dict(zip(order, pool.map(prepare, order)))
    prepared = [done[i] for i in range(len(paths))]
    jobs = [stages.audio_job(settings, samples, norm.gain_db, windows, info.sample_rate)
            for _, info, norm, samples, windows in prepared]
    transcripts = stages.transcriber(settings).transcribe(jobs)
    return [LocalResult(p, info, norm, windows, t) for (p, info, norm, _, windows), t in zip(prepared, transcripts)]
