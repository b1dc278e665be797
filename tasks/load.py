from __future__ import annotations

from prefect import get_run_logger, task

from scribeline import stages
from tasks.common import JITTER, TRANSIENT_DELAYS, TRANSIENT_RETRIES, retry_unless_bad_media, run_info, settings, start


@task(name="load", task_run_name="load {run_key}", retries=TRANSIENT_RETRIES, retry_delay_seconds=TRANSIENT_DELAYS, retry_jitter_factor=JITTER,
      retry_condition_fn=retry_unless_bad_media)
def load(run_key: str, ingested: dict, segmented: dict, redacted: dict, checks: dict, processing_s: float,
         wave_size: int = 0) -> bool:
    """Writes the media's rows and its object's ledger row to the warehouse (DuckLake catalog and
    Parquet files), in one transaction with the other media of its wave. ``wave_size``: how many
    media the flow submitted together."""
    added = stages.load(start(), ingested, segmented, redacted, checks, processing_s, wave_size, run_info())
    get_run_logger().info("%s: %s", run_key, "loaded" if added else "already in the warehouse; nothing added")
    return added


@task(name="archive", task_run_name="archive {run_key}", retries=TRANSIENT_RETRIES, retry_delay_seconds=TRANSIENT_DELAYS, retry_jitter_factor=JITTER)
def archive(run_key: str, ingested: dict) -> str:
    """Moves the source object from the incoming to the processed bucket (object store)."""
    return stages.archive(settings(), ingested).uri


@task(name="record-already-loaded", task_run_name="ledger {run_key}", retries=TRANSIENT_RETRIES, retry_delay_seconds=TRANSIENT_DELAYS, retry_jitter_factor=JITTER)
def record_already_loaded(run_key: str, ingested: dict) -> bool:
    """Writes the ledger row of an object whose media the warehouse already holds (warehouse)."""
    return stages.record_already_loaded(settings(), ingested, run_info())
