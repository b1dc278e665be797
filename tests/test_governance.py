"""Governance on real components: data classes by source, regions, operators, redacted audio, the kept
unredacted transcript and the retention that deletes them (SeaweedFS, Prefect, ffmpeg, whisper, DuckLake)."""

import datetime as dt
import json
import os
import stat
import subprocess
from dataclasses import replace

import numpy as np
import pytest

from scribeline import audio_redaction, retention, storage, warehouse
from scribeline.config import Settings
from scribeline.governance import Governance, GovernanceError
from tests.conftest import own_buckets, speak

SAID = "My name is John Smith and my phone number is 212 555 0199. Thank you very much for calling."


# --------------------------------------------------------------- settings
def test_the_longest_matching_source_prefix_gives_the_class():
    s = Settings(data_class_sources="in/hr/=sensitive,in/=public,in/hr/interviews/=internal")
    g = s.governance
    assert g.data_class("in", "hr/a.wav") == "sensitive"
    assert g.data_class("in", "hr/interviews/b.wav") == "internal"
    assert g.data_class("in", "press/c.wav") == "public"
    assert g.data_class("other", "hr/a.wav") == "internal"  # the default class


def test_a_class_adds_entities_and_only_shortens_retention():
    s = Settings(retention_days="original=100,unredacted=7",
                 data_class_retention_days="sensitive=original:30|unredacted:14,public=original:500")
    g = s.governance
    assert g.retention("sensitive", "original") == 30 and g.retention("public", "original") == 100
    assert g.retention("sensitive", "unredacted") == 7  # 14 would lengthen the global age
    assert g.retention("internal", "normalized") is None  # no age: kept
    assert "US_PASSPORT" in g.entities("sensitive", ("PERSON",)) and g.entities("public", ("PERSON",)) == ("PERSON",)


@pytest.mark.parametrize("field, value, says", [
    ("data_class_sources", "in/hr/=secret", "unknown data class"),
    ("data_class_sources", "in/hr/", "NAME=VALUE"),
    ("retention_days", "forever=3", "unknown kind"),
    ("retention_days", "original=soon", "number of days"),
])
def test_a_governance_setting_that_cannot_be_read_says_which(field, value, says):
    with pytest.raises(GovernanceError, match=says):
        Governance.of(replace(Settings(), **{field: value}))


def test_the_same_bytes_in_another_class_are_another_media():
    s = Settings(data_class_sources="in/hr/=sensitive")
    sha = "ab" * 32
    assert s.run_key(sha, "internal") == s.run_key(sha)  # the default class keeps the keys made before classes
    assert s.run_key(sha, "sensitive") != s.run_key(sha)
    assert Settings(pii_operator="mask").run_key(sha) != s.run_key(sha)


def test_the_hash_salt_is_generated_once_private_to_its_owner(tmp_path):
    s = Settings(data_dir=tmp_path)
    salt = s.hash_salt()
    assert len(salt) == 64 and s.hash_salt() == salt
    assert stat.S_IMODE((tmp_path / "pii-hash-salt").stat().st_mode) == 0o600
    assert Settings(data_dir=tmp_path, pii_hash_salt="from-a-secret-store").hash_salt() == "from-a-secret-store"


def test_audio_spans_are_padded_clipped_and_merged():
    cut = audio_redaction.spans([{"start_s": 1.0, "end_s": 2.0}, {"start_s": 2.3, "end_s": 2.5},
                                 {"start_s": 9.9, "end_s": 10.2}], 0.25, 10.0)
    assert [(c.start_s, c.end_s) for c in cut] == [(0.75, 2.75), (9.65, 10.0)]


# ------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def governed(s3, prefect_api, media_dir, tmp_path_factory):
    """`scribeline run`'s flow with classes, a region, hashed phone numbers, beeped audio and kept transcripts,
    on buckets and a warehouse of its own."""
    from flows.process_incoming import process_incoming

    tmp = tmp_path_factory.mktemp("governed")
    with own_buckets("gov", tmp, data_class_sources="gov-incoming/hr/=sensitive,gov-incoming/press/=public",
                     region="eu-west-1", source_regions="gov-incoming/us/=us-east-1", audio_redaction="beep",
                     keep_unredacted="true", pii_operators="PHONE_NUMBER=hash", pii_hash_salt="governance-test-salt") as settings:
        call = speak(SAID, tmp / "call.wav")
        for key in ("hr/call.wav", "press/call.wav", "us/call.wav"):
            storage.upload_file(settings, call, key=key)
        storage.upload_file(settings, media_dir / "en_jfk.flac", key="press/en_jfk.flac")
        outcomes = {o["key"]: o for o in process_incoming()}
        yield settings, outcomes, tmp


def _media(settings, key):
    rows = warehouse.query(settings.warehouse, "SELECT * FROM media WHERE source_key = ?", [key])
    assert len(rows) == 1, key
    return rows.iloc[0]


def test_an_object_from_another_regions_source_is_quarantined_unread(governed):
    settings, outcomes, _ = governed
    out = outcomes["us/call.wav"]
    assert out["state"] == "quarantined" and out["stage"] == "region"
    assert "us-east-1" in out["reason"] and "eu-west-1" in out["reason"]
    ledger = warehouse.query(settings.warehouse, "SELECT * FROM ledger WHERE key = 'us/call.wav'").iloc[0]
    assert ledger["state"] == "quarantined" and ledger["sha256"] is None  # never read
    assert warehouse.query(settings.warehouse, "SELECT count(*) n FROM media WHERE source_key = 'us/call.wav'").n[0] == 0


def test_each_media_carries_its_class_and_region_and_classes_do_not_share_a_media(governed):
    settings, outcomes, _ = governed
    hr, press = _media(settings, "hr/call.wav"), _media(settings, "press/call.wav")
    assert (hr["data_class"], press["data_class"]) == ("sensitive", "public")
    assert hr["region"] == press["region"] == "eu-west-1"
    assert hr["sha256"] == press["sha256"] and hr["media_id"] != press["media_id"]
    assert _media(settings, "press/en_jfk.flac")["data_class"] == "public"


def test_a_hashed_phone_number_is_countable_across_media_and_never_readable(governed):
    settings, _, _ = governed
    phones = warehouse.query(settings.warehouse, "SELECT p.*, m.source_key FROM pii_entities p JOIN media m USING (media_id) "
                                                 "WHERE entity_type = 'PHONE_NUMBER'")
    assert set(phones["source_key"]) == {"hr/call.wav", "press/call.wav"}
    assert set(phones["operator"]) == {"hash"} and phones["value_hash"].nunique() == 1  # the same number twice
    tag = f"<PHONE_NUMBER:{phones['value_hash'].iloc[0]}>"
    text = warehouse.query(settings.warehouse, "SELECT text FROM transcripts WHERE source_object LIKE '%hr/call.wav'").text[0]
    assert tag in text and "Smith" not in text
    digits = "".join(ch for ch in text if ch.isdigit())
    assert "0199" not in digits and "555" not in digits
    names = warehouse.query(settings.warehouse, "SELECT DISTINCT operator FROM pii_entities WHERE entity_type = 'PERSON'")
    assert list(names.operator) == ["replace"]


def _decode(settings, uri: str, tmp) -> np.ndarray:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    path = storage.get_file(settings, storage.ObjectRef(bucket, key), tmp / key.replace("/", "_"))
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", "16000", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.int16).astype(np.int32)


def test_the_redacted_audio_beeps_every_pii_span_and_keeps_the_rest(governed, transcriber):
    settings, _, tmp = governed
    media = _media(settings, "hr/call.wav")
    assert media["redacted_audio_object"].startswith(f"s3://{settings.bucket_redacted_audio}/sensitive/")
    redacted = _decode(settings, media["redacted_audio_object"], tmp)
    normalized = np.frombuffer(storage.client(settings).get_object(
        settings.bucket_normalized, f"{media['media_id']}/audio.s16").read(), dtype=np.int16).astype(np.int32)
    assert len(redacted) == len(normalized)
    entities = warehouse.query(settings.warehouse, "SELECT start_s, end_s FROM pii_entities WHERE media_id = ?",
                               [media["media_id"]]).to_dict("records")
    cut = audio_redaction.spans(entities, settings.audio_redaction_padding_s, len(normalized) / 16000)
    assert cut
    inside = np.zeros(len(normalized), dtype=bool)
    for span in cut:
        a, b = int(span.start_s * 16000), int(np.ceil(span.end_s * 16000))
        inside[a:b] = True
        t = np.arange(a, b) / 16000
        tone = np.round(audio_redaction.BEEP_LEVEL * np.sin(2 * np.pi * audio_redaction.BEEP_HZ * t) * 32767)
        assert np.abs(redacted[a:b] - tone).max() <= 2  # nothing of the speech under the beep
    assert np.abs(redacted[~inside] - normalized[~inside]).max() <= 1  # the rest, sample for sample
    # Heard again by the model: the name and the number are gone, the rest of the sentence is there.
    from scribeline import media as media_io, segmentation, stages

    track = tmp / "redacted.s16"
    redacted.astype(np.int16).tofile(track)
    audio = media_io.open_audio(track)
    job = stages.audio_job(settings, audio, 0.0, segmentation.segment(audio, 0.0), 16000)
    heard = " ".join(s.text for s in transcriber.transcribe([job])[0].segments)
    assert "Smith" not in heard and "0199" not in heard.replace(" ", "").replace("-", "")
    assert "calling" in heard.lower()


def test_the_unredacted_transcript_is_kept_only_in_the_restricted_bucket(governed):
    settings, _, _ = governed
    media = _media(settings, "hr/call.wav")
    uri = media["unredacted_object"]
    assert uri.startswith(f"s3://{settings.bucket_restricted}/unredacted/sensitive/")
    kept = storage.get_json(settings, settings.bucket_restricted, uri.split("/", 3)[3])
    assert kept["media_id"] == media["media_id"] and "Smith" in json.dumps(kept["transcript"])


def test_retention_deletes_by_class_and_age_and_records_what_it_deleted(governed, tmp_path, monkeypatch):
    settings, _, _ = governed
    old_result = tmp_path / "results" / "0123abcd"
    old_result.parent.mkdir()
    old_result.write_text("a persisted stage result")
    os.utime(old_result, (0, 0))  # 1970: past any age
    monkeypatch.setenv("PREFECT_LOCAL_STORAGE_PATH", str(old_result.parent))
    now = dt.datetime.now(dt.timezone.utc)
    assert retention.due(settings, now) == [d for d in retention.due(settings, now) if d.kind == "stage_results"]
    # 40 days on: the sensitive original (30 days) goes, the public ones (365) stay; every unredacted
    # transcript (7 days; sensitive 1) and the normalized audio (30; sensitive 7) go.
    later = now + dt.timedelta(days=40)
    planned = retention.due(settings, later)
    deleted = retention.apply(settings, later)
    assert [(d.kind, d.key) for d in deleted] == [(d.kind, d.key) for d in planned]
    kinds = {(d.kind, d.data_class) for d in deleted}
    assert ("original", "sensitive") in kinds and ("original", "public") not in kinds
    assert {("unredacted", "sensitive"), ("unredacted", "public"), ("normalized", "sensitive"),
            ("normalized", "public"), ("stage_results", "*")} <= kinds
    assert ("redacted_audio", "sensitive") not in kinds  # 90 days
    assert not old_result.exists() and storage.list_keys(settings, settings.bucket_restricted) == []
    processed = storage.list_keys(settings, settings.bucket_processed)
    assert processed and all("hr/" not in k for k in processed) and any(k.endswith("press/call.wav") for k in processed)
    log = warehouse.query(settings.warehouse, "SELECT * FROM retention_log")
    assert len(log) == len(deleted) and set(log.kind) == {d.kind for d in deleted}
    # The warehouse's redacted rows are not retention's business: all still there.
    assert warehouse.query(settings.warehouse, "SELECT count(*) n FROM media").n[0] == 3
    assert retention.due(settings, later) == []  # nothing twice
