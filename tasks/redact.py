from __future__ import annotations

from prefect import task

from scribeline import stages
from tasks.common import JITTER, TRANSIENT_DELAYS, TRANSIENT_RETRIES, retry_unless_bad_media, run_key_cache, start


@task(name="redact", task_run_name="redact {run_key}", cache_key_fn=run_key_cache("redact"), persist_result=True)
def redact(run_key: str, transcript: dict, data_class: str | None = None) -> dict:
    """Rewrites PII found by Presidio with its operator (tag, mask or salted hash); the data class may add
    entity types (spaCy model, CPU, in the analyzer's own process). ``run_key`` includes the class."""
    return stages.redact(start(), transcript, data_class)


@task(name="redact-audio", task_run_name="redact audio {run_key}", retries=TRANSIENT_RETRIES,
      retry_delay_seconds=TRANSIENT_DELAYS, retry_jitter_factor=JITTER, retry_condition_fn=retry_unless_bad_media)
def redact_audio(run_key: str, ingested: dict, segmented: dict, redacted: dict) -> str:
    """Beeps or mutes every PII span of the normalized audio and stores the copy in the redacted-audio
    bucket (ffmpeg, object store)."""
    return stages.redact_audio(start(), ingested, segmented, redacted)


@task(name="keep-unredacted", task_run_name="keep unredacted {run_key}", retries=TRANSIENT_RETRIES,
      retry_delay_seconds=TRANSIENT_DELAYS, retry_jitter_factor=JITTER)
def keep_unredacted(run_key: str, ingested: dict, transcript: dict) -> str:
    """Stores the unredacted transcript in the restricted bucket until its retention age (object store)."""
    return stages.keep_unredacted(start(), ingested, transcript)
