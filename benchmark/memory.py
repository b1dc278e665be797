"""Peak memory of the transcription stage against recording length (10 min, 1 h, 3 h).

    .venv/bin/python -m benchmark.memory [--hours 0.1667,1,3]

Each length runs in its own process (probe, streaming normalize, VAD over the
file block by block, batched decoding with word timestamps) and reports its peak
resident memory, so the figures are comparable. Inputs are the 10-minute
long-form file of benchmark.audio repeated; every figure includes the model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmark.audio import build_longform  # noqa: E402


def repeat(base: Path, times: int, out: Path) -> Path:
    if not out.exists():
        listing = out.with_suffix(".txt")
        listing.write_text("".join(f"file '{base}'\n" for _ in range(times)))
        subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
                        "-i", str(listing), "-c:a", "flac", str(out)], check=True)
    return out


def measure(path: Path) -> dict:
    from scribeline import local, stages
    from scribeline.config import Settings

    settings = Settings.from_env()
    stages.transcriber(settings)
    start = time.perf_counter()
    result = local.transcribe_files(settings, [path], Path(tempfile.mkdtemp(prefix="scribeline-mem-")))[0]
    wall = time.perf_counter() - start
    words = [w for s in result.transcript.segments for w in s.words]
    return {"audio_s": result.audio.duration_s, "wall_s": wall, "words": len(words),
            "last_word_s": words[-1].end if words else None,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", default="0.1667,1,3")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "scribeline-benchmark"))
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return 0
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    base = build_longform(workdir / "longform_en_10min.flac", 10).path
    print("| input | audio s | wall s | × realtime | peak memory MiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for hours in (float(h) for h in args.hours.split(",")):
        times = max(1, round(hours * 6))
        path = base if times == 1 else repeat(base, times, workdir / f"longform_en_{times * 10}min.flac")
        out = subprocess.run([sys.executable, "-m", "benchmark.memory", "--measure", str(path)], cwd=ROOT,
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        label = f"{times * 10} min" if times < 6 else f"{times // 6} h"
        print(f"| {label} | {r['audio_s']:.0f} | {r['wall_s']:.1f} | {r['audio_s'] / r['wall_s']:.1f} | {r['peak_mib']:.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
