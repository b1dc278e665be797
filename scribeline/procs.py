"""Child processes that end with their parent (Linux): a worker killed with SIGKILL leaves no
Presidio process or Prefect worker behind to serve, or hold memory, on its own."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent ends (no-op off Linux).

    The kernel sends it when the parent *thread* that started this process ends: only for
    children started from a thread that lives as long as its process (``exit_with_parent``
    for the others)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except OSError:
        pass


def exit_with_parent(poll_s: float = 1.0) -> None:
    """End this process within ``poll_s`` once its parent process is gone (it is then re-parented).

    For a child that a short-lived thread may have started (the Presidio analyzer, started by a
    warm-up thread or a task's thread): ``die_with_parent`` would end it with that thread."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="scribeline-parent-watch", daemon=True).start()


class NotInstalled:
    """A meta path finder that makes ``import name`` fail in this process as if the package were
    not installed. (Not ``sys.modules[name] = None``: scipy, for one, then finds the name in
    sys.modules and breaks.)"""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not loaded in this process)", name=fullname)
        return None
