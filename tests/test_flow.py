"""The whole flow on real components: SeaweedFS over HTTP, a Prefect API, ffmpeg, whisper, DuckDB."""

import pytest

from scribeline import stages, storage, warehouse
from tests.conftest import manifest, speak, wer


@pytest.fixture(scope="module")
def first_run(s3, prefect_api, media_dir, tmp_path_factory):
    from flows.process_incoming import process_incoming

    settings = s3
    tmp = tmp_path_factory.mktemp("flow")
    bad = tmp / "not_audio.mp3"
    bad.write_text("this is text, not audio\n")
    pii = speak("Hello, my name is John Smith and my phone number is 212 555 0199.", tmp / "support call.wav")
    for path in (media_dir / "en_jfk.flac", bad, pii):
        storage.upload_file(settings, path, key=f"calls/{path.name}")
    outcomes = process_incoming()
    return settings, {o["key"]: o for o in outcomes}


def test_good_media_is_processed_and_bad_media_quarantined(first_run):
    settings, outcomes = first_run
    assert outcomes["calls/en_jfk.flac"]["state"] == "processed"
    assert outcomes["calls/support call.wav"]["state"] == "processed"
    bad = outcomes["calls/not_audio.mp3"]
    assert bad["state"] == "quarantined" and bad["stage"] == "normalize"
    assert "not a media file" in bad["reason"]


def test_jfk_lands_in_the_warehouse(first_run):
    settings, outcomes = first_run
    df = warehouse.query(settings.warehouse, "select * from transcripts where source_object like '%en_jfk.flac'")
    assert len(df) == 1
    assert wer(manifest()["en_jfk.flac"]["reference_text"], df.iloc[0]["text"]) <= 0.10
    media = warehouse.query(settings.warehouse, "select * from media where source_key = 'calls/en_jfk.flac'").iloc[0]
    assert (media["codec"], media["sample_rate"], media["channels"]) == ("flac", 44100, 2)
    assert media["duration_s"] == pytest.approx(11.0, abs=0.01)
    assert media["word_count"] >= 20 and media["language"] == "en"
    checks = warehouse.query(settings.warehouse, "select * from quality_checks where media_id = ?", [media["media_id"]])
    assert len(checks) >= 10 and checks["success"].all()


def test_no_unredacted_pii_anywhere_in_the_warehouse(first_run):
    settings, _ = first_run
    con = warehouse.connect(settings.warehouse, read_only=True)
    try:
        text_columns = con.execute(
            "select table_name, column_name from information_schema.columns "
            "where data_type = 'VARCHAR' and table_schema = 'main'").fetchall()
        for table, column in text_columns:
            for secret in ("Smith", "555", "0199"):
                hits = con.execute(f'select count(*) from "{table}" where "{column}" ilike ?', [f"%{secret}%"]).fetchone()[0]
                assert hits == 0, (table, column, secret)
        pii = con.execute("select entity_type, start_s, end_s, score from pii_entities").fetchdf()
    finally:
        con.close()
    assert {"PERSON", "PHONE_NUMBER"} <= set(pii["entity_type"])
    assert (pii["end_s"] >= pii["start_s"]).all() and (pii["start_s"] > 0.5).all()


def test_quarantine_record_explains_and_media_is_kept(first_run):
    settings, _ = first_run
    records = storage.list_keys(settings, settings.bucket_quarantine, "records/")
    assert len(records) == 1  # named by the content's hash: the same bytes again add no record
    record = storage.get_json(settings, settings.bucket_quarantine, records[0])
    assert records[0] == f"records/{record['sha256'][:16]}.json"
    assert record["stage"] == "normalize" and record["attempts"] == 1
    assert "not a media file" in record["error"]
    assert record["source"] == f"s3://{settings.bucket_incoming}/calls/not_audio.mp3"
    kept = storage.list_keys(settings, settings.bucket_quarantine, "media/")
    assert len(kept) == 1 and kept[0].endswith("calls/not_audio.mp3")
    assert warehouse.query(settings.warehouse, "select stage from quarantine")["stage"].tolist() == ["normalize"]
    ledger = warehouse.query(settings.warehouse, "select key, state, stage, quarantine_key from ledger where state = 'quarantined'")
    assert ledger.to_dict("records") == [{"key": "calls/not_audio.mp3", "state": "quarantined", "stage": "normalize",
                                          "quarantine_key": records[0]}]


def test_every_object_has_one_terminal_state_in_the_ledger(first_run):
    settings, _ = first_run
    ledger = warehouse.query(settings.warehouse, "select key, state, media_id, flow_run_id from ledger order by key")
    assert ledger["key"].tolist() == ["calls/en_jfk.flac", "calls/not_audio.mp3", "calls/support call.wav"]
    assert set(ledger["state"]) <= {"processed", "needs_review", "quarantined"}
    assert ledger["flow_run_id"].notna().all()
    media = set(warehouse.query(settings.warehouse, "select media_id from media")["media_id"])
    assert set(ledger.loc[ledger["state"] != "quarantined", "media_id"]) == media


def test_incoming_is_emptied_only_into_processed_or_quarantine(first_run):
    settings, _ = first_run
    assert storage.list_waiting(settings) == []
    processed = storage.list_keys(settings, settings.bucket_processed)
    assert sorted(k.split("/", 1)[1] for k in processed) == ["calls/en_jfk.flac", "calls/support call.wav"]


def test_running_again_on_the_same_media_adds_no_rows(first_run, media_dir):
    from flows.process_incoming import process_incoming

    settings, _ = first_run
    before = warehouse.row_counts(settings.warehouse)
    storage.upload_file(settings, media_dir / "en_jfk.flac", key="again/en_jfk.flac")
    outcomes = process_incoming()
    assert [o["state"] for o in outcomes] == ["processed"]
    assert "nothing added" in outcomes[0]["note"]
    after = warehouse.row_counts(settings.warehouse)
    assert after == {**before, "ledger": before["ledger"] + 1}  # the second name is in the ledger, once
    names = warehouse.query(settings.warehouse, "select key from ledger where media_id = "
                                                "(select media_id from ledger where key = 'calls/en_jfk.flac') order by key")
    assert names["key"].tolist() == ["again/en_jfk.flac", "calls/en_jfk.flac"]


def test_a_transient_load_failure_is_retried(first_run, media_dir, monkeypatch):
    from flows.process_incoming import process_incoming

    settings, _ = first_run
    real_load, calls = stages.load, []

    def flaky_load(*args, **kwargs):  # the only mock: a fault the real store cannot produce on demand
        calls.append(1)
        if len(calls) == 1:
            raise OSError("simulated lost connection to the warehouse volume")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(stages, "load", flaky_load)
    storage.upload_file(settings, media_dir / "en_timit_ldc93s1.wav", key="retry/en_timit_ldc93s1.wav")
    outcomes = process_incoming()
    assert [o["state"] for o in outcomes] == ["processed"] and len(calls) == 2
    assert warehouse.query(settings.warehouse, "select count(*) n from media where source_key like 'retry/%'")["n"][0] == 1


def test_the_same_bad_bytes_again_add_no_quarantine_record(first_run, tmp_path):
    from flows.process_incoming import process_incoming

    settings, _ = first_run
    records = storage.list_keys(settings, settings.bucket_quarantine, "records/")
    bad = tmp_path / "not_audio.mp3"
    storage.get_file(settings, storage.ObjectRef(settings.bucket_quarantine,
                                                 storage.list_keys(settings, settings.bucket_quarantine, "media/")[0]), bad)
    storage.upload_file(settings, bad, key="calls/not_audio.mp3")  # the same name and bytes: a new upload
    storage.upload_file(settings, bad, key="elsewhere/renamed.wav")  # the same bytes under another name
    outcomes = process_incoming()
    assert sorted((o["key"], o["state"]) for o in outcomes) == [
        ("calls/not_audio.mp3", "finished"), ("elsewhere/renamed.wav", "quarantined")]
    assert storage.list_keys(settings, settings.bucket_quarantine, "records/") == records
    assert warehouse.query(settings.warehouse, "select count(*) n from quarantine")["n"][0] == 1
    ledger = warehouse.query(settings.warehouse, "select key from ledger where state = 'quarantined' order by key")
    assert ledger["key"].tolist() == ["calls/not_audio.mp3", "elsewhere/renamed.wav"]
    assert storage.list_waiting(settings) == []


def test_a_stage_past_its_timeout_fails_and_no_thread_timeout_warning_is_logged(prefect_api):
    # Stage tasks run in the flow's threads with a timeout from their media. Prefect cannot interrupt
    # a blocking call there, but the task still ends TimedOut when it returns; the warning Prefect
    # logs about that for every task run (eight lines each, 208 for 26 media) is dropped.
    import logging
    import time

    from prefect import flow, task
    from prefect.task_runners import ThreadPoolTaskRunner

    import tasks.common  # noqa: F401 - installs the filter, as every stage task's module does

    @task(timeout_seconds=1)
    def slow_stage():
        time.sleep(2)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def run():
        future = slow_stage.submit()
        future.wait()
        return future.state.name

    class Kept(logging.Handler):
        records: list = []

        def emit(self, record):
            self.records.append(record)

    logger, kept = logging.getLogger("prefect.task_runs"), Kept(logging.WARNING)
    logger.addHandler(kept)  # a logger's filters apply before its own handlers
    try:
        assert run() == "TimedOut"
    finally:
        logger.removeHandler(kept)
    messages = [r.getMessage() for r in kept.records]
    assert any("TaskRunTimeoutError" in m for m in messages), messages  # the run's own error is logged
    assert not [m for m in messages if "worker thread" in m]
