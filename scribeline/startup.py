"""A one-shot ``scribeline run``'s start-up: independent start-ups side by side, and a timeline.

Started one after another, a cold run's start-up took three times as long as its
flow: the S3 server, Prefect's API (started at the first client call), the model
(loaded by the flow's first task), and the Presidio and Great Expectations engines
(loaded by the first redact and validate) each waited for the one before. Most of
it is another process's work (the S3 server, Prefect's API, the Presidio analyzer)
or a wait, so :class:`ColdStart` begins them all at once, before the command
imports Prefect:

- Prefect's API process (``services.start_ephemeral_api``) unless an API is
  configured or ``scribeline up``'s server answers;
- the S3 server (a thread that waits for its port and creates the buckets);
- the model, loaded on the model thread (``stages.transcriber``) as the flow's
  ``load-model`` task would: that task then finds it loaded;
- the Presidio analyzer's process and the Great Expectations context, once the
  stages are imported (so that no two threads import the same packages at once).

The engines are warmed only when there is media to process (paths given, or
objects waiting); a failed warm-up is silent: the flow's own call fails the same
way, where it always did. ``SCRIBELINE_STARTUP_TIMELINE=FILE`` writes when each
step started and ended (seconds since the process started) as JSON, for
``benchmark/startup.py``.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from pathlib import Path

from scribeline.config import Settings

TIMELINE_ENV = "SCRIBELINE_STARTUP_TIMELINE"


def _process_start() -> float:
    """The wall-clock time this process started (its exec: the tunables restart included)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - started)
    except (OSError, ValueError, IndexError):
        return time.time()


class Timeline:
    """Named spans, in seconds since the process started; written as JSON at exit if asked."""

    def __init__(self):
        self.t0 = _process_start()
        self.spans: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._path = os.environ.get(TIMELINE_ENV)
        if self._path:
            atexit.register(self.write)

    def now(self) -> float:
        return round(time.time() - self.t0, 3)

    def start(self, name: str) -> None:
        with self._lock:
            self.spans[name] = [self.now(), None]

    def end(self, name: str) -> None:
        with self._lock:
            if name in self.spans:
                self.spans[name][1] = self.now()

    def span(self, name: str, fn, *args, **kwargs):
        self.start(name)
        try:
            return fn(*args, **kwargs)
        finally:
            self.end(name)

    def write(self) -> None:
        import resource

        self.start("exit")
        me, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        cpu = {"command": round(me.ru_utime + me.ru_stime, 2),  # children: those ended by now (S3, Prefect's API, Presidio)
               "children": round(children.ru_utime + children.ru_stime, 2)}
        Path(self._path).write_text(json.dumps({"spans": self.spans, "cpu_s": cpu}, indent=1))


timeline = Timeline()


class _Background(threading.Thread):
    """A warm-up on a daemon thread; its error, if any, is kept, never raised here."""

    def __init__(self, name: str, fn, *args):
        super().__init__(name=f"scribeline-{name}", daemon=True)
        self._fn, self._args, self.error, self.result = fn, args, None, None
        self.label = name

    def run(self) -> None:
        try:
            self.result = timeline.span(self.label, self._fn, *self._args)
        except BaseException as exc:  # noqa: BLE001 - reported by whoever needs the result
            self.error = exc


class ColdStart:
    """Begin everything a run needs at once; ``s3()`` and ``api()`` wait for their part."""

    def __init__(self, settings: Settings, warm: bool):
        from scribeline import services

        self.settings = settings
        self.api_handle = None
        if "PREFECT_API_URL" not in os.environ and "prefect" not in sys.modules:
            self.api_handle = timeline.span("prefect api spawn", services.start_ephemeral_api, settings)
        self._s3 = _Background("s3", self._start_s3)
        self._s3.start()
        self._engines: list[_Background] = []
        self._stages_imported = threading.Event()
        if warm:
            self.warm()

    # ------------------------------------------------------------------ S3
    def _start_s3(self):
        from scribeline import services, storage

        if self.settings.embedded and not services.s3_running(self.settings):
            svc = services.start_s3(self.settings)
            return svc
        storage.ensure_buckets(self.settings)
        return None

    def s3(self):
        """Wait for the S3 server; returns the callback that stops it (if it was started here).

        The callback asks the server to stop and returns: SeaweedFS takes ~1.2 s to shut down
        (its filer), and the next command on this data directory waits for that
        (``services.stop(wait=False)``), not this one."""
        from scribeline import services

        timeline.span("s3 wait", self._s3.join)
        if self._s3.error is not None:
            raise self._s3.error
        svc = self._s3.result
        if svc is None:
            return lambda: None
        return lambda: timeline.span("s3 stop", services.stop, svc, wait=False)

    def any_waiting(self) -> bool:
        from scribeline import storage

        try:
            return bool(storage.list_waiting(self.settings))
        except Exception:  # noqa: BLE001 - the flow lists again and reports
            return False

    # ------------------------------------------------------------- engines
    def warm(self) -> None:
        """Load the model, start the Presidio analyzer's process and the Great Expectations context."""
        if self._engines:
            return
        self._engines.append(_Background("model load", self._load_model))
        self._engines.append(_Background("presidio + gx warm-up", self._warm_engines))
        for t in self._engines:
            t.start()

    def _load_model(self):
        try:
            timeline.start("import stages")
            import importlib

            from scribeline import stages

            # torch and whisper before Presidio's process starts beside them: two start-ups at once
            # on 2 cores delayed both (measured when that process still imported torch too).
            importlib.import_module("scribeline.transcription")
        finally:
            timeline.end("import stages")
            self._stages_imported.set()
        return stages.transcriber(self.settings)

    def _warm_engines(self):
        self._stages_imported.wait()
        from scribeline import pii, validation

        timeline.span("presidio process spawn", pii.start_analyzer)
        # Great Expectations is needed last (after the transcription), and its import holds the
        # GIL for seconds: it waits until the model, which the flow needs first, is loaded.
        self._engines[0].join()
        timeline.span("gx context", validation.warm_up)

    # ---------------------------------------------------------------- API
    def api(self) -> None:
        """Wait for the Prefect API this command started (if it started one)."""
        if self.api_handle is not None:
            timeline.span("prefect api wait", self.api_handle.wait)
