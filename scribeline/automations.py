"""Prefect automations (deployments/automations.yaml) and the event they watch for quarantines.

``apply`` creates each automation of the file, or updates the one of that name in place (removing
duplicates of it), so applying twice leaves one of each: `scribeline automations`, also run by
`scribeline deploy`. A ``send-notification`` action goes through the block named in
``SCRIBELINE_NOTIFY_BLOCK`` (``<block type slug>/<block name>``); without one it becomes
``do-nothing`` (the automation still fires and shows in the Events page).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AUTOMATIONS_FILE = ROOT / "deployments" / "automations.yaml"
QUARANTINED_EVENT = "scribeline.media.quarantined"
NOTIFY_BLOCK_ENV = "SCRIBELINE_NOTIFY_BLOCK"


def quarantined_event(bucket: str, key: str, stage: str, error: str, attempts: int, record_key: str | None) -> dict:
    """The keyword arguments of ``prefect.events.emit_event`` for one quarantined object version."""
    return {"event": QUARANTINED_EVENT,
            "resource": {"prefect.resource.id": f"scribeline.object.{bucket}/{key}", "prefect.resource.name": key,
                         "scribeline.bucket": bucket, "scribeline.stage": stage},
            "payload": {"stage": stage, "error": error[:1000], "attempts": attempts, "record": record_key}}


def emit_quarantined(bucket: str, key: str, stage: str, error: str, attempts: int, record_key: str | None) -> None:
    """Tell Prefect's event stream (automations count these); never fails the quarantine."""
    try:
        from prefect.events import emit_event

        emit_event(**quarantined_event(bucket, key, stage, error, attempts, record_key))
    except Exception:  # noqa: BLE001 - the record and the ledger row are what count
        pass


def definitions(path: Path = AUTOMATIONS_FILE, notify_block_id: str | None = None) -> list[dict]:
    """The file's automations as dicts for ``AutomationCore``, their notifications through the block
    ``notify_block_id`` (a UUID) or, without one, ``do-nothing``."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = []
    for automation in data["automations"] if isinstance(data, dict) else data:
        actions = []
        for action in automation.get("actions", []):
            if action.get("type") == "send-notification":
                action = ({**action, "block_document_id": notify_block_id} if notify_block_id
                          else {"type": "do-nothing"})
            actions.append(action)
        out.append({**automation, "actions": actions})
    return out


def _block_id(client, name: str) -> str:
    """A notification block by ``<type slug>/<name>``."""
    slug, _, block = name.partition("/")
    if not block:
        raise ValueError(f"{NOTIFY_BLOCK_ENV}={name!r}: expected <block type slug>/<block name>, e.g. slack-webhook/ops")
    return str(client.read_block_document_by_name(block, slug).id)


def apply(path: Path = AUTOMATIONS_FILE, notify_block: str | None = None) -> dict[str, str]:
    """Create or update each automation of ``path`` by name; returns {name: "created"|"updated"}."""
    from prefect import get_client
    from prefect.events.schemas.automations import AutomationCore

    notify_block = notify_block if notify_block is not None else os.environ.get(NOTIFY_BLOCK_ENV, "")
    done = {}
    with get_client(sync_client=True) as client:
        block_id = _block_id(client, notify_block) if notify_block else None
        for spec in definitions(path, block_id):
            automation = AutomationCore.model_validate(spec)
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:  # created twice by hand (`prefect automation create`): keep one
                    client.delete_automation(extra.id)
                done[automation.name] = "updated"
            else:
                client.create_automation(automation)
                done[automation.name] = "created"
    return done
