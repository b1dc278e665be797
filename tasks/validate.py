from __future__ import annotations

from prefect import task

from scribeline import stages
from tasks.common import run_key_cache, settings


@task(name="validate", task_run_name="validate {run_key}", cache_key_fn=run_key_cache("validate"), persist_result=True)
def validate(run_key: str, transcript: dict, duration_s: float) -> dict:
    """Runs the Great Expectations suites over segments and words (in memory, CPU)."""
    return stages.validate(settings(), transcript, duration_s)
