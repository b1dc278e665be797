"""What a run shows in Prefect's UI (scribeline.artifacts) and the automations (scribeline.automations),
on real components: SeaweedFS, a Prefect API, ffmpeg, whisper, Presidio, Great Expectations.

This module's objects go to buckets and a warehouse of its own, so the other modules' runs never see them.
(The UI itself, in headless Chromium, is checked in tests/test_deployment.py: it needs `scribeline up`'s
server, which serves the UI; the test API here serves none.)"""

import datetime as dt
import os
import time

import pytest

from scribeline import artifacts, automations, stages, storage
from scribeline.config import Settings
from tests.conftest import ffmpeg, speak

ISOLATED = {"SCRIBELINE_BUCKET_INCOMING": "ui-incoming", "SCRIBELINE_BUCKET_PROCESSED": "ui-processed",
            "SCRIBELINE_BUCKET_QUARANTINE": "ui-quarantine"}
PII_CALL = "Hello, my name is John Smith and my phone number is 212 555 0199."


@pytest.fixture(scope="module")
def ui_settings(s3, tmp_path_factory):
    env = {**ISOLATED, "SCRIBELINE_WAREHOUSE_PATH": str(tmp_path_factory.mktemp("ui-lake") / "lake.sqlite")}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    settings = Settings.from_env()
    storage.ensure_buckets(settings)
    yield settings
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def stage_results(ui_settings, transcriber, media_dir, tmp_path_factory):
    """Every stage's result for two real recordings, through the stages' plain functions (no Prefect)."""
    settings, tmp = ui_settings, tmp_path_factory.mktemp("ui-stages")
    out = {}
    for path, key in ((media_dir / "en_jfk.flac", "unit/en_jfk.flac"),
                      (speak(PII_CALL, tmp / "support call.wav"), "unit/support call.wav")):
        ref = storage.upload_file(settings, path, key=key)
        r = {"ingest": stages.ingest(settings, ref)}
        storage.delete(settings, ref.bucket, ref.key)  # not left for the flow run below
        run_key = r["ingest"]["run_key"]
        r["normalize"] = stages.normalize(settings, r["ingest"])
        r["segment"] = stages.segment(settings, run_key, r["normalize"])
        r["transcribe"] = stages.transcribe(settings, run_key, r["segment"])
        r["validate"] = stages.validate(settings, r["transcribe"], r["segment"]["duration_s"])
        r["redact"] = stages.redact(settings, r["transcribe"])
        out[key] = r
    return out


# ------------------------------------------------------------- the builders, on real transcripts
def test_the_report_states_what_an_operator_looks_for(stage_results):
    r = stage_results["unit/en_jfk.flac"]
    words = sum(len(s["words"]) for s in r["redact"]["transcript"]["segments"])
    ended = {"ingest": 0.4, "normalize": 1.0, "segment": 1.5, "transcribe": 4.0, "validate": 4.5, "redact": 5.5,
             "load": 6.0, "archive": 6.2}
    md = artifacts.media_markdown({"key": "unit/en_jfk.flac", "state": "processed", "seconds": 6.3}, r, ended)
    assert md.startswith("# unit/en\\_jfk.flac")  # the key as it is (escaped for markdown)
    assert "| Outcome | **processed** |" in md
    assert "| Duration | 11.0 s |" in md and "| Language | en (p = " in md
    assert f"| Words | {words} |" in md and words >= 20
    assert "| Codec | flac, 44100 Hz, 2 ch |" in md
    assert "## PII redacted" in md and ("None found." in md) == (not r["redact"]["entities"])
    assert "- Quality checks: **all passed** (quality\\_ok = true)" in md and "- needs\\_review: **false**" in md
    # When each stage ended and how long after what it waited for: redact after transcribe, load after both.
    assert "| transcribe | 4.00 | 2.50 |" in md and "| redact | 5.50 | 1.50 |" in md and "| load | 6.00 | 0.50 |" in md


def test_the_report_counts_pii_by_type(stage_results):
    r = stage_results["unit/support call.wav"]
    md = artifacts.media_markdown({"key": "unit/support call.wav", "state": "processed"}, r)
    types = {e["entity_type"] for e in r["redact"]["entities"]}
    assert {"PERSON", "PHONE_NUMBER"} <= types
    for t in types:
        n = sum(e["entity_type"] == t for e in r["redact"]["entities"])
        assert f"| {t.replace('_', chr(92) + '_')} | {n} |" in md
    assert "Smith" not in md and "555" not in md  # the report holds no PII itself


def test_the_report_shows_a_failing_verdict(stage_results):
    """A transcript the guards flagged and a failing critical check: needs review, with why."""
    r = {**stage_results["unit/en_jfk.flac"]}
    transcript = {**r["redact"]["transcript"], "flags": [{"name": "repeated_text", "reason": "the same phrase 9 times",
                                                          "window_index": 0, "start": 0.0, "end": 11.0}]}
    checks = [dict(c) for c in r["validate"]["checks"]]
    checks[0].update(success=False, unexpected_count=3)
    failing = f"{checks[0]['table']}.{checks[0]['column']}:{checks[0]['expectation']}"
    r.update(redact={**r["redact"], "transcript": transcript},
             validate={"checks": checks, "quality_ok": False, "review": [failing]})
    md = artifacts.media_markdown({"key": "k.wav", "state": "processed"}, r)
    assert "| Outcome | **needs review** |" in md
    assert f"- Quality checks: **1 of {len(checks)} failed** (quality\\_ok = false)" in md
    assert "- needs\\_review: **true**; review\\_reasons: repeated\\_text, " in md
    assert f"{checks[0]['unexpected_count']} of {checks[0]['element_count']} |" in md
    assert "| repeated\\_text | 0.0–11.0 s | the same phrase 9 times |" in md
    assert artifacts.review_reasons(r) == ["repeated_text", failing]


def test_keys_and_tags(stage_results):
    key = artifacts.artifact_key("calls/2024 Q1/Support Call #7.WAV")
    assert key.startswith("media-calls-2024-q1-support-call-7-wav-") and key.replace("-", "").isalnum() and key == key.lower()
    assert artifacts.artifact_key("a/B.wav") != artifacts.artifact_key("a/b.wav")
    assert artifacts.source_tags("scribeline-incoming", "calls/2024/x.FLAC") == ["source:scribeline-incoming/calls", "ext:flac"]
    assert artifacts.source_tags("scribeline-incoming", "x") == ["source:scribeline-incoming"]
    r = stage_results["unit/en_jfk.flac"]
    assert artifacts.media_tags({"ingest": r["ingest"]}) == ([f"class:{r['ingest']['data_class']}"]
                                                             if r["ingest"].get("data_class") else [])
    assert {"codec:flac", "lang:en"} <= set(artifacts.media_tags(r))


def test_progress_follows_the_stages(stage_results):
    r = stage_results["unit/en_jfk.flac"]
    assert not artifacts.is_long(r)  # 11 s: no progress artifact
    assert artifacts.is_long({"segment": {**r["segment"], "duration_s": 301.0}})
    done = [artifacts.progress_percent({s: r.get(s, True) for s in artifacts.STAGES[:n]}) for n in range(1, 9)]
    assert done == sorted(done) and done[-1] == 100.0 and done[0] == 12.5


def test_the_sweep_table_names_each_outcome():
    ref = storage.ObjectRef("scribeline-incoming", "calls/a.wav", "e", 2_500_000)
    rows = artifacts.sweep_rows([(ref, "started", 1), (ref, "in_flight", 2), (ref, "waiting", None),
                                 (ref, "dead_lettered", None)])
    assert [r["outcome"] for r in rows] == ["started", "already running", "waiting (no room this sweep)",
                                            "quarantined (its runs ended without finishing it)"]
    assert rows[0] == {"object": "s3://scribeline-incoming/calls/a.wav", "size_mb": 2.5, "outcome": "started", "attempt": 1}


# ----------------------------------------------------------------- a flow run on the test API
@pytest.fixture(scope="module")
def ui_run(ui_settings, prefect_api, media_dir, tmp_path_factory):
    """`scribeline run`'s flow over a short file, a long one (5 min of silence, then speech) and a text file."""
    from flows.process_incoming import process_incoming

    settings, tmp = ui_settings, tmp_path_factory.mktemp("ui-run")
    long = tmp / "long meeting.wav"
    ffmpeg("-t", "300", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-i", str(media_dir / "en_jfk.flac"),
           "-filter_complex", "[1:a]aresample=16000,aformat=channel_layouts=mono[s];[0:a][s]concat=n=2:v=0:a=1",
           str(long))
    bad = tmp / "not audio.mp3"
    bad.write_text("meeting notes, not audio\n" * 3)
    for path in (media_dir / "en_jfk.flac", long, bad):
        storage.upload_file(settings, path, key=f"ui/{path.name}")
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    state = process_incoming(return_state=True)
    return settings, state.state_details.flow_run_id, {o["key"]: o for o in state.result()}, since


def _artifacts(flow_run_id):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))}


def test_each_media_has_its_report_on_its_run(ui_run):
    _, run_id, outcomes, _ = ui_run
    found = _artifacts(run_id)
    jfk, bad = found[artifacts.artifact_key("ui/en_jfk.flac")], found[artifacts.artifact_key("ui/not audio.mp3")]
    o = outcomes["ui/en_jfk.flac"]
    assert jfk.type == "markdown" and jfk.description == f"ui/en_jfk.flac: processed, {o['duration_s']} s, en, {o['words']} words"
    assert f"| Words | {o['words']} |" in jfk.data and "| Language | en" in jfk.data and "| Duration | 11.0 s |" in jfk.data
    assert "## Stage timings" in jfk.data and "| transcribe |" in jfk.data and "| archive |" in jfk.data
    assert "**quarantined**" in bad.data and "| Stage | normalize |" in bad.data and "not a media file" in bad.data
    assert bad.description == "ui/not audio.mp3: quarantined at normalize"


def test_a_long_media_has_a_progress_artifact_that_ends_full(ui_run):
    _, run_id, outcomes, _ = ui_run
    assert outcomes["ui/long meeting.wav"]["state"] == "processed" and outcomes["ui/long meeting.wav"]["duration_s"] > 300
    progress = {k: a for k, a in _artifacts(run_id).items() if a.type == "progress"}
    assert list(progress) == [artifacts.artifact_key("ui/long meeting.wav", "progress")]  # the short ones have none
    (p,) = progress.values()
    assert float(p.data) == 100.0 and p.description == "ui/long meeting.wav: archive done (8 of 8 stages)"


def test_the_run_is_tagged_with_what_the_stages_found(ui_run):
    from prefect import get_client

    _, run_id, _, _ = ui_run
    with get_client(sync_client=True) as client:
        tags = set(client.read_flow_run(run_id).tags)
    assert {"codec:flac", "codec:pcm_s16le", "lang:en"} <= tags


def test_a_quarantine_is_an_event_in_prefect(ui_run):
    from prefect import get_client

    _, _, _, since = ui_run
    body = {"filter": {"event": {"name": [automations.QUARANTINED_EVENT]},
                       "occurred": {"since": since.isoformat(), "until": (since + dt.timedelta(hours=1)).isoformat()}},
            "limit": 50}
    deadline, events = time.monotonic() + 120, []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:  # the server writes events in batches
            events = [e for e in client.request("POST", "/events/filter", json=body).json()["events"]
                      if e["resource"]["prefect.resource.name"] == "ui/not audio.mp3"]
            if events:
                break
            time.sleep(1)
    assert len(events) == 1, events
    e = events[0]
    assert e["resource"]["prefect.resource.id"] == f"scribeline.object.{ISOLATED['SCRIBELINE_BUCKET_INCOMING']}/ui/not audio.mp3"
    assert e["payload"]["stage"] == "normalize" and "not a media file" in e["payload"]["error"]
    # Emitted from the quarantine task: related to its flow run, which the UI links.
    assert any(r["prefect.resource.role"] == "flow-run" for r in e["related"])


def test_applying_the_automations_twice_leaves_one_of_each(prefect_api):
    from prefect import get_client

    names = [a["name"] for a in automations.definitions()]
    assert automations.apply() == {n: "created" for n in names}  # the session's API is new
    assert automations.apply() == {n: "updated" for n in names}
    with get_client(sync_client=True) as client:
        for name in names:
            (found,) = client.read_automations_by_name(name)
            assert found.enabled and found.actions[0].type == "do-nothing"  # no notification block configured
        burst = client.read_automations_by_name("scribeline-quarantine-burst")[0].trigger
        assert burst.expect == {automations.QUARANTINED_EVENT} and burst.threshold == 5
