"""What every stage task shares: settings, the stop check, the run-key cache, and the retry rules."""

from __future__ import annotations

import logging

from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from scribeline import stopping
from scribeline.config import Settings
from scribeline.stages import StageError


# Transient faults (S3 unreachable, warehouse busy) are retried with exponential backoff and
# jitter: 4, 8, 16, 32 s (each ±50 %), about a minute in all, enough to ride out an object
# store restarting; then the media is quarantined with its attempts counted.
TRANSIENT_RETRIES = 4
TRANSIENT_DELAYS = exponential_backoff(backoff_factor=4)
JITTER = 0.5


class _ThreadTimeoutNotice(logging.Filter):
    """Drops the warning Prefect logs for every task run that has a timeout and runs in a worker
    thread: that such a timeout cannot interrupt a blocking call. Every stage task runs so, on
    purpose (a thread of the flow's task runner, a timeout from its media's size): the stages
    bound their own time (the decode budget, the stop checks), and a stage that ran past its
    timeout still fails when it returns. The warning came once per task run, eight lines on a
    ``scribeline run``'s console and in each run's logs in the UI (26 media: 208 of them)."""

    PREFIX = "Timeout of %s seconds configured for this task, but the task is running in a worker thread"

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.PREFIX))


logging.getLogger("prefect.task_runs").addFilter(_ThreadTimeoutNotice())


def settings() -> Settings:
    return Settings.from_env()


def start() -> Settings:
    """What a stage task does first: no stage starts once the run is stopping (raises Stopped)."""
    stopping.check()
    return settings()


def run_key_cache(stage: str):
    """Cache a stage's result under the media's run key (content + configuration)."""

    def key(context: TaskRunContext, parameters: dict) -> str:
        return f"scribeline-{stage}-{parameters['run_key']}"

    return key


def retry_unless_bad_media(task, task_run, state) -> bool:
    """Retry transient failures (network, store, lock); never retry a media's own fault, nor work
    that stopped because the run is stopping."""
    if stopping.requested():
        return False
    try:
        state.result()
    except StageError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return False


def attempts() -> int:
    ctx = TaskRunContext.get()
    return ctx.task_run.run_count if ctx else 1


def run_info() -> dict:
    """The flow run this task serves, for the ledger: its id and how many times it has run."""
    from prefect.runtime import flow_run

    # A per-media run's attempt (the sweep's: a lost run's object gets another), else Prefect's count.
    attempt = (flow_run.parameters or {}).get("attempt") or flow_run.run_count or 1
    return {"flow_run_id": flow_run.id, "attempts": attempt}
