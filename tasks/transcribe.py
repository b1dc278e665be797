from __future__ import annotations

from prefect import get_run_logger, task

from scribeline import stages
from tasks.common import retry_unless_bad_media, run_key_cache, settings


@task(name="transcribe", task_run_name="transcribe {run_key}", cache_key_fn=run_key_cache("transcribe"),
      persist_result=True, retries=1, retry_delay_seconds=10, retry_condition_fn=retry_unless_bad_media)
def transcribe(run_key: str, segmented: dict) -> dict:
    """Runs whisper over the speech windows, batched with other media in this worker (GPU when present, else CPU)."""
    out = stages.transcribe(settings(), run_key, segmented)
    get_run_logger().info("%s: %d segment(s), language %s", run_key, len(out["segments"]), out["language"])
    return out
