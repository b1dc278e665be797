"""Transcript writers, one class per format behind a factory (as openai-whisper does)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from scribeline import warehouse


@dataclass
class StoredTranscript:
    media: dict
    segments: list[dict]  # each with its "words"


def fetch(path: Path, media_id: str) -> StoredTranscript:
    con = warehouse.connect(path, read_only=True)
    try:
        found = con.execute("SELECT * FROM media WHERE media_id = ? OR media_id LIKE ? || '%'", [media_id, media_id]).fetchdf()
        if found.empty:
            raise KeyError(f"no media with id {media_id!r} in the warehouse")
        if len(found) > 1:
            raise KeyError(f"media id prefix {media_id!r} is ambiguous ({len(found)} matches)")
        row = _plain(found.iloc[0].to_dict())
        segs = con.execute("SELECT * FROM segments WHERE media_id = ? ORDER BY start_s, segment_index", [row["media_id"]]).fetchdf()
        words = con.execute("SELECT * FROM words WHERE media_id = ? ORDER BY segment_index, word_index", [row["media_id"]]).fetchdf()
    finally:
        con.close()
    by_seg: dict[int, list[dict]] = {}
    for w in words.to_dict("records"):
        by_seg.setdefault(int(w["segment_index"]), []).append(
            {"start": w["start_s"], "end": w["end_s"], "word": w["word"], "probability": w["probability"]})
    segments = [
        {"index": int(s["segment_index"]), "start": s["start_s"], "end": s["end_s"], "text": s["text"],
         "channel": None if pd.isna(s["channel"]) else int(s["channel"]), "avg_logprob": s["avg_logprob"],
         "no_speech_prob": s["no_speech_prob"], "words": by_seg.get(int(s["segment_index"]), [])}
        for s in segs.to_dict("records")
    ]
    return StoredTranscript(row, segments)


def _plain(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if hasattr(v, "isoformat"):
            v = v.isoformat()
        elif hasattr(v, "item"):
            v = v.item()
        out[k] = None if isinstance(v, float) and v != v else v
    return out


def _timestamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _label(seg: dict) -> str:
    return f"[ch{seg['channel']}] " if seg.get("channel") is not None else ""


class Writer:
    extension = ""

    def render(self, t: StoredTranscript) -> str:
        raise NotImplementedError


class TxtWriter(Writer):
    extension = "txt"

    def render(self, t):
        return "".join(f"{_label(s)}{s['text']}\n" for s in t.segments)


class SrtWriter(Writer):
    extension = "srt"

    def render(self, t):
        return "\n".join(
            f"{i}\n{_timestamp(s['start'], ',')} --> {_timestamp(s['end'], ',')}\n{_label(s)}{s['text']}\n"
            for i, s in enumerate(t.segments, start=1)
        )


class VttWriter(Writer):
    extension = "vtt"

    def render(self, t):
        cues = "\n".join(
            f"{_timestamp(s['start'], '.')} --> {_timestamp(s['end'], '.')}\n{_label(s)}{s['text']}\n" for s in t.segments
        )
        return "WEBVTT\n\n" + cues


class JsonWriter(Writer):
    extension = "json"

    def render(self, t):
        return json.dumps({"media": t.media, "segments": t.segments}, indent=2, ensure_ascii=False, default=str) + "\n"


WRITERS: dict[str, type[Writer]] = {w.extension: w for w in (TxtWriter, SrtWriter, VttWriter, JsonWriter)}


def get_writer(fmt: str) -> Writer:
    try:
        return WRITERS[fmt]()
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(WRITERS)}") from None
