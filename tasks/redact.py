from __future__ import annotations

from prefect import task

from scribeline import stages
from tasks.common import run_key_cache, start


@task(name="redact", task_run_name="redact {run_key}", cache_key_fn=run_key_cache("redact"), persist_result=True)
def redact(run_key: str, transcript: dict) -> dict:
    """Replaces PII found by Presidio with entity tags (spaCy model, CPU, in the analyzer's own process)."""
    return stages.redact(start(), transcript)
