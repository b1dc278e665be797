"""Cross-file batching: transcription requests from concurrent tasks share model batches.

Each media's transcribe task calls :func:`transcribe`. Callers that arrive while
the model is busy queue up; the first waiting caller becomes the leader, takes
every queued request and decodes all their windows as one batched job. So
several files waiting in the same worker go through the model together, while
each media keeps its own task (cache, retries, quarantine).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Sequence

from scribeline.transcription import AudioJob, Transcriber, Transcript

GATHER_QUIET_S = 0.2  # a leader decodes once no new caller arrived for this long...
GATHER_MAX_S = 2.0  # ...or after this long at most


@dataclass
class _Request:
    jobs: Sequence[AudioJob]
    future: Future = field(default_factory=Future)


class BatchingQueue:
    def __init__(self, transcriber: Transcriber):
        self.transcriber = transcriber
        self._pending: list[_Request] = []
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # held by the leader while it decodes
        self.rounds: list[int] = []  # requests decoded together, per round (for logs and benchmarks)

    def transcribe(self, jobs: Sequence[AudioJob]) -> list[Transcript]:
        request = _Request(jobs)
        with self._lock:
            self._pending.append(request)
        while not request.future.done():
            if self._busy.acquire(timeout=0.1):
                try:
                    if request.future.done():
                        break
                    self._gather()
                    with self._lock:
                        taken, self._pending = self._pending, []
                    self._run(taken)
                finally:
                    self._busy.release()
        return request.future.result()

    def _gather(self) -> None:
        """Wait while callers keep arriving: tasks of one flow wave start a few hundred ms apart."""
        deadline = time.monotonic() + GATHER_MAX_S
        while time.monotonic() < deadline:
            with self._lock:
                seen = len(self._pending)
            time.sleep(GATHER_QUIET_S)
            with self._lock:
                if len(self._pending) == seen:
                    return

    def _run(self, requests: list[_Request]) -> None:
        if not requests:
            return
        self.rounds.append(len(requests))
        flat = [job for r in requests for job in r.jobs]
        try:
            results = self.transcriber.transcribe(flat)
        except Exception as exc:  # noqa: BLE001 - one bad file must not fail the others
            if len(requests) == 1:
                requests[0].future.set_exception(exc)
                return
            for r in requests:  # retry each alone so the failure lands where it belongs
                try:
                    r.future.set_result(self.transcriber.transcribe(r.jobs))
                except Exception as single_exc:  # noqa: BLE001
                    r.future.set_exception(single_exc)
            return
        i = 0
        for r in requests:
            r.future.set_result(results[i : i + len(r.jobs)])
            i += len(r.jobs)


_queues: dict[int, BatchingQueue] = {}
_queues_lock = threading.Lock()


def queue_for(transcriber: Transcriber) -> BatchingQueue:
    """One queue per transcriber object; callers share it through stages.transcriber's cache."""
    with _queues_lock:
        if id(transcriber) not in _queues:
            _queues[id(transcriber)] = BatchingQueue(transcriber)
        return _queues[id(transcriber)]
