"""A process-wide stop request: SIGINT, SIGTERM or a Prefect cancellation sets it.

Long work (decoding above all) polls :func:`check` between steps, so a stop takes
effect within one decoding step rather than at the end of a transcription. What
was not finished raises :class:`Stopped`; nothing half-done is loaded.
"""

from __future__ import annotations

import threading

_requested = threading.Event()
_reason: list[str] = []


class Stopped(Exception):
    """Raised by work that stopped because a stop was requested."""


def request(reason: str = "stop requested") -> None:
    if not _requested.is_set():
        _reason[:] = [reason]
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def reason() -> str:
    return _reason[0] if _reason else ""


def check() -> None:
    """Raise :class:`Stopped` if a stop was requested."""
    if _requested.is_set():
        raise Stopped(reason() or "stop requested")


def reset() -> None:
    """Forget a stop request (a new run in the same process, or a test)."""
    _requested.clear()
    _reason.clear()
