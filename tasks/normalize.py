from __future__ import annotations

from prefect import task

from scribeline import stages
from tasks.common import JITTER, TRANSIENT_DELAYS, TRANSIENT_RETRIES, retry_unless_bad_media, run_key_cache, start


@task(name="normalize", task_run_name="normalize {run_key}", cache_key_fn=run_key_cache("normalize"),
      persist_result=True, retries=TRANSIENT_RETRIES, retry_delay_seconds=TRANSIENT_DELAYS, retry_jitter_factor=JITTER,
      retry_condition_fn=retry_unless_bad_media)
def normalize(run_key: str, ingested: dict, wave_size: int = 0) -> dict:
    """Probes the media and decodes it to 16 kHz mono 16-bit PCM (ffprobe/ffmpeg, CPU; normalized bucket).

    ``wave_size`` media were submitted together: the largest of them decodes first."""
    return stages.normalize(start(), ingested, wave_size)
