"""Cross-file batching: transcription requests from concurrent tasks share model batches.

Each media's transcribe task calls :meth:`BatchingQueue.transcribe` and blocks on
its own future. The first request schedules a round on the model thread; the
round waits while requests keep arriving (tasks of one flow wave start a few
hundred ms apart), then decodes every queued request's windows as one batched
job. Requests that arrive during a round go into the next one. So several files
waiting in the same worker go through the model together, while each media
keeps its own task (cache, retries, quarantine). Waiting callers sleep on their
future: nothing polls while the model computes.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Sequence

from scribeline.transcription import AudioJob, Transcriber, Transcript, submit_on_model_thread

GATHER_QUIET_S = 0.2  # a round starts once no new request arrived for this long...
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
        self._scheduled = False  # a round is queued on the model thread and has not taken its requests yet
        self.rounds: list[int] = []  # requests decoded together, per round (for logs and benchmarks)

    def transcribe(self, jobs: Sequence[AudioJob]) -> list[Transcript]:
        request = _Request(jobs)
        with self._lock:
            self._pending.append(request)
            if not self._scheduled:
                self._scheduled = True
                submit_on_model_thread(self._round)
        return request.future.result()

    def _round(self) -> None:
        taken: list[_Request] = []
        try:
            self._gather()
            with self._lock:
                taken, self._pending = self._pending, []
                self._scheduled = False  # later requests schedule the next round
            self._run(taken)
        except BaseException as exc:  # noqa: BLE001 - never leave a caller waiting forever
            with self._lock:
                if not taken:
                    taken, self._pending = self._pending, []
                    self._scheduled = False
            for r in taken:
                if not r.future.done():
                    r.future.set_exception(exc)
            raise

    def _gather(self) -> None:
        """Wait while requests keep arriving."""
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
