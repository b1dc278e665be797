"""The scheduled sweep: one per-media flow run for each object waiting in the incoming bucket.

S3 servers here send no bucket notifications, so a schedule polls. Each object version
(bucket, key, etag) and the pipeline's configuration give an idempotency key; Prefect
returns the existing flow run for a key it has seen, so two sweeps at once, or a sweep
while the last one's runs still wait, start nothing twice. An object still in the bucket
whose run ended (its worker was lost, the run crashed) gets a new run under the key's next
attempt number; after ``max_attempts`` such runs it is quarantined with every run's state
(the dead letter), so nothing waits forever and nothing is dropped.

Backpressure: a sweep starts new runs only while fewer than ``max_runs_in_flight`` of them
wait or run; the rest stay in the bucket for the next sweep. The deployment's own
concurrency limit (prefect.yaml) bounds how many of those run at once.

One object per run (``max_objects_per_run``, 1 by default): a run's state, logs, retries
and cancellation are then one media's, which is what operators look for in the UI; the
warm worker hosting them batches the windows of concurrent runs, so per-media runs cost no batching.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from prefect import flow, get_client, get_run_logger, task
from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState,
                                            FlowRunFilterStateType)
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

from scribeline import artifacts, stages, storage, warehouse
from scribeline.config import Settings
from scribeline.storage import ObjectRef
from tasks.ingest import list_incoming
from tasks.quarantine import quarantine
from tasks.score import score_sidecars

_LIVE = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]


def idempotency_key(settings: Settings, refs: list[ObjectRef], attempt: int = 1) -> str:
    """The object versions and the configuration that would transcribe them (its fingerprint)."""
    versions = "\n".join(f"{r.bucket}\0{r.key}\0{r.etag}" for r in refs)
    digest = hashlib.sha256(f"{versions}\n{settings.fingerprint()}".encode()).hexdigest()[:40]
    return f"scribeline-media-{digest}" + (f"-attempt{attempt}" if attempt > 1 else "")


@flow(name="scribeline-sweep", flow_run_name=lambda: f"sweep-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}")
def sweep() -> dict:
    """Start a per-media flow run for every waiting object (at most ``max_runs_in_flight`` at once)."""
    log = get_run_logger()
    settings = Settings.from_env()
    storage.ensure_buckets(settings)
    refs = list_incoming()
    batches = [refs[i:i + settings.max_objects_per_run] for i in range(0, len(refs), settings.max_objects_per_run)]
    counts = {"objects": len(refs), "started": 0, "in_flight": 0, "waiting": 0, "dead_lettered": 0}
    seen = []  # (object, outcome, attempt): the sweep's table artifact in the UI
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(settings.sweep_deployment)
        room = settings.max_runs_in_flight - _runs_in_flight(client, deployment.id)
        for batch in batches:
            outcome, attempt = _start(client, settings, deployment.id, batch, room > 0)
            counts[outcome] += len(batch)
            room -= outcome == "started"
            seen += [(ref, outcome, attempt) for ref in batch]
    artifacts.publish_sweep(seen, log)
    compact_warehouse()
    score_sidecars(return_state=True)  # transcripts uploaded beside loaded media (scribeline/scoring.py)
    log.info("%(objects)d waiting: %(started)d runs started, %(in_flight)d already in flight, "
             "%(waiting)d left for the next sweep, %(dead_lettered)d quarantined after their runs ended", counts)
    return counts


@task(name="compact-warehouse", retries=2, retry_delay_seconds=5)
def compact_warehouse() -> None:
    """Merges the small Parquet files that per-media loads leave (warehouse): readers' scans stay short."""
    settings = Settings.from_env()
    if settings.warehouse.exists():
        warehouse.compact(settings.warehouse)


def _runs_in_flight(client, deployment_id) -> int:
    return client.count_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_LIVE))))


PENDING_LEASE_S = 120.0  # a run a worker took (Pending: "Submitting") but never started


def _lost(client, settings: Settings, run, batch: list[ObjectRef]) -> bool:
    """A run RUNNING past its lease, or Pending long after a worker took it, lost its process (a
    worker killed with it, a machine gone): it is marked Crashed so that the object gets its next
    attempt. Runs waiting for a slot (Scheduled, AwaitingConcurrencySlot) are never expired: that
    wait is backpressure."""
    now = dt.datetime.now(dt.timezone.utc)
    if run.state.type == StateType.RUNNING and run.start_time is not None:
        lease, age = stages.run_lease(settings, sum(r.size for r in batch)), (now - run.start_time).total_seconds()
    elif run.state.type == StateType.PENDING and run.state.timestamp is not None:
        lease, age = min(PENDING_LEASE_S, stages.run_lease(settings, 0)), (now - run.state.timestamp).total_seconds()
    else:
        return False
    if age < lease:
        return False
    client.set_flow_run_state(run.id, Crashed(message=f"{run.state.name} for {age:.0f} s (lease {lease:.0f} s): taken "
                                                      f"for lost by the sweep; the object gets its next attempt"), force=True)
    run.state = client.read_flow_run(run.id).state
    get_run_logger().warning("flow run %s %s for %.0f s, past its lease: marked Crashed", run.name, run.state.name, age)
    return True


def _start(client, settings: Settings, deployment_id, batch: list[ObjectRef], may_start: bool) -> tuple[str, int | None]:
    """Start (or find) the batch's run: "started", "in_flight", "waiting" (no room) or "dead_lettered",
    with the attempt it is on (None when none runs)."""
    ended = []
    for attempt in range(1, settings.max_attempts + 1):
        key = idempotency_key(settings, batch, attempt)
        existing = client.read_flow_runs(flow_run_filter=FlowRunFilter(idempotency_key={"any_": [key]}), limit=1)
        if existing:
            run = existing[0]
            if run.state is None or (not run.state.is_final() and not _lost(client, settings, run, batch)):
                return "in_flight", attempt
            ended.append(f"{run.name}: {run.state.name}")
            continue  # that run ended and the object is still waiting: the next attempt
        if not may_start:
            return "waiting", None
        # Tags are set here, at creation: the source and extension (codec and language follow from the run).
        tags = ["scribeline", f"attempt-{attempt}"] + sorted({t for r in batch for t in artifacts.source_tags(r.bucket, r.key)})
        client.create_flow_run_from_deployment(
            deployment_id, idempotency_key=key, tags=tags,
            parameters={"objects": [{"bucket": r.bucket, "key": r.key, "etag": r.etag, "size": r.size} for r in batch],
                        "attempt": attempt})
        return "started", attempt
    for ref in batch:
        quarantine(ref, "orchestration", f"{len(ended)} flow runs ended without finishing it ({'; '.join(ended)})",
                   len(ended))
    return "dead_lettered", None
