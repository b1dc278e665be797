import duckdb
import pandas as pd
import pytest

from scribeline import export, warehouse


def _rows(media_id="m1"):
    row = dict(media_id=media_id, source_bucket="in", source_key="a/b.wav", source_etag="e", size_bytes=10, sha256="ab" * 32,
               container="wav", codec="pcm_s16le", sample_rate=16000, channels=1, bit_rate=256000, duration_s=4.0,
               language="en", language_probability=1.0, model="tiny.en.pt", task="transcribe", segment_count=2,
               word_count=4, pii_count=1, no_speech=False, quality_ok=True, gain_db=0.0, processing_s=1.0,
               processed_at=pd.Timestamp("2026-01-01"), pipeline_version="1")
    segments = pd.DataFrame([
        dict(media_id=media_id, segment_index=0, start_s=0.0, end_s=1.5, text="Hello <PERSON>.", channel=None,
             avg_logprob=-0.1, no_speech_prob=0.0, compression_ratio=1.0, temperature=0.0),
        dict(media_id=media_id, segment_index=1, start_s=2.0, end_s=3.25, text="Good bye.", channel=None,
             avg_logprob=-0.1, no_speech_prob=0.0, compression_ratio=1.0, temperature=0.0),
    ])
    words = pd.DataFrame([
        dict(media_id=media_id, segment_index=0, word_index=0, start_s=0.0, end_s=0.5, word="Hello", probability=0.9, redacted=False),
        dict(media_id=media_id, segment_index=0, word_index=1, start_s=0.6, end_s=1.5, word="<PERSON>", probability=0.9, redacted=True),
    ])
    return row, {"segments": segments, "words": words}


def test_loading_the_same_media_twice_adds_nothing(tmp_path):
    path = tmp_path / "w.sqlite"
    assert warehouse.load(path, *_rows()) is True
    before = warehouse.row_counts(path)
    assert warehouse.load(path, *_rows()) is False
    assert warehouse.row_counts(path) == before
    assert before["media"] == 1 and before["segments"] == 2 and before["words"] == 2


def test_the_flow_learns_in_one_query_which_media_are_already_loaded(tmp_path):
    path = tmp_path / "w.sqlite"
    assert warehouse.contained(path, ["m1"]) == set()  # no warehouse yet
    warehouse.load(path, *_rows("m1"))
    warehouse.load(path, *_rows("m3"))
    assert warehouse.contained(path, ["m1", "m2", "m3"]) == {"m1", "m3"}
    assert warehouse.contained(path, []) == set()



def test_media_loaded_together_keep_their_own_transactions(tmp_path):
    path = tmp_path / "w.sqlite"
    bad_row, bad_tables = _rows("m2")
    bad_tables["words"] = pd.concat([bad_tables["words"], bad_tables["words"]])  # duplicate primary key
    warehouse.load(path, *_rows("m0"))
    results = warehouse.load_many(path, [_rows("m1"), (bad_row, bad_tables), _rows("m0"), _rows("m3")])
    assert results[0] is True and results[2] is False and results[3] is True
    assert isinstance(results[1], duckdb.Error)
    ids = set(warehouse.query(path, "select media_id from media")["media_id"])
    assert ids == {"m0", "m1", "m3"}  # nothing of m2, nothing doubled
    assert warehouse.row_counts(path)["words"] == 6


def test_media_loaded_together_in_one_round_are_each_added_once(tmp_path):
    # The usual round: every media new but one, and one media twice (two uploads of the same file).
    path = tmp_path / "w.sqlite"
    warehouse.load(path, *_rows("m0"))
    first, again = _rows("m1"), _rows("m1")
    without_words = _rows("m4")
    del without_words[1]["words"]
    results = warehouse.load_many(path, [first, _rows("m0"), _rows("m3"), again, without_words])
    assert results == [True, False, True, False, True]
    counts = warehouse.row_counts(path)
    assert counts["media"] == 4 and counts["segments"] == 8 and counts["words"] == 6
    words = warehouse.query(path, "select media_id, word from words order by media_id, word_index")
    assert list(words["media_id"]) == ["m0", "m0", "m1", "m1", "m3", "m3"]
    assert list(words["word"]) == ["Hello", "<PERSON>"] * 3


def test_transcripts_view_joins_segments_in_time_order(tmp_path):
    path = tmp_path / "w.sqlite"
    warehouse.load(path, *_rows())
    df = warehouse.query(path, "select * from transcripts")
    assert list(df.columns) == ["media_id", "source_object", "language", "duration_s", "needs_review", "text"]
    assert df.iloc[0]["text"] == "Hello <PERSON>. Good bye."
    assert df.iloc[0]["source_object"] == "s3://in/a/b.wav"


def test_a_warehouse_made_before_the_review_columns_gets_them(tmp_path):
    path = tmp_path / "old.sqlite"
    old_schema = warehouse.SCHEMA.replace("    needs_review        BOOLEAN,", "").replace("    review_reasons      VARCHAR,", "")
    con = warehouse.connect(path)
    con.execute(old_schema.split("-- Warehouses made before")[0])
    con.close()
    row, tables = _rows()
    assert warehouse.load(path, {**row, "needs_review": True, "review_reasons": "repeated_text"}, tables)
    media = warehouse.query(path, "select needs_review, review_reasons from media").iloc[0]
    assert media["needs_review"] and media["review_reasons"] == "repeated_text"


def test_queries_cannot_write(tmp_path):
    path = tmp_path / "w.sqlite"
    warehouse.load(path, *_rows())
    with pytest.raises(duckdb.Error):
        warehouse.query(path, "delete from media")
    assert warehouse.row_counts(path)["media"] == 1


def test_a_failed_load_leaves_no_partial_rows(tmp_path):
    path = tmp_path / "w.sqlite"
    row, tables = _rows()
    tables["words"] = pd.concat([tables["words"], tables["words"]])  # duplicate primary key
    with pytest.raises(duckdb.Error):
        warehouse.load(path, row, tables)
    assert warehouse.row_counts(path) == {k: 0 for k in warehouse.row_counts(path)}


def test_export_formats(tmp_path):
    path = tmp_path / "w.sqlite"
    warehouse.load(path, *_rows("abcdef123"))
    stored = export.fetch(path, "abcdef")  # a unique prefix is enough
    srt = export.get_writer("srt").render(stored)
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,500\nHello <PERSON>.\n\n2\n00:00:02,000 --> 00:00:03,250\nGood bye.")
    vtt = export.get_writer("vtt").render(stored)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello <PERSON>.")
    assert export.get_writer("txt").render(stored) == "Hello <PERSON>.\nGood bye.\n"
    import json

    doc = json.loads(export.get_writer("json").render(stored))
    assert doc["media"]["media_id"] == "abcdef123" and doc["segments"][0]["words"][1]["word"] == "<PERSON>"
    with pytest.raises(ValueError):
        export.get_writer("docx")


def test_compaction_keeps_every_row_and_readers_see_them(tmp_path):
    path = tmp_path / "w.sqlite"
    for i in range(6):
        warehouse.load(path, *_rows(f"m{i}"))
    reader = warehouse.connect(path, read_only=True)  # an analyst's session across the compaction
    before = warehouse.row_counts(path)
    warehouse.compact(path)
    assert warehouse.row_counts(path) == before
    assert reader.execute("select count(*) from words").fetchone()[0] == before["words"] == 12
    reader.close()


def test_an_analyst_polling_a_fresh_warehouse_never_sees_it_without_its_tables(tmp_path, monkeypatch):
    """The first load creates the warehouse; an analyst who polls from the start gets "no warehouse
    yet" or the tables, never a catalog that lacks them. (The schema's creation is slowed here, so
    that a poll certainly falls inside it.)"""
    import threading
    import time

    path = tmp_path / "w.sqlite"
    slow = warehouse._create_schema

    def create_slowly(con):
        time.sleep(1.5)
        slow(con)

    monkeypatch.setattr(warehouse, "_create_schema", create_slowly)
    seen, errors, done = [], [], threading.Event()

    def analyst():
        while not done.is_set():
            if path.exists():
                try:
                    seen.append(int(warehouse.query(path, "SELECT count(*) AS n FROM ledger")["n"][0]))
                except duckdb.Error as exc:
                    errors.append(str(exc))
            time.sleep(0.05)

    poller = threading.Thread(target=analyst)
    poller.start()
    try:
        assert warehouse.load(path, *_rows()) is True
        time.sleep(0.3)
    finally:
        done.set()
        poller.join(10)
    assert not errors, errors[:3]
    assert seen and set(seen) == {0}
