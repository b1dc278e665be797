"""Word and character error rates of the machine's transcripts, from text people upload beside the media.

An object ``<key>.ref.txt`` in the incoming bucket is a reference transcript of the media
``<key>``; ``<key>.corrected.txt`` is a human-corrected transcript of it. Neither is media
(``storage.list_waiting`` leaves them out). Once the media is loaded, each sidecar is scored
against the machine's transcript (the ``transcripts`` view: redacted text) of every media row
loaded from that key's latest content (one per model/configuration), a row per score goes to
``transcript_scores``, and the sidecar moves to the processed bucket under
``sidecars/<sha256 prefix>/<key>``: scored once. A sidecar whose media is not loaded yet
waits in the incoming bucket.

The sidecar's text never reaches the warehouse (it holds only redacted data): only counts,
rates and the content's hash. Both texts are normalised the same way before scoring: lower
case, apostrophes dropped, every other character that is not a letter or a digit a space.
A redacted word (``<PERSON>``) counts as the word ``person``: a redaction the reference does
not have is an edit, as the analyst reading the transcript sees it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata

import jiwer

from scribeline import storage, warehouse
from scribeline.config import Settings
from scribeline.storage import ObjectRef

_NOT_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> list[str]:
    """The words scored: lower case, no apostrophes, anything but letters and digits a separator."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _NOT_WORD.sub(" ", text.replace("'", "").replace("\u2019", "")).split()


def score(reference: str, hypothesis: str) -> dict:
    """Edits from ``hypothesis`` (the machine's) to ``reference`` (the person's), in words and characters."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:  # nothing to measure against: every machine word is an insertion, no rate
        chars = len(" ".join(hyp))
        return dict(wer=None, cer=None, word_edits=len(hyp), substitutions=0, deletions=0, insertions=len(hyp),
                    reference_words=0, hypothesis_words=len(hyp), char_edits=chars, reference_chars=0)
    words = jiwer.process_words(" ".join(ref), " ".join(hyp))
    chars = jiwer.process_characters(" ".join(ref), " ".join(hyp))
    word_edits = words.substitutions + words.deletions + words.insertions
    char_edits = chars.substitutions + chars.deletions + chars.insertions
    reference_chars = chars.substitutions + chars.deletions + chars.hits
    return dict(wer=word_edits / len(ref), cer=char_edits / reference_chars if reference_chars else None,
                word_edits=word_edits, substitutions=words.substitutions, deletions=words.deletions,
                insertions=words.insertions, reference_words=len(ref), hypothesis_words=len(hyp),
                char_edits=char_edits, reference_chars=reference_chars)


def _loaded(settings: Settings, media_keys: list[str]) -> dict[str, list[dict]]:
    """For each key, the media rows (with their redacted text) loaded from its latest content.

    A key's media are those loaded under it (``media.source_key``) and those its objects were
    found to be (the ledger: the same content first loaded under another name); of these, the
    ones with the content the key last had (its latest ledger row, else the latest load), so a
    key uploaded again with other content is scored against the new recording only."""
    lake = settings.warehouse
    if not media_keys or not lake.exists():
        return {}
    found = warehouse.query(lake, """
        WITH wanted AS (SELECT unnest(?::VARCHAR[]) AS key),
        named AS (
            SELECT w.key, m.media_id, m.processed_at AS seen
            FROM wanted w JOIN media m ON m.source_bucket = ? AND m.source_key = w.key
            UNION ALL
            SELECT w.key, l.media_id, l.finished AS seen
            FROM wanted w JOIN ledger l ON l.bucket = ? AND l.key = w.key
            WHERE l.state IN ('processed', 'needs_review') AND l.media_id IS NOT NULL)
        SELECT n.key, m.media_id, m.sha256, m.model, m.pipeline_version, max(n.seen) AS seen, any_value(t.text) AS text
        FROM named n JOIN media m USING (media_id) JOIN transcripts t USING (media_id)
        GROUP BY n.key, m.media_id, m.sha256, m.model, m.pipeline_version
        ORDER BY n.key, seen, m.media_id""", [media_keys, settings.bucket_incoming, settings.bucket_incoming])
    out: dict[str, list[dict]] = {}
    for key, rows in found.groupby("key", sort=False):
        latest = rows.iloc[-1]["sha256"]
        out[key] = rows[rows["sha256"] == latest].to_dict("records")
    return out


def score_sidecars(settings: Settings, log=None) -> list[dict]:
    """Score every sidecar in the incoming bucket whose media is loaded; returns one outcome per sidecar:
    ``{"key", "state": "scored" | "waiting" | "failed", ...}``. A sidecar that cannot be scored (not
    UTF-8, too large, a store error) is left where it is and reported, the others go on."""
    sidecars = storage.list_sidecars(settings)
    targets = _loaded(settings, sorted({storage.sidecar_media_key(r.key) for r in sidecars}))
    outcomes = []
    for ref in sidecars:
        media = targets.get(storage.sidecar_media_key(ref.key))
        if not media:
            outcomes.append({"key": ref.key, "state": "waiting", "note": "its media is not loaded yet"})
            continue
        try:
            outcomes.append(_score_one(settings, ref, media))
        except Exception as exc:  # noqa: BLE001 - this sidecar waits; the others are scored
            outcomes.append({"key": ref.key, "state": "failed", "note": f"{type(exc).__name__}: {exc}"})
            if log:
                log.warning("sidecar %s not scored: %s: %s", ref.key, type(exc).__name__, exc)
    return outcomes


def _score_one(settings: Settings, ref: ObjectRef, media: list[dict]) -> dict:
    data = storage.get_bytes(settings, ref)
    text = data.decode("utf-8-sig")  # not UTF-8: UnicodeDecodeError, reported, left in place
    sha256 = hashlib.sha256(data).hexdigest()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    kind = storage.sidecar_kind(ref.key)
    rows = [{"media_id": m["media_id"], "source_key": storage.sidecar_media_key(ref.key), "sidecar_key": ref.key,
             "sidecar_sha256": sha256, "kind": kind, "model": m["model"], "pipeline_version": m["pipeline_version"],
             **score(text, m["text"]), "scored_at": now} for m in media]
    added = warehouse.record_scores(settings.warehouse, rows)
    storage.move(settings, ref, settings.bucket_processed, storage.under(f"sidecars/{sha256[:16]}", ref.key))
    return {"key": ref.key, "state": "scored", "kind": kind, "media_ids": [m["media_id"] for m in media],
            "added": added, "wer": [r["wer"] for r in rows]}
