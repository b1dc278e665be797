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
import threading
from pathlib import Path

from scribeline.config import Settings

ROOT = Path(__file__).resolve().parent.parent
POOLS = ("scribeline-cpu", "scribeline-gpu")


def worker_env(settings: Settings) -> dict[str, str]:
    """What the workers and their flow runs need in their environment."""
    return {"SCRIBELINE_CHECKOUT": str(ROOT), "SCRIBELINE_DATA_DIR": str(settings.data_dir)}


def deploy(settings: Settings, pools: tuple[str, ...] = POOLS, only_missing: bool = False) -> bool:
    """Buckets, pools and deployments; with ``only_missing``, nothing if the deployments exist
    (`scribeline up` run again: `prefect deploy` costs seconds of CPU). True if it deployed."""
    from deployments.deploy import DEPLOYMENTS, deploy_all
    from scribeline import storage

    storage.ensure_buckets(settings)
    os.environ.update(worker_env(settings))
    apply_automations()
    if only_missing and _deployed([f"{FLOWS[name]}/{name}" for pool in pools for name in DEPLOYMENTS[pool]]):
        return False
    deploy_all(pools)
    return True


def apply_automations() -> dict[str, str]:
    """deployments/automations.yaml on the API, created or updated by name (scribeline.automations)."""
    from scribeline import automations

    done = automations.apply()
    print("automations: " + ", ".join(f"{name} {how}" for name, how in done.items()))
    return done


FLOWS = {"sweep": "scribeline-sweep", "retention": "scribeline-retention", "process-media": "scribeline-process-media"}


def _deployed(names: list[str]) -> bool:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            for name in names:
                client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


def worker(settings: Settings, pools: list[str], stage_limit: int = 16, stages: bool = True) -> int:
    """Serve the pools' flow runs (a `prefect worker` per pool, restarted if it ends) and the heavy
    stages in this process, until stopped."""
    env = {**os.environ, **worker_env(settings)}
    stopping = threading.Event()

    def start(pool: str) -> subprocess.Popen:
        from scribeline.procs import die_with_parent

        # Each pool's worker and its flow runs in a session of their own (a signal to their process
        # group never reaches the stage worker's model), ending with this process (no orphans).
        return subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                                env=env, cwd=ROOT, start_new_session=True, preexec_fn=die_with_parent)

    procs = {pool: start(pool) for pool in pools}

    def supervise() -> None:
        while not stopping.wait(2.0):
            for pool, proc in list(procs.items()):
                if proc.poll() is not None:
                    print(f"scribeline worker: the {pool} worker ended ({proc.returncode}); starting it again", flush=True)
                    procs[pool] = start(pool)

    threading.Thread(target=supervise, name="scribeline-pool-supervisor", daemon=True).start()

    def stop(signum, frame):
        print(f"scribeline worker: {signal.Signals(signum).name} received; stopping", flush=True)
        stopping.set()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        while stages and not stopping.is_set():
            serve_stages(settings, stage_limit)
            # Prefect's task worker returns when its connection to the API ends (a server restart,
            # an overloaded server): subscribe again; the engines stay loaded.
            if not stopping.is_set():
                print("scribeline worker: the stage worker's subscription ended; subscribing again", flush=True)
                stopping.wait(1.0)
        stopping.wait()
    finally:
        stopping.set()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


def supervise(argv: list[str], pid_file: Path | None = None) -> int:
    """Run ``argv`` (the worker proper) and start it again whenever it ends, until stopped.

    A worker lost to a crash, the OOM killer or an operator's kill -9 is back in seconds; its
    flow runs' unanswered stages fail those runs and the sweep gives their objects another."""
    from scribeline import allocator
    from scribeline.procs import die_with_parent

    stopping = threading.Event()
    child: list[subprocess.Popen] = []

    def stop(signum, frame):
        stopping.set()
        if child and child[0].poll() is None:
            child[0].send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rc = 0
    while not stopping.is_set():
        # The model's malloc settings (scribeline/allocator.py), which glibc reads at process start.
        child[:] = [subprocess.Popen(argv, cwd=ROOT, env=allocator.with_tunables(os.environ), preexec_fn=die_with_parent)]
        if pid_file is not None:
            pid_file.write_text(str(child[0].pid))
        rc = child[0].wait()
        if not stopping.is_set():
            print(f"scribeline worker: the worker process ended ({rc}); starting it again", flush=True)
            stopping.wait(2.0)
    return rc


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
