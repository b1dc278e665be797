"""The scheduled retention flow: delete what is past its class's age, record every deletion.

Runs on the CPU pool (daily by default, ``SCRIBELINE_RETENTION_CRON``); `scribeline retention`
runs the same logic by hand (``--dry-run`` lists without deleting). See scribeline/retention.py.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

from prefect import flow, get_run_logger, task

from scribeline import retention as policy
from scribeline.config import Settings
from tasks.common import JITTER, TRANSIENT_DELAYS, TRANSIENT_RETRIES


@task(name="apply-retention", retries=TRANSIENT_RETRIES, retry_delay_seconds=TRANSIENT_DELAYS, retry_jitter_factor=JITTER)
def apply_retention() -> dict:
    """Deletes objects past their retention age and records them in retention_log (object store, warehouse).
    A retry finds only what is still there: nothing is deleted or recorded twice."""
    deleted = policy.apply(Settings.from_env())
    return dict(Counter(d.kind for d in deleted))


@flow(name="scribeline-retention", flow_run_name=lambda: f"retention-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}")
def retention() -> dict:
    """Delete originals, normalized audio, redacted audio, unredacted transcripts and stage results past their ages."""
    counts = apply_retention()
    get_run_logger().info("deleted %s", ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing")
    return counts
