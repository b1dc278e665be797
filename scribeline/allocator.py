"""glibc malloc settings for the process that runs the model: its buffers are reused, not faulted in anew.

Every batch allocates tensors of tens to hundreds of MB (the encoder's activations, the
decoder's audio keys and values). With glibc's defaults those come from fresh ``mmap``
regions, since a thread's arena cannot hold them, and go back to the kernel when freed: the
next batch takes page faults and the kernel zeroes every page again. Measured on the
benchmark's pipeline (2 cores): the model's two threads spent 15-20 % of their time in
the kernel for it, against 3-4 % in the stage's process. One arena that never hands memory
to ``mmap`` and keeps up to ``TRIM_THRESHOLD`` of freed memory makes the buffers reused.

glibc reads these settings (``GLIBC_TUNABLES``) only when a process starts, so the
``scribeline`` command starts itself again with them (:func:`restart_with_tunables`), and
workers get them from their environment (prefect.yaml's job variables, the Dockerfiles).
``SCRIBELINE_TUNE_MALLOC=false`` leaves glibc's defaults.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping

TRIM_THRESHOLD = 1 << 30  # freed memory kept for reuse, at most (a batch's buffers are a few hundred MB)
TUNABLES = {
    "glibc.malloc.arena_max": "1",  # one arena for all threads: the main one, which grows without mmap
    "glibc.malloc.mmap_max": "0",  # no allocation gets a region of its own, returned when freed
    "glibc.malloc.trim_threshold": str(TRIM_THRESHOLD),
}
OPT_OUT = "SCRIBELINE_TUNE_MALLOC"


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the settings apply: glibc (Linux), and not switched off by ``SCRIBELINE_TUNE_MALLOC``."""
    off = env.get(OPT_OUT, "").strip().lower() in {"0", "false", "no", "off"}
    return not off and sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _tunables_in(env: Mapping[str, str]) -> list[str]:
    """The ``name=value`` entries of ``env``'s ``GLIBC_TUNABLES``."""
    return [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]


def _names(tunables: list[str]) -> set[str]:
    return {t.split("=", 1)[0] for t in tunables}


def with_tunables(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the settings added to ``GLIBC_TUNABLES`` (a glibc.malloc setting already there is kept)."""
    current = _tunables_in(env)
    named = _names(current)
    return {**env, "GLIBC_TUNABLES": ":".join(current + [f"{k}={v}" for k, v in TUNABLES.items() if k not in named])}


def active(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process was started with every setting (its environment says what glibc read)."""
    return set(TUNABLES) <= _names(_tunables_in(env))


def restart_with_tunables() -> None:
    """Start this program again, in place, with the settings: call it first thing in an entry point."""
    if wanted() and not active() and getattr(sys, "orig_argv", None):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], with_tunables(os.environ))


def describe() -> str:
    """One line for ``scribeline status``."""
    if active():
        return "glibc malloc tuned for the model (" + ", ".join(f"{k.rsplit('.', 1)[1]}={v}" for k, v in TUNABLES.items()) + ")"
    return "glibc malloc defaults" + ("" if wanted() else f" ({OPT_OUT} is off, or not glibc)")
