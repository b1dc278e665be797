from __future__ import annotations

from prefect import get_run_logger, task

from scribeline import stages
from tasks.common import retry_unless_bad_media, settings, start


@task(name="load", task_run_name="load {run_key}", retries=3, retry_delay_seconds=3, retry_condition_fn=retry_unless_bad_media)
def load(run_key: str, ingested: dict, segmented: dict, redacted: dict, checks: dict, processing_s: float,
         wave_size: int = 0) -> bool:
    """Writes the media's rows to the DuckDB warehouse (warehouse file lock), through one opening of
    the file with the other media of its wave. ``wave_size``: how many media the flow submitted together."""
    added = stages.load(start(), ingested, segmented, redacted, checks, processing_s, wave_size)
    get_run_logger().info("%s: %s", run_key, "loaded" if added else "already in the warehouse; nothing added")
    return added


@task(name="archive", task_run_name="archive {run_key}", retries=3, retry_delay_seconds=3)
def archive(run_key: str, ingested: dict) -> str:
    """Moves the source object from the incoming to the processed bucket (object store)."""
    return stages.archive(settings(), ingested).uri
