"""The main flow: everything waiting in the incoming bucket becomes warehouse rows or a quarantine record.

The flow only orchestrates. Stages run as waves over all waiting media: every
media's ingest, then every media's normalize (each media's segment follows its
own normalize), and so on (validation and redaction, which both only read the
transcript, share a wave). In the transcribe wave all media are in flight
together, so the worker's model decodes their windows in shared batches;
validation and loading are coalesced the same way. A media that fails a stage
leaves the waves and is quarantined with the stage, the error and the number of
attempts; the others go on.

A stop (SIGINT, SIGTERM, or the run cancelled from Prefect's API/UI: see
:mod:`scribeline.stopping`) starts no further task or wave, makes the tasks in
flight raise ``Stopped`` at their next check, and quarantines nothing: every media
not yet archived stays in the incoming bucket for the next run.

Stage results (windows, transcripts) go to the next task wrapped in ``quote``:
Prefect otherwise walks every element of a task's parameters looking for
futures, on the GIL (measured: 8 tasks each given a 1,400-word transcript took
0.6 s to start; quoted, 0.05 s).
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from prefect import flow, get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from scribeline import artifacts, stages, stopping, storage, warehouse
from scribeline.config import Settings
from scribeline.storage import ObjectRef
from tasks.ingest import ingest, list_incoming
from tasks.load import archive, load, record_already_loaded
from tasks.normalize import normalize
from tasks.quarantine import quarantine
from tasks.redact import keep_unredacted, redact, redact_audio
from tasks.score import score_sidecars
from tasks.segment import segment
from tasks.transcribe import load_model, transcribe
from tasks.validate import validate


@dataclass
class _Media:
    ref: ObjectRef
    started: float
    results: dict = field(default_factory=dict)
    ended: dict = field(default_factory=dict)  # stage -> when its task run ended (UTC), for the report
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    futures: dict = field(default_factory=dict)  # this wave's submitted stages, by name
    failed: bool = False
    outcome: dict | None = None

    @property
    def live(self) -> bool:
        """Still in the waves: not failed, no outcome yet."""
        return not self.failed and self.outcome is None

    @property
    def run_key(self) -> str | None:
        return self.results.get("ingest", {}).get("run_key")


def _attempts(future) -> int:
    try:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            return client.read_task_run(future.task_run_id).run_count or 1
    except Exception:  # noqa: BLE001 - the count is informative only
        return 1


def _wave(stages_: dict, items: list[_Media], settings: Settings) -> None:
    """Submit the given stages for every live media, wait, and quarantine the failures.

    Stages of one wave run side by side (validate and redact both read the transcript),
    or a later one takes an earlier one's future from ``m.futures`` (segment waits only
    for its own media's normalize). A media that fails any of them is quarantined with
    the first failed stage in the order given. The largest media are submitted first (the
    task runner starts them in that order): theirs is the longest chain in every wave.
    Each stage is submitted as ``submit(m, n)``, ``n`` the number of media in the wave
    (stages that serve a wave together start once that many have arrived).
    """
    live = sorted((m for m in items if m.live), key=lambda m: -m.ref.size)
    if not live:
        return
    stopping.check()  # no wave starts once the run is stopping
    started = time.perf_counter()
    futures = []
    for name, submit in stages_.items():  # every media's first stage is queued before any second one
        for m in live:
            m.futures[name] = submit(m, len(live))
            futures.append((m, name, m.futures[name]))
    failures: dict[int, tuple] = {}
    for m, name, fut in futures:
        fut.wait()
        if fut.state.is_completed():
            m.results[name] = fut.result()
            m.ended[name] = fut.state.timestamp
            continue
        if id(m) in failures:
            continue  # an earlier stage of this wave already failed for this media
        try:
            fut.result(raise_on_failure=True)
            error, stage = f"{name} ended in state {fut.state.name}", name
        except stages.StageError as exc:
            error, stage = stages.describe(exc), exc.stage
        except BaseException as exc:  # noqa: BLE001 - any failure quarantines this media only
            error, stage = stages.describe(exc), name
        failures[id(m)] = (m, stage, error, fut)
    if stopping.requested():
        # A stop is not the media's fault: none of this wave's failures is quarantined, and
        # every media of the run stays in the incoming bucket (the tasks have all ended).
        raise stopping.Stopped(stopping.reason())
    for m, stage, error, fut in failures.values():
        m.failed = True
        ingested = m.results.get("ingest", {})
        record = quarantine(m.ref, stage, error, _attempts(fut), ingested.get("sha256"), m.run_key,
                            ingested.get("ingested_at"))
        m.outcome = {
            "key": m.ref.key, "state": "quarantined", "stage": stage, "reason": error,
            "quarantine_record": f"s3://{settings.bucket_quarantine}/{record['record_key']}",
            "seconds": round(time.monotonic() - m.started, 2),
        }
    get_run_logger().info("%s: %d media in %.2f s", "+".join(stages_), len(live), time.perf_counter() - started)


@flow(name="scribeline-process-incoming", task_runner=ThreadPoolTaskRunner(max_workers=64),
      flow_run_name=lambda: f"incoming-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}", validate_parameters=True)
def process_incoming(max_objects: int = 0) -> list[dict]:
    """Process every object waiting in the incoming bucket (``max_objects`` > 0 caps one run).

    Raises ``stopping.Stopped`` when the run was stopped (see the module's docstring); a run
    cancelled from the API or UI ends Cancelled (its caller gets Prefect's ``CancelledRun``)."""
    with _stop_when_cancelled(), _stop_tasks_when_interrupted():
        try:
            stopping.check()  # stopped before the flow began (e.g. during the upload)
            return _process(max_objects)
        except stopping.Stopped:
            if stopping.reason() == "cancelled":  # as asked: a Cancelled run, not a Failed one
                return Cancelled(message="cancelled: the unfinished media stay in the incoming bucket")
            raise


def _media_run_name() -> str:
    from prefect.runtime import flow_run

    objects = flow_run.parameters.get("objects") or [{}]
    more = f" +{len(objects) - 1}" if len(objects) > 1 else ""
    return f"media-{objects[0].get('key', '?')[:60]}{more}"


@flow(name="scribeline-process-media", task_runner=ThreadPoolTaskRunner(max_workers=16),
      flow_run_name=_media_run_name, validate_parameters=True)
def process_media(objects: list[dict], attempt: int = 1) -> list[dict]:
    """One object (or a small batch) of the incoming bucket, as started by the sweep under the
    object version's idempotency key. ``objects``: ``{"bucket", "key", "etag", "size"}`` each;
    ``attempt``: how many runs the sweep has started for them (the ledger records it).

    An object no longer in the incoming bucket was finished by another run: nothing to do."""
    with _stop_when_cancelled(), _stop_tasks_when_interrupted():
        try:
            stopping.check()
            settings = Settings.from_env()
            refs, gone = [], []
            for o in objects:
                ref = storage.current(settings, ObjectRef(o["bucket"], o["key"], o.get("etag", ""), o.get("size", 0)))
                (refs.append(ref) if ref else gone.append(o["key"]))
            outcomes = process_objects(settings, refs)
            return outcomes + [{"key": key, "state": "gone", "note": "no longer in the incoming bucket"} for key in gone]
        except stopping.Stopped:
            if stopping.reason() == "cancelled":
                return Cancelled(message="cancelled: the unfinished media stay in the incoming bucket")
            raise


def _process(max_objects: int) -> list[dict]:
    settings = Settings.from_env()
    storage.ensure_buckets(settings)
    refs = list_incoming()
    if max_objects > 0:
        refs = refs[:max_objects]
    return process_objects(settings, refs)


def process_objects(settings: Settings, refs: list[ObjectRef]) -> list[dict]:
    """Every stage for these objects, in waves (the one path for `scribeline run` and per-media runs)."""
    log = get_run_logger()
    started = time.monotonic()
    items = [_Media(ref, started) for ref in refs]
    view = artifacts.RunView(log)  # what the run shows in Prefect's UI: tags, progress, each media's report
    _finish_ledgered(items, settings)
    if any(m.live for m in items):
        # A model that cannot load is the worker's fault, not the media's: fail the run
        # here, with every object still in the incoming bucket, instead of quarantining them.
        # (A warm worker loaded it before it took any run: then this returns at once.)
        load_model()

    _wave({"ingest": lambda m, n: ingest.submit(m.ref)}, items, settings)
    loaded = stages.already_loaded(settings, [m.run_key for m in items if m.live])
    for m in items:  # a media already in the warehouse needs no work: its ledger row, then archive it
        if m.live and m.run_key in loaded:
            record_already_loaded(m.run_key, m.results["ingest"])
            archive(m.run_key, m.results["ingest"])
            m.outcome = _processed(m, settings, note="already in the warehouse; nothing added")
    # A media's VAD starts as soon as its own audio is decoded. A freed decode slot (one
    # ffmpeg per core) goes to the largest file waiting.
    _wave({"normalize": lambda m, n: _timed(normalize, settings, m).submit(m.run_key, m.results["ingest"], n),
           "segment": lambda m, n: _timed(segment, settings, m).submit(m.run_key, m.futures["normalize"])},
          items, settings)
    _show(view, items, tag=True)
    # The transcriber batches the windows of the whole wave, and on a warm worker those of every
    # run it hosts (there the wave's size says nothing of a batch: 0).
    _wave({"transcribe": lambda m, n: _timed(transcribe, settings, m).submit(
        m.run_key, quote(m.results["segment"]), _wave_size(settings, n))}, items, settings)
    _show(view, items, tag=True)
    # Validation and redaction both read the transcript: one wave, side by side.
    _wave({"validate": lambda m, n: _timed(validate, settings, m).submit(
               m.run_key, quote(m.results["transcribe"]), m.results["segment"]["duration_s"],
               _wave_size(settings, n), _media_facts(m.results["segment"])),
           "redact": lambda m, n: _timed(redact, settings, m).submit(m.run_key, quote(m.results["transcribe"]),
                                                                     m.results["ingest"].get("data_class"))},
          items, settings)
    _show(view, items)
    # Restricted copies (only where configured): the beeped/muted audio, the unredacted transcript.
    copies = {}
    if settings.audio_redaction != "off":
        copies["redact_audio"] = lambda m, n: redact_audio.submit(m.run_key, m.results["ingest"], quote(m.results["segment"]),
                                                                  quote(m.results["redact"]))
    if settings.keep_unredacted:
        copies["keep_unredacted"] = lambda m, n: keep_unredacted.submit(m.run_key, m.results["ingest"],
                                                                        quote(m.results["transcribe"]))
    if copies:
        _wave(copies, items, settings)
    for m in items:
        if not m.live:
            continue
        m.results["redact"] = {**m.results["redact"], "protected": {
            "redacted_audio": m.results.get("redact_audio"), "unredacted": m.results.get("keep_unredacted")}}
        m.results["processing_s"] = time.monotonic() - m.started
    _wave({"load": lambda m, n: _timed(load, settings, m).submit(
        m.run_key, m.results["ingest"], quote(m.results["segment"]), quote(m.results["redact"]),
        quote(m.results["validate"]), m.results["processing_s"], n)}, items, settings)
    _show(view, items)
    _wave({"archive": lambda m, n: archive.submit(m.run_key, m.results["ingest"])}, items, settings)
    score_sidecars(return_state=True)  # transcripts uploaded beside loaded media (scribeline/scoring.py); fails no media
    for m in items:
        if m.outcome is None:
            m.outcome = _processed(m, settings, note="" if m.results.get("load") else "already in the warehouse; nothing added")
    _show(view, items, report=True)
    outcomes = [m.outcome for m in items]
    counts = {state: sum(o["state"] == state for o in outcomes) for state in ("processed", "quarantined", "finished")}
    log.info("%d processed, %d quarantined, %d finished earlier", counts["processed"], counts["quarantined"],
             counts["finished"])
    return outcomes


def _show(view: artifacts.RunView, items: list[_Media], tag: bool = False, report: bool = False) -> None:
    """The run in Prefect's UI (scribeline.artifacts; best-effort): long media's progress, the run's tags
    from what the stages found, and, once every media has its outcome, each one's report."""
    for m in items:
        if m.live or report:
            view.progress(m.ref.key, m.results)
        if report and m.outcome is not None:
            view.report(m.outcome, m.results, m.ended, m.started_at)
    if tag:
        view.tag([m.results for m in items])


def _finish_ledgered(items: list[_Media], settings: Settings) -> None:
    """Objects whose version already has its terminal state in the ledger (a run ended between
    its commit and the object's move, or the same bytes were uploaded again under the same
    name) are only moved where that state says: no stage runs again, no record is added."""
    done = warehouse.ledgered(settings.warehouse, [(m.ref.bucket, m.ref.key, m.ref.etag) for m in items])
    for m in items:
        row = done.get((m.ref.bucket, m.ref.key, m.ref.etag))
        if row is None:
            continue
        if row["state"] == "quarantined":
            dest_bucket, dest_key = settings.bucket_quarantine, stages.quarantined_key(m.ref, row["sha256"])
        else:
            dest_bucket, dest_key = settings.bucket_processed, stages.processed_key(row["sha256"], m.ref.key)
        try:
            if storage.exists(settings, m.ref.bucket, m.ref.key):
                storage.move(settings, m.ref, dest_bucket, dest_key)
        except ValueError:  # a key the S3 client cannot address ("." segments): recorded where it stands
            dest_bucket, dest_key = m.ref.bucket, m.ref.key
        m.outcome = {"key": m.ref.key, "state": "finished", "media_id": row["media_id"],
                     "note": f"already {row['state']} (ledger): nothing added; moved to s3://{dest_bucket}/{dest_key}",
                     "seconds": round(time.monotonic() - m.started, 2)}


def _media_facts(segmented: dict) -> dict:
    """What the media suite checks of the normalized media (validation.media_frame)."""
    return {"sample_rate": segmented["info"].get("sample_rate"), "speech_s": segmented.get("speech_s")}


def _wave_size(settings: Settings, n: int) -> int:
    """How many media a batched stage should wait for: the wave's, unless other runs share the engines."""
    return 0 if settings.warm_worker else n


def _timed(task_, settings: Settings, m: _Media):
    """The task with a timeout from its media: known once normalized (duration), else from its size."""
    duration = m.results.get("segment", {}).get("duration_s")
    return task_.with_options(timeout_seconds=stages.stage_timeout(settings, task_.name, m.ref.size, duration))


@contextmanager
def _stop_tasks_when_interrupted():
    """Stop the tasks in flight when the flow's own thread is interrupted.

    During a flow run Prefect's SIGTERM handler raises ``TerminationSignal`` in the flow's
    thread, and the engine then waits for the tasks in flight before it ends the run: asked
    to stop here, they end at their next check instead of finishing a long transcription."""
    try:
        yield
    except KeyboardInterrupt:
        stopping.request_process("SIGINT")
        raise
    except TerminationSignal as exc:
        stopping.request_process(signal.Signals(exc.signal).name)
        raise


POLL_CANCELLATION_S = 1.0


@contextmanager
def _stop_when_cancelled():
    """Watch this flow run's state while it runs: Cancelling or Cancelled (the run was cancelled
    from the API or UI) requests a stop. An in-process run is told of a cancellation in no other
    way (a worker's run process also gets SIGTERM: see _stop_tasks_when_interrupted)."""
    from prefect import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        yield
        return
    flow_run_id, done = ctx.flow_run.id, threading.Event()
    target = stopping.current()  # this run's own scope where a warm worker hosts it among others

    def watch() -> None:
        with get_client(sync_client=True) as client:
            while not done.wait(POLL_CANCELLATION_S):
                try:
                    state = client.read_flow_run(flow_run_id).state
                except Exception:  # noqa: BLE001 - the API may be busy: ask again next time
                    continue
                if state is not None and (state.is_cancelling() or state.is_cancelled()):
                    target.request("cancelled")
                    return

    watcher = threading.Thread(target=watch, name="scribeline-cancel-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()


def _processed(m: _Media, settings: Settings, note: str = "") -> dict:
    out = {"key": m.ref.key, "state": "processed", "media_id": m.run_key, "note": note,
           "seconds": round(time.monotonic() - m.started, 2)}
    if "redact" in m.results:
        t = m.results["redact"]["transcript"]
        out.update(duration_s=round(m.results["segment"]["duration_s"], 2), language=t["language"],
                   words=sum(len(s["words"]) or len(s["text"].split()) for s in t["segments"]),
                   pii=len(m.results["redact"]["entities"]))
    else:
        out.update(_summary_from_warehouse(settings, m.run_key))
    return out


def _summary_from_warehouse(settings: Settings, media_id: str) -> dict:
    from scribeline import warehouse

    df = warehouse.query(settings.warehouse, "SELECT duration_s, language, word_count AS words, pii_count AS pii "
                                             "FROM media WHERE media_id = ?", [media_id])
    return {} if df.empty else {k: (v.item() if hasattr(v, "item") else v) for k, v in df.iloc[0].to_dict().items()}
