"""The production runtime on Prefect: work pools, deployments, and the workers that serve them.

- ``deploy``: the buckets, the work pools (``scribeline-cpu`` for the sweep, ``scribeline-gpu``
  for the per-media runs: a GPU machine's pool, served on CPU where there is none) and the
  deployments of prefect.yaml.
- ``worker``: a Prefect process worker for each pool given, and in the same process the stage
  worker: a Prefect task worker serving transcribe, validate and redact. It loads the model,
  Presidio and Great Expectations once and keeps them; the per-media runs hand it their
  heavy stages (``.delay``) and its model batches the windows of every run in flight.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from scribeline.config import Settings

ROOT = Path(__file__).resolve().parent.parent
POOLS = ("scribeline-cpu", "scribeline-gpu")


def worker_env(settings: Settings) -> dict[str, str]:
    """What the workers and their flow runs need in their environment."""
    return {"SCRIBELINE_CHECKOUT": str(ROOT), "SCRIBELINE_DATA_DIR": str(settings.data_dir)}


def deploy(settings: Settings, pools: tuple[str, ...] = POOLS) -> None:
    from deployments.deploy import deploy_all
    from scribeline import storage

    storage.ensure_buckets(settings)
    os.environ.update(worker_env(settings))
    deploy_all(pools)


def worker(settings: Settings, pools: list[str], stage_limit: int = 16, stages: bool = True) -> int:
    """Serve the pools' flow runs (a `prefect worker` per pool) and the heavy stages, until stopped."""
    env = {**os.environ, **worker_env(settings)}
    procs = [subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                              env=env, cwd=ROOT) for pool in pools]

    def stop(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        if stages:
            serve_stages(settings, stage_limit)
        else:
            for p in procs:
                p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


def serve_stages(settings: Settings, limit: int) -> None:
    """Load the engines, then run the heavy stages handed over by flow runs (blocks)."""
    from prefect.task_worker import serve

    from scribeline import pii, stages, validation
    from tasks.redact import redact
    from tasks.transcribe import load_model, transcribe
    from tasks.validate import validate

    stages.transcriber(settings)  # the model stays loaded for the worker's lifetime
    pii.start_analyzer()
    validation.warm_up()
    serve(load_model, transcribe, validate, redact, limit=limit)
