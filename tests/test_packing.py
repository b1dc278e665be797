"""Short windows of different media packed into one whisper input, and their text split back."""

import dataclasses
import logging

import numpy as np
import pytest

from scribeline import local, media, stages
from scribeline.media import SAMPLE_RATE
from scribeline.segmentation import Span, Window
from scribeline.transcription import PACK_GAP_S, Transcriber, Word, _Input, _split_words, pack_windows
from tests.conftest import EXACT_ENGLISH, manifest, wer

S = SAMPLE_RATE


def window(seconds: float, index: int = 0) -> Window:
    n = int(seconds * S)
    return Window(index, 0, n, [Span(0, n)])


def test_short_windows_of_different_media_share_inputs_of_at_most_30_s_and_long_ones_stay_alone():
    lengths = [3.3, 10.9, 5.5, 25.7, 5.0, 2.9, 8.0, 16.0]
    parts = [(j, window(s)) for j, s in enumerate(lengths)]
    inputs = pack_windows(parts)
    assert sorted(p for inp in inputs for p in inp.parts) == sorted(parts)  # every window exactly once
    assert all(inp.num_samples <= 30 * S for inp in inputs)
    alone = {lengths[inp.parts[0][0]] for inp in inputs if not inp.packed}
    assert {25.7, 16.0} <= alone  # longer than 15 s: never shared
    assert len(inputs) == 4  # 3 + 5 short windows of six media in two inputs
    assert any(len({j for j, _ in inp.parts}) > 1 for inp in inputs)


def test_packed_words_go_to_the_window_they_were_spoken_in():
    inp = _Input([(0, window(4.0)), (1, window(3.0))])  # part 1 starts at 4 s + the gap
    second = 4.0 + PACK_GAP_S
    words = [Word(0.1, 0.5, " a", 0.9), Word(3.5, 3.9, " b", 0.9),
             Word(second + 0.2, second + 0.6, " c", 0.9), Word(second + 2.5, second + 2.9, " d", 0.9)]
    assert [[w.word for w in ws] for ws in _split_words(inp, words)] == [[" a", " b"], [" c", " d"]]
    # A word in the middle of the gap cannot be told whose it is; a window left without words
    # means whisper skipped it: both void the packing (its windows are decoded again alone).
    assert _split_words(inp, words + [Word(4.4, 4.6, " e", 0.5)]) is None
    assert _split_words(inp, words[:2]) is None


@pytest.fixture(scope="module")
def clips(media_dir, settings, tmp_path_factory):
    """The exact-English clips as the pipeline hands them to the transcriber (each one short window)."""
    prepared = local.transcribe_files(settings, [media_dir / f for f in EXACT_ENGLISH], tmp_path_factory.mktemp("clips"))
    jobs = [stages.audio_job(settings, media.open_audio(r.audio.path), r.audio.gain_db, r.windows, r.info.sample_rate)
            for r in prepared]
    return prepared, jobs


def _unpacked(tr: Transcriber) -> Transcriber:
    return Transcriber(tr.model, tr.device, dataclasses.replace(tr.options, pack_short_windows=False))


def _encoded_rows(tr: Transcriber, fn):
    rows = []
    hook = tr.model.encoder.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    try:
        return fn(), sum(rows)
    finally:
        hook.remove()


def test_packed_clips_cost_fewer_encoder_inputs_and_read_as_well_as_alone(settings, clips):
    prepared, jobs = clips
    tr = stages.transcriber(settings)
    assert tr.options.pack_short_windows  # the default
    packed, packed_rows = _encoded_rows(tr, lambda: tr.transcribe(jobs))
    alone, alone_rows = _encoded_rows(tr, lambda: _unpacked(tr).transcribe(jobs))
    assert alone_rows == sum(len(j.windows) for j in jobs) == 4
    assert packed_rows < alone_rows
    refs = [manifest()[r.path.name]["reference_text"] for r in prepared]
    # Whisper reads a packed clip with its neighbours' audio in view, so a word may come out
    # differently (on these clips and the benchmark's, by a word either way); the accuracy must
    # hold. Text landing in the wrong clip would cost both clips most of their words.
    assert wer(" ".join(refs), " ".join(p.text for p in packed)) <= wer(" ".join(refs), " ".join(a.text for a in alone)) + 0.05
    for r, p in zip(prepared, packed):
        assert p.windows_decoded == 1 and p.windows_silent == 0
        words = [w for s in p.segments for w in s.words]
        assert words and all(0 <= w.start <= w.end <= r.audio.duration_s + 0.05 for w in words)
        assert [w.start for w in words] == sorted(w.start for w in words)
        assert {s.window_index for s in p.segments} == {0}


def test_a_window_without_speech_packed_with_speech_is_decoded_again_alone(settings, clips, caplog):
    # VAD can pass a window whisper hears nothing in (a cough, noise). Packed with a clip, it gets
    # no words: the packing is voided and both windows are decoded alone, so each transcript is what
    # the two windows give unpacked (whisper may hear "you" in silence, as its own transcribe() does)
    # and neither borrows the other's text.
    prepared, jobs = clips
    jfk = jobs[EXACT_ENGLISH.index("en_jfk.flac")]
    quiet = dataclasses.replace(jfk, read=lambda s, e: np.zeros(e - s, dtype=np.float32), windows=[window(4.0)])
    tr = stages.transcriber(settings)
    with caplog.at_level(logging.INFO, logger="scribeline.transcription"):
        (speech, silence), rows = _encoded_rows(tr, lambda: tr.transcribe([jfk, quiet]))
    assert rows == 3  # one packed input, then each window alone
    assert "decoding 2 packed windows again alone" in caplog.text
    # The same batch of two, unpacked (with int8 on, a batch's make-up can flip a comma).
    assert [speech.text, silence.text] == [t.text for t in _unpacked(tr).transcribe([jfk, quiet])]
    assert "country" in speech.text and "country" not in silence.text
