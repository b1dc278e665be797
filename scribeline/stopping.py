"""Stop requests: SIGINT, SIGTERM or a Prefect cancellation.

Long work (decoding above all) polls :func:`check` between steps, so a stop takes
effect within one decoding step rather than at the end of a transcription. What
was not finished raises :class:`Stopped`; nothing half-done is loaded.

A signal stops the whole process. A flow run hosted among others by a warm worker
(scribeline.warm_worker) runs inside a :func:`scope` of its own: its cancellation
stops its own stages (its task threads inherit the scope), not its neighbours'.
Without a scope, as in `scribeline run`, a cancellation stops the process's work.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from contextvars import ContextVar


class Stopped(Exception):
    """Raised by work that stopped because a stop was requested."""


class Scope:
    """One stop request: set once, with the reason of the first request."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._reason: list[str] = []

    def request(self, reason: str = "stop requested") -> None:
        if not self._event.is_set():
            self._reason[:] = [reason]
        self._event.set()

    def requested(self) -> bool:
        return self._event.is_set()

    def reason(self) -> str:
        return self._reason[0] if self._reason else ""

    def clear(self) -> None:
        self._event.clear()
        self._reason.clear()


_process = Scope()
_current: ContextVar[Scope | None] = ContextVar("scribeline_stop_scope", default=None)


def current() -> Scope:
    """The scope a request made here goes to (captured by watcher threads, which start without it)."""
    return _current.get() or _process


@contextmanager
def scope():
    """A stop scope of its own for the work started inside (one hosted flow run)."""
    own = Scope()
    token = _current.set(own)
    try:
        yield own
    finally:
        _current.reset(token)


def request(reason: str = "stop requested") -> None:
    current().request(reason)


def request_process(reason: str) -> None:
    """Stop everything in this process (a signal), whatever scope the caller is in."""
    _process.request(reason)


def _asked() -> Scope | None:
    if _process.requested():
        return _process
    own = _current.get()
    return own if own is not None and own.requested() else None


def requested() -> bool:
    return _asked() is not None


def reason() -> str:
    asked = _asked()
    return asked.reason() if asked else ""


def check() -> None:
    """Raise :class:`Stopped` if a stop was requested."""
    asked = _asked()
    if asked is not None:
        raise Stopped(asked.reason() or "stop requested")


def reset() -> None:
    """Forget the process's stop request (a new run in the same process, or a test)."""
    _process.clear()
