"""What every stage task shares: settings, the stop check, the run-key cache, and the retry rule."""

from __future__ import annotations

from prefect.context import TaskRunContext

from scribeline import stopping
from scribeline.config import Settings
from scribeline.stages import StageError


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
