"""The benchmark's audio: the real recordings in ../shared/media plus ≥10 min of long-form speech.

The long-form file concatenates the English recordings that have references,
with pauses between them, until it reaches the wanted length; its reference is
the matching concatenation of their references.
"""

from __future__ import annotations

import csv
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT.parent / "shared" / "media"
LONGFORM_PARTS = ["en_jfk.flac", "en_ls_1272-128104-0000.wav", "en_timit_ldc93s1.wav", "en_harvard_birch_canoe.wav",
                  "en_nasa_spacewalk_interview.wav"]


@dataclass
class Item:
    path: Path
    language: str
    reference: str | None  # None: no usable reference
    reference_quality: str


def manifest() -> dict[str, dict]:
    with open(MEDIA / "manifest.tsv", encoding="utf-8") as fh:
        return {row["file"]: row for row in csv.DictReader(fh, delimiter="\t")}


def build_longform(out: Path, minutes: float, pause_s: float = 0.8) -> Item:
    rows = manifest()
    parts, refs, total = [], [], 0.0
    while total < minutes * 60:
        for name in LONGFORM_PARTS:
            parts.append(MEDIA / name)
            refs.append(rows[name]["reference_text"])
            total += float(rows[name]["duration_s"]) + pause_s
    if not out.exists():
        inputs, labels = [], []
        for i, p in enumerate(parts):
            inputs += ["-i", str(p)]
            labels.append(f"[{i}:a]aresample=16000,aformat=sample_fmts=s16:channel_layouts=mono,apad=pad_dur={pause_s}[a{i}]")
        graph = ";".join(labels) + ";" + "".join(f"[a{i}]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=0:a=1[out]"
        script = out.with_suffix(".filter")
        script.write_text(graph)
        subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *inputs,
                        "-filter_complex_script", str(script), "-map", "[out]", "-c:a", "flac", str(out)], check=True)
    return Item(out, "en", " ".join(refs), "exact+model")


def items(workdir: Path, minutes: float, english_only: bool) -> list[Item]:
    rows = manifest()
    out = []
    for name, row in sorted(rows.items()):
        if english_only and row["language"] != "en":
            continue
        ref = row["reference_text"] if row["ref_quality"] in ("exact", "model") else None
        out.append(Item(MEDIA / name, row["language"], ref, row["ref_quality"]))
    workdir.mkdir(parents=True, exist_ok=True)
    out.append(build_longform(workdir / f"longform_en_{int(minutes)}min.flac", minutes))
    return out
