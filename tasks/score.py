from __future__ import annotations

from prefect import get_run_logger, task

from scribeline import scoring, stopping
from tasks.common import settings


@task(name="score-sidecars", retries=2, retry_delay_seconds=2)
def score_sidecars() -> list[dict]:
    """Scores the reference and corrected transcripts uploaded beside loaded media (object store, warehouse).

    The flows call it with ``return_state=True``: a failure leaves the sidecars in the incoming
    bucket for the next run and fails no media."""
    if stopping.requested():
        return []
    log = get_run_logger()
    outcomes = scoring.score_sidecars(settings(), log)
    counts = {state: sum(o["state"] == state for o in outcomes) for state in ("scored", "waiting", "failed")}
    if outcomes:
        log.info("sidecar transcripts: %(scored)d scored, %(waiting)d waiting for their media, %(failed)d failed", counts)
    return outcomes
