"""A Prefect worker that runs its pool's flow runs in threads of its own, warm process.

Prefect's process worker starts a Python process per flow run: ~3-5 s of CPU for the
interpreter, Prefect's engine and the flow's imports, before the run has loaded a model.
``WarmWorker`` is that worker (same pool type, same polling, concurrency and cancellation
protocol) with one change: ``run`` executes the flow run here, in a thread, through
Prefect's own engine (``run_flow``). The model, Presidio and Great Expectations stay
loaded across runs, and the windows of every run in flight decode in shared batches
(the transcriber batches the calls of concurrent threads).

- Each hosted run has its own stop scope (scribeline.stopping): cancelling one stops its
  stages only. A signal to the worker stops them all; unfinished objects stay in incoming.
- A run's ``infrastructure_pid`` names the worker process (``identity``). When a worker
  dies (SIGKILL, OOM) its supervisor marks that process's unfinished runs Crashed
  (:func:`crash_runs_of`), so the sweep gives their objects the next attempt at once
  instead of after the run lease.
"""

from __future__ import annotations

import os
import socket
import threading
import warnings
from typing import Any

import anyio
from prefect.workers.process import ProcessWorker, ProcessWorkerResult

from scribeline import stopping

IDENTITY_PREFIX = "scribeline-warm"


def identity(pid: int | None = None) -> str:
    """What a hosted run records as its infrastructure: this host and worker process."""
    return f"{IDENTITY_PREFIX}:{socket.gethostname()}:{pid or os.getpid()}"


with warnings.catch_warnings():
    # Prefect registers worker classes by type; this one serves pools of type "process" on purpose
    # (in a process that imports it, it stands for the process worker).
    warnings.filterwarnings("ignore", message=".*matches existing registered type")

    class WarmWorker(ProcessWorker):
        """Serves a work pool of type ``process`` with the flow runs executed in this process."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._flows: dict[str, Any] = {}
            self._flows_lock = threading.Lock()
            self._threads = anyio.CapacityLimiter(kwargs.get("limit") or 16)

        def _flow(self, entrypoint: str):
            """The deployment's flow, imported once per entrypoint (the checkout is this process's)."""
            from prefect.flows import load_flow_from_entrypoint

            with self._flows_lock:
                if entrypoint not in self._flows:
                    self._flows[entrypoint] = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
                return self._flows[entrypoint]

        def _execute(self, entrypoint: str, flow_run) -> None:
            from prefect.flow_engine import run_flow

            flow = self._flow(entrypoint)
            with stopping.scope():  # this run's cancellation stops its own stages only
                # The engine proposes Running (a cancelled or deleted run stops here) and records
                # the final state itself; a failed flow is a Failed run, not a worker fault.
                run_flow(flow, flow_run=flow_run, return_type="state")

        async def run(self, flow_run, configuration, task_status=None) -> ProcessWorkerResult:
            me = identity()
            if task_status is not None:
                task_status.started(me)  # recorded as the run's infrastructure_pid
            deployment = await self.client.read_deployment(flow_run.deployment_id)
            await anyio.to_thread.run_sync(self._execute, deployment.entrypoint, flow_run, limiter=self._threads)
            return ProcessWorkerResult(identifier=me, status_code=0)

        async def kill_infrastructure(self, infrastructure_pid: str, configuration, grace_seconds: int = 30) -> None:
            """A run cancelled before it started: nothing to kill here (the process is shared; the
            engine refuses to start a cancelled run). A running one is stopped by its own watcher."""
            return None


def serve(pools: list[str], limit: int) -> None:
    """One warm worker per pool, in this process, until stopped (blocks)."""

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for pool in pools:
                worker = WarmWorker(work_pool_name=pool, limit=limit, name=f"{identity()}:{pool}")
                group.start_soon(worker.start)

    anyio.run(main)


def crash_runs_of(worker_identity: str) -> int:
    """Mark Crashed the unfinished flow runs a dead worker process hosted (their objects get the
    sweep's next attempt). Returns how many."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    live = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
        any_=[StateType.PENDING, StateType.RUNNING, StateType.CANCELLING])))
    crashed, page = 0, 200  # the API's largest page
    with get_client(sync_client=True) as client:
        ours, offset = [], 0
        while True:
            runs = client.read_flow_runs(flow_run_filter=live, limit=page, offset=offset)
            ours += [run for run in runs if run.infrastructure_pid == worker_identity]
            if len(runs) < page:
                break
            offset += page
        for run in ours:
            client.set_flow_run_state(run.id, Crashed(message=f"its worker process ({worker_identity}) ended"),
                                      force=True)
            crashed += 1
    return crashed
