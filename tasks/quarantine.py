from __future__ import annotations

from prefect import get_run_logger, task

from scribeline import automations, stages
from scribeline.storage import ObjectRef
from tasks.common import JITTER, TRANSIENT_DELAYS, TRANSIENT_RETRIES, run_info, settings


@task(name="quarantine", task_run_name="quarantine {ref.key}", retries=TRANSIENT_RETRIES, retry_delay_seconds=TRANSIENT_DELAYS, retry_jitter_factor=JITTER)
def quarantine(ref: ObjectRef, stage: str, error: str, attempts: int, sha256: str | None = None,
               run_key: str | None = None, first_seen: str | None = None) -> dict:
    """Writes a JSON record of the failure and moves the media to the quarantine bucket (object store, warehouse)."""
    record = stages.quarantine(settings(), ref, stage, error, attempts, sha256, run_key, run_info(), first_seen)
    get_run_logger().warning("quarantined %s at %s: %s", ref.key, stage, error)
    # Prefect's event stream: the automation "scribeline-quarantine-burst" counts these.
    automations.emit_quarantined(ref.bucket, ref.key, stage, error, attempts, record.get("record_key"))
    return record
