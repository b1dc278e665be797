from __future__ import annotations

from prefect import get_run_logger, task

from scribeline import stages, storage
from scribeline.storage import ObjectRef
from tasks.common import JITTER, TRANSIENT_DELAYS, TRANSIENT_RETRIES, retry_unless_bad_media, settings, start


@task(name="list-incoming", retries=TRANSIENT_RETRIES, retry_delay_seconds=TRANSIENT_DELAYS, retry_jitter_factor=JITTER)
def list_incoming() -> list[ObjectRef]:
    """Lists the objects waiting in the incoming bucket (object store)."""
    refs = storage.list_waiting(settings())
    get_run_logger().info("%d object(s) waiting in the incoming bucket", len(refs))
    return refs


@task(name="ingest", task_run_name="ingest {ref.key}", retries=TRANSIENT_RETRIES, retry_delay_seconds=TRANSIENT_DELAYS, retry_jitter_factor=JITTER,
      retry_condition_fn=retry_unless_bad_media)
def ingest(ref: ObjectRef) -> dict:
    """Downloads one object from the incoming bucket, hashes it and derives its run key (object store, local disk)."""
    out = stages.ingest(start(), ref)
    get_run_logger().info("%s: %d bytes, run key %s", ref.key, out["size"], out["run_key"])
    return out
