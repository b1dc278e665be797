"""The pipeline's stages as plain functions: no Prefect here, so each is testable alone.

Stages exchange small JSON-able dicts. Bulky data lives in the object store
(source media in the incoming bucket, 16 kHz audio in the normalized bucket) and
in a per-media work folder that any stage can rebuild from the store, so a
retried or resumed stage never depends on a previous process's local files.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import heapq
import itertools
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from scribeline import media, segmentation, storage, warehouse
from scribeline.batching import Coalescer, queue_for
from scribeline.config import PIPELINE_VERSION, Settings
from scribeline.model_thread import cpu_threads
from scribeline.storage import ObjectRef
from scribeline.transcript import TranscribeOptions, Transcript

# The model's, Presidio's and Great Expectations' libraries load where those stages run (the
# warm worker, or `scribeline run`'s process) when first used, not at import.


class StageError(Exception):
    """A media-specific failure: its message is the quarantine reason."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def work_dir(settings: Settings, run_key: str) -> Path:
    d = settings.data_dir / "work" / run_key
    d.mkdir(parents=True, exist_ok=True)
    return d


# ------------------------------------------------------------------- ingest
def ingest(settings: Settings, ref: ObjectRef) -> dict:
    """Read the object, hash it, derive the run key (content, configuration and the source's data class).

    An object from a source configured for another region is not read: it is quarantined
    (stage ``region``) as it stands."""
    governance = settings.governance
    foreign = governance.foreign_region(ref.bucket, ref.key)
    if foreign:
        raise StageError("region", foreign)
    data_class = governance.data_class(ref.bucket, ref.key)
    scratch = settings.data_dir / "work" / "incoming"
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = scratch / f"{abs(hash((ref.bucket, ref.key, time.time_ns())))}.part"
    sha, size, etag = storage.download(settings, ref, tmp)
    run_key = settings.run_key(sha, data_class)
    source = work_dir(settings, run_key) / "source"
    tmp.replace(source)
    return {"bucket": ref.bucket, "key": ref.key, "etag": etag, "size": size, "sha256": sha,
            "run_key": run_key, "ingested_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "data_class": data_class, "region": governance.region or None}


def _source_path(settings: Settings, ingested: dict) -> Path:
    path = work_dir(settings, ingested["run_key"]) / "source"
    if not path.exists():  # another worker ingested it: fetch again
        storage.download(settings, ObjectRef(ingested["bucket"], ingested["key"]), path)
    return path


# ---------------------------------------------------------------- normalize
class _DecodeSlots:
    """One ffprobe + ffmpeg decode per core at a time; a freed slot goes to the largest source waiting.

    When a wave's files all decoded at once, the longest shared the cores with every short
    one and finished last. With plain first-come slots, the order in which Prefect's task
    threads reach them is arbitrary, and a wave's longest file (whose VAD and upload follow)
    could wait behind every short one. The first of a wave also holds the idle slots until
    the ``expected`` rest of its wave has arrived (they come within ~25 ms; at most
    ``gather_s``): the first two to arrive used to take both slots, and the longest file
    started 0.24 s late.
    """

    def __init__(self, slots: int, gather_s: float = 0.2):
        self._cond = threading.Condition()
        self._slots = self._free = slots
        self._waiting: list[tuple[int, int]] = []  # heap of (-size, arrival)
        self._arrivals = itertools.count()
        self._gather_s = gather_s
        self._expected = 0  # arrivals awaited before the first slot of a wave is given
        self._gather_until = 0.0

    def _gathering(self) -> float:
        """Seconds left to wait for the rest of the wave (0: give slots)."""
        left = self._gather_until - time.monotonic()
        if len(self._waiting) >= self._expected or left <= 0:
            self._expected = 0
            return 0.0
        return left

    @contextmanager
    def __call__(self, size: int, expected: int = 0):
        me = (-size, next(self._arrivals))
        with self._cond:
            if expected > 1 and self._free == self._slots and not self._waiting:  # the first of a wave
                self._expected, self._gather_until = expected, time.monotonic() + self._gather_s
            heapq.heappush(self._waiting, me)
            self._cond.notify_all()
            while (left := self._gathering()) or not (self._free > 0 and self._waiting[0] == me):
                self._cond.wait(left or None)
            heapq.heappop(self._waiting)
            self._free -= 1
            self._cond.notify_all()  # a second free slot: the next largest may go too
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()


_decoders = _DecodeSlots(cpu_threads())


def normalize(settings: Settings, ingested: dict, wave_size: int = 0) -> dict:
    """ffprobe facts + 16 kHz mono 16-bit track(s), stored in the normalized bucket.

    ``wave_size``: how many media the flow submitted together (they share the decode slots)."""
    src = _source_path(settings, ingested)
    decoded = []
    with _decoders(ingested["size"], wave_size):
        try:
            info = media.probe(src)
            channels = list(range(info.channels)) if settings.split_channels and info.channels > 1 else [None]
            for channel in channels:
                name = "audio.s16" if channel is None else f"audio.ch{channel}.s16"
                local = work_dir(settings, ingested["run_key"]) / name
                decoded.append((channel, name, media.normalize(src, local, info, channel=channel)))
        except media.MediaError as exc:
            raise StageError("normalize", str(exc)) from None
    tracks = []
    for channel, name, norm in decoded:
        key = f"{ingested['run_key']}/{name}"
        storage.put_file(settings, settings.bucket_normalized, key, norm.path, "application/octet-stream")
        tracks.append({"channel": channel, "object_key": key, "num_samples": norm.num_samples,
                       "gain_db": norm.gain_db, "peak_dbfs": norm.peak_dbfs, "speech_level_dbfs": norm.speech_level_dbfs})
    duration = tracks[0]["num_samples"] / media.SAMPLE_RATE
    return {"info": info.as_dict(), "duration_s": duration, "tracks": tracks}


def _track_audio(settings: Settings, run_key: str, track: dict):
    local = work_dir(settings, run_key) / Path(track["object_key"]).name
    if not local.exists():
        storage.get_file(settings, ObjectRef(settings.bucket_normalized, track["object_key"]), local)
    return media.open_audio(local)


# ------------------------------------------------------------------ segment
def segmentation_options(settings: Settings) -> segmentation.SegmentationOptions:
    return segmentation.SegmentationOptions(threshold=settings.vad_threshold, max_window_s=settings.max_window_s)


def segment(settings: Settings, run_key: str, normalized: dict) -> dict:
    """Speech windows (≤ max_window_s, cut in pauses) for every track."""
    opts = segmentation_options(settings)
    tracks = []
    for track in normalized["tracks"]:
        audio = _track_audio(settings, run_key, track)
        windows = segmentation.segment(audio, track["gain_db"], opts)
        tracks.append({**track, "windows": [w.as_dict() for w in windows]})
    speech_s = sum(s["end"] - s["start"] for t in tracks for w in t["windows"] for s in w["speech"]) / media.SAMPLE_RATE
    return {**normalized, "tracks": tracks, "speech_s": round(speech_s, 3)}


# --------------------------------------------------------------- transcribe
@functools.lru_cache(maxsize=4)
def _transcriber(model: str, device: str, options: TranscribeOptions, download_root: str, cpu_int8: bool):
    from scribeline.transcription import transcriber_for

    return transcriber_for(model, device, options, download_root, cpu_int8)


def transcribe_options(settings: Settings) -> TranscribeOptions:
    return TranscribeOptions(language=settings.language or None, task=settings.task, batch_size=settings.batch_size,
                             beam_size=settings.beam_for(None),
                             word_timestamps=settings.word_timestamps, max_tokens_per_s=settings.max_tokens_per_s,
                             decode_budget_factor=settings.decode_budget_factor,
                             decode_budget_min_s=settings.decode_budget_min_s)


_transcriber_lock = threading.Lock()


def transcriber(settings: Settings):
    """The process's model, loaded once and reused across media (one instance even under threads)."""
    with _transcriber_lock:
        return _transcriber(settings.model, settings.device, transcribe_options(settings), str(settings.data_dir / "models"),
                            settings.cpu_int8)


def audio_job(settings: Settings, audio, gain_db: float, windows: list[segmentation.Window], source_sample_rate: int,
              channel: int | None = None):
    """One track's windows for the transcriber (an ``AudioJob``), read with the track's gain."""
    from scribeline.transcription import AudioJob

    return AudioJob(read=lambda s, e: media.read_samples(audio, s, e, gain_db), windows=windows, channel=channel,
                    beam_size=settings.beam_for(source_sample_rate))


def transcribe(settings: Settings, run_key: str, segmented: dict, wave_size: int = 0) -> dict:
    """Whisper over the speech windows; batched with other media in this worker.

    ``wave_size`` media are expected together: the batch starts once that many have
    arrived (or, if some never call, e.g. cached, after a quiet moment); 0: not known,
    the batch starts after a quiet moment."""
    jobs = [
        audio_job(settings, _track_audio(settings, run_key, track), track["gain_db"],
                  [segmentation.Window.from_dict(w) for w in track["windows"]], segmented["info"]["sample_rate"],
                  track["channel"])
        for track in segmented["tracks"]
    ]
    results = queue_for(transcriber(settings)).transcribe(jobs, expected=wave_size)
    merged = results[0]
    if len(results) > 1:  # channels transcribed apart, merged in time order
        segments = sorted((s for r in results for s in r.segments), key=lambda s: (s.start, s.channel))
        best = max(results, key=lambda r: r.language_probability)
        merged = Transcript(best.language, best.language_probability, segments,
                            sum(r.windows_decoded for r in results), sum(r.windows_silent for r in results),
                            [f for r in results for f in r.flags])
    over = [f for f in merged.flags if f.name == "decode_budget"]
    if over:  # part of the speech was never decoded: not a transcript to load
        raise StageError("transcribe", over[0].reason)
    return merged.as_dict()


# ----------------------------------------------------------------- validate
# A Great Expectations run costs about the same for one media as for a wave of them:
# concurrent validate tasks are served together.
def _validate_many(items):
    from scribeline import validation

    return validation.validate_many(items)


_validations = Coalescer(_validate_many, quiet_s=0.05, max_wait_s=0.5)


def validate(settings: Settings, transcript: dict, duration_s: float, wave_size: int = 0, media: dict | None = None) -> dict:
    """The transcript's quality checks; ``wave_size`` media validate together (their round
    starts once all have called, not after a quiet moment).

    A failing critical check (``settings.critical_expectations``) is a verdict, not a
    quarantine: the media is loaded with ``needs_review``, the check's name among its
    ``review_reasons`` (``review``)."""
    report = _validations((Transcript.from_dict(transcript), duration_s, media), expected=wave_size)
    report = report.classified(settings.critical_expectations)
    checks = [c.__dict__ for c in report.checks]
    return {"checks": checks, "quality_ok": report.quality_ok, "review": report.review_reasons}


# ------------------------------------------------------------------- redact
def redaction_operators(settings: Settings):
    from scribeline import redaction

    ops = settings.operators()
    return redaction.Operators(ops, settings.hash_salt() if "hash" in ops.values() else "")


def redact(settings: Settings, transcript: dict, data_class: str | None = None) -> dict:
    """The redacted transcript and its entities; ``data_class`` may add entity types (governance)."""
    from scribeline import redaction

    from scribeline import validation

    entities = settings.governance.entities(data_class or settings.default_data_class, settings.pii_entities)
    source = Transcript.from_dict(transcript)
    result = redaction.redact(source, entities, settings.pii_score_threshold, redaction_operators(settings))
    # The redacted output's suite: a structured value left in any spelling is a verdict (needs_review),
    # and the residual guard redacts it before anything is loaded.
    report = validation.validate_redacted(result.transcript, settings.critical_expectations)
    if not all(c.success for c in report.checks):  # critical or not, nothing is loaded unredacted
        result = redaction.redact(source, entities, settings.pii_score_threshold, redaction_operators(settings),
                                  residual_guard=True)
    return {"transcript": result.transcript.as_dict(), "entities": [e.__dict__ for e in result.entities],
            "redacted_words": [list(p) for p in result.redacted_words],
            "checks": [c.__dict__ for c in report.checks], "review": report.review_reasons}


# ------------------------------------------------------------ restricted copies
def redact_audio(settings: Settings, ingested: dict, segmented: dict, redacted: dict) -> str:
    """The audio with every PII span beeped or muted (``audio_redaction``), one FLAC per track, in the
    redacted-audio bucket under the media's data class. Returns the (first track's) s3:// URI."""
    from scribeline import audio_redaction

    cut = audio_redaction.spans(redacted["entities"], settings.audio_redaction_padding_s, segmented["duration_s"])
    data_class = ingested.get("data_class") or settings.default_data_class
    uris = []
    for track in segmented["tracks"]:
        suffix = ".redacted.flac" if track["channel"] is None else f".ch{track['channel']}.redacted.flac"
        out = work_dir(settings, ingested["run_key"]) / ("redacted" + suffix)
        audio_redaction.redact_track(_track_audio(settings, ingested["run_key"], track), out, cut, settings.audio_redaction)
        key = storage.under(f"{data_class}/{ingested['sha256'][:16]}", ingested["key"] + suffix)
        uris.append(storage.put_file(settings, settings.bucket_redacted_audio, key, out, "audio/flac").uri)
    return uris[0]


def keep_unredacted(settings: Settings, ingested: dict, transcript: dict) -> str:
    """The unredacted transcript (JSON) in the restricted bucket, until its class's ``unredacted``
    retention age (the retention flow deletes it). Only when ``keep_unredacted`` asks."""
    data_class = ingested.get("data_class") or settings.default_data_class
    key = storage.under(f"unredacted/{data_class}/{ingested['sha256'][:16]}", ingested["key"] + ".json")
    return storage.put_json(settings, settings.bucket_restricted, key,
                            {"source": f"s3://{ingested['bucket']}/{ingested['key']}", "media_id": ingested["run_key"],
                             "data_class": data_class, "transcript": transcript}).uri


# --------------------------------------------------------------------- load
def warehouse_rows(settings: Settings, ingested: dict, segmented: dict, redacted: dict, checks: dict,
                   processing_s: float) -> tuple[dict, dict[str, pd.DataFrame]]:
    t = Transcript.from_dict(redacted["transcript"])
    media_id = ingested["run_key"]
    info = segmented["info"]
    segments = pd.DataFrame([
        dict(media_id=media_id, segment_index=i, start_s=s.start, end_s=s.end, text=s.text, channel=s.channel,
             avg_logprob=s.avg_logprob, no_speech_prob=s.no_speech_prob, compression_ratio=s.compression_ratio,
             temperature=s.temperature)
        for i, s in enumerate(t.segments)
    ])
    rewritten = {tuple(p) for p in redacted["redacted_words"]} if "redacted_words" in redacted else None
    words = pd.DataFrame([
        dict(media_id=media_id, segment_index=i, word_index=k, start_s=w.start, end_s=w.end, word=w.word.strip(),
             probability=w.probability,
             redacted=(i, k) in rewritten if rewritten is not None
             else w.word.strip().startswith("<") and w.word.strip().endswith(">"))  # (results cached before)
        for i, s in enumerate(t.segments) for k, w in enumerate(s.words)
    ])
    pii = pd.DataFrame([dict(media_id=media_id, entity_index=k, **e) for k, e in enumerate(redacted["entities"])])
    quality = pd.DataFrame([
        dict(media_id=media_id, check_index=k, table_name=c["table"], expectation=c["expectation"], column_name=c["column"],
             severity=c["severity"], success=c["success"], element_count=c["element_count"],
             unexpected_count=c["unexpected_count"], details=c["details"])
        for k, c in enumerate(checks["checks"] + redacted.get("checks", []))
    ])
    flags = pd.DataFrame([dict(media_id=media_id, flag_index=k, flag=f.name, window_index=f.window_index,
                               start_s=f.start, end_s=f.end, reason=f.reason) for k, f in enumerate(t.flags)])
    # The guards' flags, then the failing critical checks (a validate result cached before they
    # were listed has none).
    reasons = list(dict.fromkeys([f.name for f in t.flags] + list(checks.get("review", [])) + list(redacted.get("review", []))))
    row = dict(
        media_id=media_id, source_bucket=ingested["bucket"], source_key=ingested["key"], source_etag=ingested["etag"],
        size_bytes=ingested["size"], sha256=ingested["sha256"], container=info["container"], codec=info["codec"],
        sample_rate=info["sample_rate"], channels=info["channels"], bit_rate=info["bit_rate"],
        duration_s=round(segmented["duration_s"], 3), language=t.language, language_probability=t.language_probability,
        model=Path(settings.model).name, task=settings.task, segment_count=len(t.segments), word_count=len(words),
        pii_count=len(pii), no_speech=t.no_speech,
        quality_ok=checks["quality_ok"] and all(c["success"] for c in redacted.get("checks", [])), needs_review=bool(reasons),
        review_reasons=",".join(reasons) or None,
        gain_db=segmented["tracks"][0]["gain_db"], processing_s=round(processing_s, 3),
        processed_at=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), pipeline_version=PIPELINE_VERSION,
        data_class=ingested.get("data_class") or settings.default_data_class, region=ingested.get("region"),
        redacted_audio_object=(redacted.get("protected") or {}).get("redacted_audio"),
        unredacted_object=(redacted.get("protected") or {}).get("unredacted"),
    )
    return row, {"segments": segments, "words": words, "pii_entities": pii, "quality_checks": quality,
                 "transcript_flags": flags}


def _load_many(items: list[tuple]) -> list:
    out: dict[int, object] = {}
    for lake in dict.fromkeys(lake for lake, _ in items):
        idx = [i for i, it in enumerate(items) if it[0] == lake]
        out.update(zip(idx, warehouse.load_many(lake, [items[i][1] for i in idx])))
    return [out[i] for i in range(len(items))]


# Concurrent load tasks share one opening of the warehouse file (each media keeps its transaction).
_loads = Coalescer(_load_many, quiet_s=0.05, max_wait_s=0.5)


def load(settings: Settings, ingested: dict, segmented: dict, redacted: dict, checks: dict, processing_s: float,
         wave_size: int = 0, run: dict | None = None) -> bool:
    """Write the media's rows and its object's ledger row; False when the media was already there.

    ``wave_size`` media load together: their round starts once all have called, and its
    rows go in one transaction (or one per media, if that one fails). ``run``: the flow run's
    ``flow_run_id`` and ``attempts`` for the ledger."""
    row, tables = warehouse_rows(settings, ingested, segmented, redacted, checks, processing_s)
    return _loads((settings.warehouse, warehouse.MediaLoad(row, tables, ledger_row(ingested, run))), expected=wave_size)


def ledger_row(ingested: dict, run: dict | None = None) -> dict:
    """What the ledger records of an ingested object version (its state is added where it ends)."""
    return {"bucket": ingested["bucket"], "key": ingested["key"], "etag": ingested.get("etag") or "",
            "size_bytes": ingested.get("size"), "sha256": ingested.get("sha256"), "media_id": ingested.get("run_key"),
            "first_seen": ingested.get("ingested_at"), **(run or {})}


def record_already_loaded(settings: Settings, ingested: dict, run: dict | None = None) -> bool:
    """An object whose media is already in the warehouse (a copy under another name, or one whose
    earlier run loaded it and stopped before the move) gets its ledger row, once."""
    return warehouse.record_terminal(settings.warehouse, ledger_row(ingested, run))


def already_loaded(settings: Settings, run_keys: list[str]) -> set[str]:
    """The run keys whose media are already in the warehouse."""
    return warehouse.contained(settings.warehouse, run_keys)


# ------------------------------------------------------------------ timeouts
# Seconds a stage may take: a fixed part (start-up, a retry of the store) plus a part per
# second of media (per MB while the duration is not yet known). Transcription's own decode
# budget (decode_budget_factor) ends a runaway decode earlier, with a verdict.
_TIMEOUT_FIXED_S = 120.0
_TIMEOUT_PER_MEDIA_S = {"normalize": 0.5, "segment": 0.5, "transcribe": 4.0, "validate": 0.5, "redact": 0.5, "load": 0.5}
_TIMEOUT_PER_MB_S = 10.0


def stage_timeout(settings: Settings, stage: str, size_bytes: int, duration_s: float | None) -> float:
    if duration_s is None:
        return _TIMEOUT_FIXED_S + _TIMEOUT_PER_MB_S * size_bytes / 1e6
    factor = max(_TIMEOUT_PER_MEDIA_S.get(stage, 1.0), settings.decode_budget_factor * 2 if stage == "transcribe" else 0)
    return _TIMEOUT_FIXED_S + factor * duration_s


def run_lease(settings: Settings, size_bytes: int) -> float:
    """How long a per-media flow run may be RUNNING before the sweep takes it for lost."""
    if settings.run_lease_s:
        return settings.run_lease_s
    return sum(stage_timeout(settings, stage, size_bytes, None) for stage in _TIMEOUT_PER_MEDIA_S) + _TIMEOUT_FIXED_S


# ------------------------------------------------------------------ outcome
def archive(settings: Settings, ingested: dict) -> ObjectRef:
    """After the load committed: move the source from incoming to the processed bucket."""
    ref = ObjectRef(ingested["bucket"], ingested["key"], ingested["etag"], ingested["size"])
    dest = processed_key(ingested["sha256"], ingested["key"])
    out = storage.move(settings, ref, settings.bucket_processed, dest)
    cleanup(settings, ingested["run_key"])
    return out


def processed_key(sha256: str, key: str) -> str:
    """Where a processed object goes in the processed bucket."""
    return storage.under(sha256[:16], key)


def quarantined_key(ref: ObjectRef, sha256: str | None) -> str:
    """Where a quarantined object goes in the quarantine bucket."""
    return storage.under(f"media/{quarantine_tag(ref, sha256)}", ref.key)


def quarantine_tag(ref: ObjectRef, sha256: str | None) -> str:
    """What names a quarantined content: its hash, or (never read) the object version's."""
    if sha256:
        return sha256[:16]
    return "unread-" + hashlib.sha256(f"{ref.bucket}\0{ref.key}\0{ref.etag}".encode()).hexdigest()[:16]


def quarantine(settings: Settings, ref: ObjectRef, stage: str, error: str, attempts: int,
               sha256: str | None = None, run_key: str | None = None, run: dict | None = None,
               first_seen: str | None = None) -> dict:
    """Record why, then move the media into the quarantine bucket. Returns the record.

    One record per content (``records/<sha256 prefix>.json``): the same bad bytes quarantined
    again, under any name, add no record; each object version gets its one ledger row."""
    now = dt.datetime.now(dt.timezone.utc)
    tag = quarantine_tag(ref, sha256)
    record = {
        "source": ref.uri, "source_bucket": ref.bucket, "source_key": ref.key, "sha256": sha256, "run_key": run_key,
        "stage": stage, "error": error, "attempts": attempts, "quarantined_at": now.isoformat(),
        "media_object": f"s3://{settings.bucket_quarantine}/{quarantined_key(ref, sha256)}",
    }
    record_key = f"records/{tag}.json"
    # The record is written first: if the move then fails, the reason is still on file
    # and the media is still in incoming, so nothing is lost.
    if storage.exists(settings, settings.bucket_quarantine, record_key):
        record = storage.get_json(settings, settings.bucket_quarantine, record_key)
    else:
        storage.put_json(settings, settings.bucket_quarantine, record_key, record)
    ledger = {"bucket": ref.bucket, "key": ref.key, "etag": ref.etag, "size_bytes": ref.size or None, "sha256": sha256,
              "media_id": run_key, "stage": stage, "reason": error, "attempts": attempts,
              "first_seen": first_seen, **(run or {})}
    warehouse.record_quarantine(settings.warehouse, {**record, "quarantine_key": record_key}, ledger)
    try:
        if storage.exists(settings, ref.bucket, ref.key):
            storage.move(settings, ref, settings.bucket_quarantine, quarantined_key(ref, sha256))
    except ValueError:  # a key with "." or ".." segments: the S3 client cannot address it to move it
        pass  # recorded (record and ledger) where it stands

    if run_key:
        cleanup(settings, run_key)
    return {**record, "record_key": record_key}


def cleanup(settings: Settings, run_key: str) -> None:
    shutil.rmtree(settings.data_dir / "work" / run_key, ignore_errors=True)


def describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, StageError) else f"{type(exc).__name__}: {text}"

