from __future__ import annotations

from prefect import task

from scribeline import stages
from tasks.common import JITTER, TRANSIENT_DELAYS, TRANSIENT_RETRIES, retry_unless_bad_media, run_key_cache, start


@task(name="segment", task_run_name="segment {run_key}", cache_key_fn=run_key_cache("segment"),
      persist_result=True, retries=TRANSIENT_RETRIES, retry_delay_seconds=TRANSIENT_DELAYS, retry_jitter_factor=JITTER,
      retry_condition_fn=retry_unless_bad_media)
def segment(run_key: str, normalized: dict) -> dict:
    """Finds speech with silero VAD and merges it into ≤30 s windows cut in pauses (CPU)."""
    return stages.segment(start(), run_key, normalized)
