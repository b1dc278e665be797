from __future__ import annotations

from prefect import get_run_logger, task

from scribeline import stages
from tasks.common import retry_unless_bad_media, run_key_cache, settings, start


def _retry_downloads(task, task_run, state) -> bool:
    """A failed download may succeed later; a missing checkpoint or unknown name will not."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:  # noqa: BLE001
        return False
    return False


@task(name="load-model", retries=2, retry_delay_seconds=10, retry_condition_fn=_retry_downloads)
def load_model() -> str:
    """Loads the whisper model into this worker once, before any media is touched (model file or download; GPU/CPU)."""
    config = settings()
    tr = stages.transcriber(config)
    get_run_logger().info("model %s on %s, batch size %d", config.model, tr.device, tr.batch_size)
    return tr.device


@task(name="transcribe", task_run_name="transcribe {run_key}", cache_key_fn=run_key_cache("transcribe"),
      persist_result=True, retries=1, retry_delay_seconds=10, retry_condition_fn=retry_unless_bad_media)
def transcribe(run_key: str, segmented: dict, wave_size: int = 0) -> dict:
    """Runs whisper over the speech windows, batched with the other media of its wave in this worker
    (GPU when present, else CPU). ``wave_size``: how many media the flow submitted together (0: not known)."""
    out = stages.transcribe(start(), run_key, segmented, wave_size)
    get_run_logger().info("%s: %d segment(s), language %s", run_key, len(out["segments"]), out["language"])
    return out
