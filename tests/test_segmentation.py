import numpy as np
import pytest

from scribeline import media, segmentation
from scribeline.segmentation import SAMPLE_RATE, Span, merge_spans


def _segment(path, tmp_path):
    norm = media.normalize(path, tmp_path / "x.f32", media.probe(path))
    return norm, segmentation.segment(media.open_audio(norm.path), norm.gain_db)


def test_long_recording_windows_are_bounded_ordered_and_cover_all_speech(media_dir, tmp_path):
    norm, windows = _segment(media_dir / "fr_smartphone_chronicle.mp3", tmp_path)
    assert len(windows) >= 6  # 178 s of speech
    for a, b in zip(windows, windows[1:]):
        assert a.end <= b.start
    for w in windows:
        assert 0 <= w.start < w.end <= norm.num_samples
        assert w.num_samples <= 30 * SAMPLE_RATE
        for span in w.speech:  # every speech span lies inside its window: no word is cut
            assert w.start <= span.start < span.end <= w.end


def test_digital_silence_has_no_windows(tmp_path):
    silence = np.zeros(SAMPLE_RATE * 20, dtype=np.float32)
    assert segmentation.segment(silence, 0.0) == []


def test_merge_cuts_only_between_spans_and_pads_into_pauses():
    s = SAMPLE_RATE
    spans = [Span(1 * s, 5 * s), Span(6 * s, 20 * s), Span(21 * s, 31 * s), Span(40 * s, 45 * s)]
    windows = merge_spans(spans, 50 * s, max_window_s=30.0)
    assert [len(w.speech) for w in windows] == [2, 2]  # adding 21..31 s to the first would span 30 s
    assert windows[0].start == pytest.approx(0.8 * s) and windows[0].end == pytest.approx(20.2 * s)
    assert windows[1].start == pytest.approx(20.8 * s) and windows[1].end == pytest.approx(45.2 * s)
    assert all(w.num_samples <= 30 * s for w in windows)


def test_vad_leaves_torch_threads_alone():
    # silero_vad calls torch.set_num_threads(1) on import; whisper would then run on one core.
    import subprocess
    import sys

    code = ("import torch, numpy as np; before = torch.get_num_threads(); from scribeline import segmentation; "
            "segmentation.segment(np.full(16000, 0.01, dtype=np.float32), 0.0); print(before, torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == out[1]


def test_long_recording_scored_in_parallel_parts_finds_the_same_speech(media_dir, tmp_path):
    # Real recordings back to back (≥ PARALLEL_VAD_MIN_S): parallel parts must find the speech
    # that one serial pass finds. The recurrent state differs for a while after a cut, so a
    # boundary may move by a frame or two (32 ms each), never a span appear or vanish.
    parts = [media.normalize(media_dir / name, tmp_path / f"{name}.f32", media.probe(media_dir / name))
             for name in ("fr_smartphone_chronicle.mp3", "en_nasa_spacewalk_interview.wav")]
    audio = np.concatenate([np.fromfile(p.path, dtype="<f4") for p in parts] * 2)
    assert audio.size >= segmentation.PARALLEL_VAD_MIN_S * SAMPLE_RATE
    opts = segmentation.SegmentationOptions()
    serial = segmentation.speech_probabilities(audio, 0.0, parts=1)
    expected = segmentation.speech_spans(serial, audio.size, opts)
    for n in (None, 3):  # None: one part per core
        parallel = segmentation.speech_probabilities(audio, 0.0, parts=n)
        assert parallel.shape == serial.shape
        spans = segmentation.speech_spans(parallel, audio.size, opts)
        assert len(spans) == len(expected)
        for got, want in zip(spans, expected):
            assert abs(got.start - want.start) <= 0.1 * SAMPLE_RATE and abs(got.end - want.end) <= 0.1 * SAMPLE_RATE
