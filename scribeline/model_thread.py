"""The one thread on which every torch computation of the process runs.

torch's CPU build uses GNU OpenMP, which gives each calling thread its own team
of worker threads. Once the process holds more OpenMP threads than cores (a
Prefect task thread that touched torch is enough), libgomp stops spin-waiting
between parallel regions and every small op pays a wake-up. Measured on 2
cores: the same batched decode took 40 % longer from a second thread, and the
encoder up to 40 % longer after torch work had run in the flow's task threads. So
the model (load, encode, decode, align) runs here, whichever thread asks. (Silero's
VAD needs no torch: its sequence model is ONNX Runtime on numpy, run in task threads.)
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

MODEL_THREAD_NAME = "scribeline-model"


def cpu_threads() -> int:
    """Cores this process may run on: torch's thread count, and how many decodes or VAD parts run at once."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=MODEL_THREAD_NAME)


def on_model_thread(fn: Callable, *args, **kwargs):
    """Run ``fn`` on the model thread and return its result (or raise its error)."""
    if threading.current_thread().name.startswith(MODEL_THREAD_NAME):
        return fn(*args, **kwargs)  # already there: run inline instead of waiting on ourselves
    return _executor.submit(fn, *args, **kwargs).result()


def submit_on_model_thread(fn: Callable, *args, **kwargs) -> Future:
    """Queue ``fn`` on the model thread without waiting for it."""
    return _executor.submit(fn, *args, **kwargs)
