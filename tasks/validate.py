from __future__ import annotations

from prefect import task

from scribeline import stages
from tasks.common import run_key_cache, start


@task(name="validate", task_run_name="validate {run_key}", cache_key_fn=run_key_cache("validate"), persist_result=True)
def validate(run_key: str, transcript: dict, duration_s: float, wave_size: int = 0, media: dict | None = None) -> dict:
    """Runs the Great Expectations suites over the media, segments and words (in memory, CPU), in one run
    with the other media of its wave. ``wave_size``: how many media the flow submitted together;
    ``media``: the normalized media's facts (``sample_rate``, ``speech_s``)."""
    return stages.validate(start(), transcript, duration_s, wave_size, media)
