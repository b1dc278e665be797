"""Realistic benchmark: four systems on a corpus of public recordings (benchmark/corpus.tsv).

    .venv/bin/python -m benchmark.realistic [--quick] [--systems baseline,peer,stage,pipeline] [--from-mirror DIR]

The corpus (benchmark/README.md) mixes telephony at 8 kHz, radio and TV broadcast,
noisy and spontaneous speech, many clips under 5 s, and five languages besides
English. It is split by model: English files run with tiny.en, the others with the
multilingual base model (language detected, as users run it). One run measures, each
system in its own process so that each reports its own peak memory:

  baseline   openai-whisper ``load_model(...).transcribe(path)`` with its defaults, file after file
  peer       faster-whisper's BatchedInferencePipeline (tiny.en in CTranslate2, int8, 2 threads,
             batch 8) in its own venv (benchmark/setup_peer.sh); English only: there is no base
             model in CTranslate2 form here
  stage      scribeline's transcription stage (benchmark.run's stage phase)
  pipeline   the whole flow, S3 ingest to DuckDB, on SeaweedFS and Prefect's ephemeral API
             (benchmark.run's pipeline phase)

Model loading and a warm-up happen before the clock starts, as in benchmark.run.
WER is per language over the files with a reference (exact and model quality),
normalized with whisper's EnglishTextNormalizer (en) or BasicTextNormalizer.
Prints tables and writes benchmark/results-realistic.json, with the load average
before and after (this machine is shared: a load above its cores makes every wall
time here meaningless). ``--quick`` runs a subset of seven files to check that
everything works (most of its few minutes go to starting processes and servers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmark import fetch_corpus  # noqa: E402
from benchmark.audio import MEDIA  # noqa: E402
from benchmark.run import _default_model, _run_phase_process, corpus_wer, machine  # noqa: E402

SYSTEMS = ("baseline", "peer", "stage", "pipeline")
PEER_PYTHON = ROOT / "benchmark" / ".peer-venv" / "bin" / "python"
QUICK = ("en_short_neural_networks", "en_noizeus_sp03_babble_0db", "en_noizeus_sp12_car_0db", "en_osr_harvard72_8k",
         "en_multispeaker_clips", "es_read_sentence", "ru_short_neural_networks")


@dataclass
class Group:
    """The corpus files one model transcribes."""

    name: str  # "en" or "multilingual"
    model: str
    entries: list[fetch_corpus.Entry]

    @property
    def audio_s(self) -> float:
        return sum(e.duration_s for e in self.entries)


def base_model() -> str:
    local = ROOT.parent / "shared" / "models" / "base.pt"
    return str(local) if local.exists() else "base"


def groups(entries: list[fetch_corpus.Entry]) -> list[Group]:
    english = [e for e in entries if e.language == "en"]
    others = [e for e in entries if e.language != "en"]
    candidates = (Group("en", _default_model(), english), Group("multilingual", base_model(), others))
    return [g for g in candidates if g.entries]


def run_scribeline_phase(phase: str, group: Group, workdir: Path) -> dict | None:
    """baseline, stage or pipeline through benchmark.run's phase runner (its own process and data directory)."""
    items = [{"path": str(e.cached()), "language": e.language, "reference": e.scored_reference} for e in group.entries]
    spec = workdir / f"items-{group.name}.json"
    spec.write_text(json.dumps({"model": group.model, "device": "cpu", "items": items}))
    return _run_phase_process(phase, SimpleNamespace(model=group.model, device="cpu"), spec)


def run_peer(group: Group) -> dict | None:
    if group.name != "en":
        return None  # tiny.en is the only CTranslate2 model at hand
    if not PEER_PYTHON.exists():
        print("  peer: skipped, run benchmark/setup_peer.sh first", file=sys.stderr)
        return None
    proc = subprocess.run([str(PEER_PYTHON), str(ROOT / "benchmark" / "peer_faster_whisper.py"),
                           "--warm-up", str(MEDIA / "en_jfk.flac"), *[str(e.cached()) for e in group.entries]],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        print(f"peer failed:\n{proc.stderr[-4000:]}", file=sys.stderr)
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  peer: {result['wall_s']:.1f} s", flush=True)
    return result


def wer_by_language(entries: list[fetch_corpus.Entry], texts: list[str]) -> dict[str, float]:
    out = {}
    for lang in sorted({e.language for e in entries}):
        pairs = [(e.scored_reference, t) for e, t in zip(entries, texts) if e.language == lang]
        wer = corpus_wer([r for r, _ in pairs], [t for _, t in pairs], [lang] * len(pairs))
        if wer is not None:
            out[lang] = round(wer, 4)
    return out


def summarize(system: str, group: Group, result: dict) -> dict:
    return {"system": system, "group": group.name, "model": Path(group.model).name, "files": len(group.entries),
            "audio_s": round(group.audio_s, 1), "wall_s": round(result["wall_s"], 2),
            "realtime_x": round(group.audio_s / result["wall_s"], 1), "peak_mib": round(result["peak_mib"]),
            # the pipeline's media that ended quarantined: their text is empty and counts as deleted words
            "quarantined": sum(s != "processed" for s in result["states"]) if "states" in result else None,
            "wer": wer_by_language(group.entries, result["texts"]),
            "texts": {e.id: t for e, t in zip(group.entries, result["texts"])}}


def print_tables(rows: list[dict]) -> None:
    print("\n| system | files | model | audio s | wall s | × realtime | peak memory MiB | quarantined |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['system']} | {r['group']} ({r['files']}) | {r['model']} | {r['audio_s']} | {r['wall_s']} "
              f"| {r['realtime_x']} | {r['peak_mib']} | {'-' if r['quarantined'] is None else r['quarantined']} |")
    langs = sorted({lang for r in rows for lang in r["wer"]}, key=lambda x: (x != "en", x))
    print("\nWER per language (files with a reference):\n")
    print("| system | " + " | ".join(langs) + " |")
    print("| --- |" + " ---: |" * len(langs))
    for system in dict.fromkeys(r["system"] for r in rows):
        wer = {k: v for r in rows if r["system"] == system for k, v in r["wer"].items()}
        print(f"| {system} | " + " | ".join(f"{wer[x] * 100:.1f} %" if x in wer else "-" for x in langs) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"only {len(QUICK)} files, to check that it works")
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--from-mirror", type=Path, metavar="DIR", help="fetch missing corpus files from git snapshots")
    p.add_argument("--output", type=Path, default=ROOT / "benchmark" / "results-realistic.json")
    args = p.parse_args(argv)
    systems = args.systems.split(",")
    entries = fetch_corpus.load()
    if args.quick:
        entries = [e for e in entries if e.id in QUICK]
    fetch_corpus.fetch(entries, mirror=args.from_mirror)
    workdir = Path(tempfile.mkdtemp(prefix="scribeline-realistic-"))
    load_before = os.getloadavg()
    print(f"{len(entries)} files, {sum(e.duration_s for e in entries):.0f} s of audio; machine: {machine()}; "
          f"load average {load_before[0]:.1f}\n")

    rows = []
    for group in groups(entries):
        print(f"{group.name}: {len(group.entries)} files, {group.audio_s:.0f} s, model {group.model}")
        for system in systems:
            result = run_peer(group) if system == "peer" else run_scribeline_phase(system, group, workdir)
            if result is not None:
                rows.append(summarize(system, group, result))
    print_tables(rows)
    load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    print(f"\nload average (1, 5, 15 min) before {load['before']}, after {load['after']} on {os.cpu_count()} cores")
    report = {"machine": machine(), "load_average": load, "quick": args.quick, "systems": systems,
              "corpus": [e.id for e in entries], "rows": rows}
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
