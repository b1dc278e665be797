"""Coalescing: concurrent per-media calls served by one call over everything waiting.

The flow runs each stage as a wave of per-media tasks on a thread pool. Some
stages cost far less per item when done together: the model decodes windows of
several files in one batch, and a Great Expectations run costs the same for one
media's rows as for many. A :class:`Coalescer` lets each task keep its own call,
cache, retries and quarantine while the work is done in rounds: the first caller
starts a round, which waits while calls keep arriving (tasks of one wave start a
few hundred ms apart) and then serves every waiting call at once. Calls that
arrive during a round go into the next. Waiting callers sleep on their future;
nothing polls. If a round fails as a whole, each of its items is retried alone,
so a failure lands on the media that caused it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

from scribeline.model_thread import submit_on_model_thread
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the model's libraries load only where a transcriber is made
    from scribeline.transcription import AudioJob, Transcriber, Transcript

T = TypeVar("T")
R = TypeVar("R")

GATHER_QUIET_S = 0.2  # a transcription round starts once no new call arrived for this long...
GATHER_MAX_S = 2.0  # ...or after this long at most


@dataclass
class _Call(Generic[T]):
    item: T
    future: Future = field(default_factory=Future)


class Coalescer(Generic[T, R]):
    """Serve concurrent ``call(item)`` with ``run_many(items)``, one round at a time.

    ``run_many`` returns one result per item, in order; a result that is an
    exception is raised to that item's caller only. ``submit`` runs rounds on
    another thread (e.g. the model thread); by default the caller that starts a
    round runs it, and keeps running rounds while calls are waiting.
    """

    def __init__(self, run_many: Callable[[list[T]], list[R]], quiet_s: float, max_wait_s: float,
                 submit: Callable[[Callable[[], None]], object] | None = None):
        self._run_many = run_many
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        self._submit = submit
        self._pending: list[_Call[T]] = []
        self._lock = threading.Lock()
        self._active = False  # a drain is scheduled or running
        self._expected = 0  # calls announced for the round being gathered
        self._arrived = threading.Event()  # set once the announced calls are all pending
        self.rounds: list[int] = []  # items served together, per round (for logs and benchmarks)

    def __call__(self, item: T, expected: int = 0) -> R:
        """``expected``: how many calls the caller knows are coming together; a round
        waiting for them starts as soon as that many are pending."""
        call = _Call(item)
        with self._lock:
            self._pending.append(call)
            self._expected = max(self._expected, expected)
            if len(self._pending) >= self._expected > 0:
                self._arrived.set()
            start, self._active = not self._active, True
        if start:
            if self._submit is not None:
                self._submit(self._drain)
            else:
                self._drain()
        return call.future.result()

    def _drain(self) -> None:
        taken: list[_Call[T]] = []
        try:
            while True:
                self._gather()
                with self._lock:
                    taken, self._pending = self._pending, []
                self._run(taken)
                with self._lock:
                    if not self._pending:
                        self._active = False
                        return
        except BaseException as exc:  # never leave a caller waiting forever
            with self._lock:
                left, self._pending, self._active = taken + self._pending, [], False
            for c in left:
                if not c.future.done():
                    c.future.set_exception(exc)
            raise

    def _gather(self) -> None:
        """Wait until the announced calls are all pending, or no call came for quiet_s, or max_wait_s."""
        deadline = time.monotonic() + self.max_wait_s
        try:
            while time.monotonic() < deadline:
                with self._lock:
                    seen = len(self._pending)
                    if len(self._pending) >= self._expected > 0:
                        return
                    self._arrived.clear()
                if self._arrived.wait(self.quiet_s):
                    return
                with self._lock:
                    if len(self._pending) == seen:
                        return
        finally:
            with self._lock:
                self._expected = 0  # calls arriving from now on belong to the next round

    def _run(self, calls: list[_Call[T]]) -> None:
        if not calls:
            return
        self.rounds.append(len(calls))
        try:
            results = self._run_many([c.item for c in calls])
        except Exception as exc:  # noqa: BLE001 - retried item by item below
            if len(calls) == 1:
                calls[0].future.set_exception(exc)
                return
            results = []
            for c in calls:
                try:
                    results.append(self._run_many([c.item])[0])
                except Exception as single_exc:  # noqa: BLE001
                    results.append(single_exc)
        for c, r in zip(calls, results):
            if isinstance(r, BaseException):
                c.future.set_exception(r)
            else:
                c.future.set_result(r)


class BatchingQueue:
    """Cross-file batching: the windows of every waiting media are decoded together, on the model thread."""

    def __init__(self, transcriber: Transcriber):
        self.transcriber = transcriber
        self._coalescer: Coalescer[list[AudioJob], list[Transcript]] = Coalescer(
            self._transcribe_many, GATHER_QUIET_S, GATHER_MAX_S, submit=submit_on_model_thread)

    @property
    def rounds(self) -> list[int]:
        return self._coalescer.rounds

    def transcribe(self, jobs: Sequence[AudioJob], expected: int = 0) -> list[Transcript]:
        return self._coalescer(list(jobs), expected)

    def _transcribe_many(self, requests: list[list[AudioJob]]) -> list[list[Transcript]]:
        results = self.transcriber.transcribe([job for jobs in requests for job in jobs])
        out, i = [], 0
        for jobs in requests:
            out.append(results[i : i + len(jobs)])
            i += len(jobs)
        return out


_queues: dict[int, BatchingQueue] = {}
_queues_lock = threading.Lock()


def queue_for(transcriber: Transcriber) -> BatchingQueue:
    """One queue per transcriber object; callers share it through stages.transcriber's cache."""
    with _queues_lock:
        if id(transcriber) not in _queues:
            _queues[id(transcriber)] = BatchingQueue(transcriber)
        return _queues[id(transcriber)]
