"""The production runtime on Prefect: work pools, deployments, and the workers that serve them.

- ``deploy``: the buckets, the work pools (``scribeline-cpu`` for the sweep, ``scribeline-gpu``
  for the per-media runs: a GPU machine's pool, served on CPU where there is none) and the
  deployments of prefect.yaml.
- ``worker``: a warm worker for each pool given (scribeline.warm_worker): Prefect's process
  worker, except that the flow runs execute in threads of this process. It loads the model,
  Presidio and Great Expectations once and keeps them; its model batches the windows of every
  run in flight. ``supervise`` starts it again when it dies and marks its runs Crashed.
"""

from __future__ import annotations

import os
import signal
import subprocess
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


def worker(settings: Settings, pools: list[str], limit: int = 16, preload: bool = True) -> int:
    """Serve the pools' flow runs in this process (scribeline.warm_worker) until stopped: the model,
    Presidio and Great Expectations are loaded once (``preload``: before the first run) and kept."""
    from scribeline import stopping, warm_worker

    os.environ.update(worker_env(settings), SCRIBELINE_WARM_WORKER="true")

    def stop(signum, frame):
        # Every hosted run stops at its next check (nothing half-loaded, its objects stay in
        # incoming); the worker loops end with the process.
        print(f"scribeline worker: {signal.Signals(signum).name} received; stopping", flush=True)
        stopping.request_process(signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    if preload:
        warm_up(settings)
    print(f"scribeline worker: serving {', '.join(pools)} in process {os.getpid()} (engines "
          f"{'loaded' if preload else 'loaded on first use'})", flush=True)
    warm_worker.serve(pools, limit)
    return 0


def warm_up(settings: Settings) -> None:
    """The engines every hosted run uses, loaded before the first run arrives."""
    import importlib

    from scribeline import pii, stages, validation

    for module in ("flows.process_incoming", "flows.sweep", "flows.retention"):  # the hosted runs' flows
        importlib.import_module(module)

    stages.transcriber(settings)
    pii.start_analyzer()
    validation.warm_up()


def supervise(argv: list[str], pid_file: Path | None = None) -> int:
    """Run ``argv`` (the worker proper) and start it again whenever it ends, until stopped.

    A worker lost to a crash, the OOM killer or an operator's kill -9 is back in seconds; the
    runs it hosted are marked Crashed and the sweep gives their objects another attempt."""
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
            # Beside the restart, not before it: a busy API must not delay the new worker.
            threading.Thread(target=_crash_runs_of, args=(child[0].pid,), name="scribeline-crash-marker",
                             daemon=True).start()
            stopping.wait(2.0)
    return rc


def _crash_runs_of(pid: int) -> None:
    """The dead worker's hosted runs, marked Crashed so that their objects get their next attempt
    now (if the API cannot be reached, the sweep's run lease does it later)."""
    from scribeline import warm_worker

    try:
        n = warm_worker.crash_runs_of(warm_worker.identity(pid))
        print(f"scribeline worker: {n} flow run(s) of the ended worker marked Crashed", flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"scribeline worker: could not mark the ended worker's runs ({exc!r}); the sweep's lease will",
              flush=True)
