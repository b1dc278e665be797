"""Stages as plain functions against the real S3 server (no Prefect)."""

from dataclasses import replace

import pytest

from scribeline import stages, storage


@pytest.fixture()
def stereo_call(s3, media_dir):
    settings = replace(s3, split_channels=True)
    ref = storage.upload_file(settings, media_dir / "en_stereo_overlap_2spk.wav", key="calls/stereo.wav")
    yield settings, ref
    if storage.exists(settings, ref.bucket, ref.key):
        storage.client(settings).remove_object(ref.bucket, ref.key)


def test_call_centre_stereo_is_transcribed_per_channel_and_merged_in_time(stereo_call):
    settings, ref = stereo_call
    ingested = stages.ingest(settings, ref)
    assert ingested["run_key"] != replace(settings, split_channels=False).run_key(ingested["sha256"])
    normalized = stages.normalize(settings, ingested)
    assert [t["channel"] for t in normalized["tracks"]] == [0, 1]
    assert normalized["info"]["channels"] == 2
    stages.cleanup(settings, ingested["run_key"])  # later stages refetch the audio from the normalized bucket
    segmented = stages.segment(settings, ingested["run_key"], normalized)
    transcript = stages.transcribe(settings, ingested["run_key"], segmented)
    segments = transcript["segments"]
    assert {s["channel"] for s in segments} == {0, 1}
    assert [s["start"] for s in segments] == sorted(s["start"] for s in segments)
    left = " ".join(s["text"] for s in segments if s["channel"] == 0).lower()
    right = " ".join(s["text"] for s in segments if s["channel"] == 1).lower()
    assert "wizard" in left and "horizon" in right
    checks = stages.validate(settings, transcript, segmented["duration_s"])
    assert {c["table"] for c in checks["checks"]} == {"segments", "words", "media"}


def test_ingest_hashes_the_object_and_keys_it_by_content_and_configuration(s3, media_dir):
    ref = storage.upload_file(s3, media_dir / "en_timit_ldc93s1.wav", key="x/timit.wav")
    try:
        out = stages.ingest(s3, ref)
        assert out["sha256"] == "c7e8b51db10ec6a2aea8c92376f2b88af14c2b4950ed82db3d605a4b718c8f35"
        assert out["size"] == 93638 and out["run_key"].startswith(out["sha256"][:32])
        assert stages.ingest(s3, ref)["run_key"] == out["run_key"]
        assert replace(s3, model="base").run_key(out["sha256"]) != out["run_key"]
    finally:
        storage.client(s3).remove_object(ref.bucket, ref.key)
        stages.cleanup(s3, out["run_key"])


def test_a_freed_decode_slot_goes_to_the_largest_source_waiting():
    # The flow submits a wave's largest file first, but task threads reach the slots in no
    # fixed order; the largest waiting must go next, so its VAD and upload do not trail the wave.
    import threading
    import time

    slots = stages._DecodeSlots(1)
    entered: list[int] = []
    holder = slots(size=10)
    holder.__enter__()

    def decode(size: int):
        with slots(size):
            entered.append(size)

    threads = []
    for size in (1, 300, 20):  # arrival order
        threads.append(threading.Thread(target=decode, args=(size,)))
        threads[-1].start()
        while len(slots._waiting) < len(threads):
            time.sleep(0.001)
    holder.__exit__(None, None, None)
    for t in threads:
        t.join(5)
    assert entered == [300, 20, 1]


def test_the_first_slots_of_a_wave_wait_for_its_largest_sources():
    # The tasks of one wave reach the slots within ~25 ms, the largest not necessarily first.
    import threading
    import time

    slots = stages._DecodeSlots(2, gather_s=30)
    entered: list[int] = []
    release = threading.Event()

    def decode(size: int):
        with slots(size, expected=4):
            entered.append(size)
            release.wait(10)

    threads = []
    for size in (1, 2, 300, 20):  # arrival order
        threads.append(threading.Thread(target=decode, args=(size,)))
        threads[-1].start()
        while len(slots._waiting) + len(entered) < len(threads):
            time.sleep(0.001)
    while len(entered) < 2:
        time.sleep(0.001)
    assert sorted(entered) == [20, 300]
    release.set()
    for t in threads:
        t.join(5)
    assert sorted(entered[2:]) == [1, 2]


def test_a_wave_whose_other_media_never_come_still_decodes():
    # E.g. the rest of the wave's normalize results came from the cache: the gather times out.
    import threading

    slots = stages._DecodeSlots(2, gather_s=0.05)
    done = threading.Event()

    def decode():
        with slots(5, expected=3):
            done.set()

    threading.Thread(target=decode).start()
    assert done.wait(5)
