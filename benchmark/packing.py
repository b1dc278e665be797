"""Short clips: the transcriber with and without packing short windows into shared whisper inputs.

    .venv/bin/python -m benchmark.packing [--repeat 5] [--model PATH|NAME]

The English recordings of ../shared/media (3 to 26 s each: one speech window
apiece) are probed, normalized and segmented once; then the same loaded model
transcribes their windows, in one batch, packed (the default) and not packed
(``SCRIBELINE_PACK_SHORT_WINDOWS=false``), alternating which goes first in each
round. Prints whisper inputs, transcription wall time (median and range; the
ratio is taken within each round), WER against the references, and where the
time went. Model loading and a warm-up of each mode come before the clock.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmark.audio import MEDIA, manifest  # noqa: E402
from benchmark.run import _default_model, corpus_wer, machine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--model", default=_default_model())
    args = p.parse_args(argv)

    import os

    os.environ.setdefault("SCRIBELINE_DATA_DIR", tempfile.mkdtemp(prefix="bench-packing-"))
    os.environ["SCRIBELINE_MODEL"] = args.model
    from scribeline import media, segmentation, stages
    from scribeline.config import Settings
    from scribeline.transcription import Transcriber

    settings = Settings.from_env()
    rows = {name: row for name, row in manifest().items() if row["language"] == "en"}
    work = Path(tempfile.mkdtemp(prefix="bench-packing-audio-"))
    jobs, refs = [], []
    for n, (name, row) in enumerate(sorted(rows.items())):
        info = media.probe(MEDIA / name)
        audio = media.normalize(MEDIA / name, work / f"{n}.s16", info)
        samples = media.open_audio(audio.path)
        windows = segmentation.segment(samples, audio.gain_db, stages.segmentation_options(settings))
        jobs.append(stages.audio_job(settings, samples, audio.gain_db, windows, info.sample_rate))
        refs.append(row["reference_text"] if row["ref_quality"] in ("exact", "model") else None)
    audio_s = sum(w.num_samples for j in jobs for w in j.windows) / media.SAMPLE_RATE

    packed = stages.transcriber(settings)
    modes = {"packed": packed,
             "not packed": Transcriber(packed.model, packed.device, dataclasses.replace(packed.options, pack_short_windows=False))}
    inputs: dict[str, int] = {}
    for name, tr in modes.items():  # warm-up, and the number of whisper inputs each mode encodes
        rows_seen: list[int] = []
        hook = tr.model.encoder.register_forward_hook(lambda _m, a, _o: rows_seen.append(a[0].shape[0]))
        tr.transcribe(jobs)
        hook.remove()
        inputs[name] = sum(rows_seen)

    walls: dict[str, list[float]] = {m: [] for m in modes}
    texts: dict[str, list[str]] = {}
    steps: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    for r in range(args.repeat):
        for name in (list(modes) if r % 2 == 0 else list(reversed(modes))):
            tr = modes[name]
            tr.timings.clear()
            start = time.perf_counter()
            out = tr.transcribe(jobs)
            walls[name].append(time.perf_counter() - start)
            texts[name] = [t.text for t in out]
            for step, s in tr.timings.items():
                steps[name].setdefault(step, []).append(s)

    print(f"{machine()}; model {Path(args.model).name}; {len(jobs)} recordings, {sum(len(j.windows) for j in jobs)} "
          f"speech windows, {audio_s:.1f} s; {args.repeat} rounds")
    ratios = [a / b for a, b in zip(walls["not packed"], walls["packed"])]
    print("| mode | whisper inputs | wall s, median [range] | WER | where the time went (median s) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name in modes:
        w = walls[name]
        wer = corpus_wer(refs, texts[name], ["en"] * len(refs))
        where = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in steps[name].items() if k != "read")
        print(f"| {name} | {inputs[name]} | {statistics.median(w):.2f} [{min(w):.2f}–{max(w):.2f}] | {wer:.2%} | {where} |")
    print(f"\nnot packed / packed, per round: {', '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
