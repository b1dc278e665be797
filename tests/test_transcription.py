"""Accuracy and invariants of the batched decoder on the real recordings."""

import pytest

from scribeline import local
from tests.conftest import EXACT_ENGLISH, manifest, wer


@pytest.fixture(scope="module")
def english(media_dir, settings, tmp_path_factory):
    paths = [media_dir / f for f in EXACT_ENGLISH]
    results = local.transcribe_files(settings, paths, tmp_path_factory.mktemp("en"))
    return {r.path.name: r for r in results}


def test_jfk_word_error_rate_at_most_10_percent(english):
    ref = manifest()["en_jfk.flac"]["reference_text"]
    assert wer(ref, english["en_jfk.flac"].transcript.text) <= 0.10


def test_exact_english_clips_average_wer_at_most_15_percent(english):
    refs = manifest()
    rates = [wer(refs[f]["reference_text"], english[f].transcript.text) for f in EXACT_ENGLISH]
    assert sum(rates) / len(rates) <= 0.15, dict(zip(EXACT_ENGLISH, rates))


def test_word_timestamps_are_ordered_inside_segments_and_the_media(english):
    for r in english.values():
        duration = r.audio.duration_s
        assert r.transcript.segments, r.path.name
        for seg in r.transcript.segments:
            assert 0 <= seg.start <= seg.end <= duration + 0.05
            assert seg.words
            for a, b in zip(seg.words, seg.words[1:]):
                assert a.start <= b.start
            for w in seg.words:
                assert seg.start - 0.01 <= w.start <= w.end <= seg.end + 0.01
                assert 0.0 <= w.probability <= 1.0


def test_americans_is_timed_where_it_is_spoken(english):
    # openai-whisper's own test puts "Americans" at 1.76-2.26 s in this clip.
    words = [w for s in english["en_jfk.flac"].transcript.segments for w in s.words]
    americans = next(w for w in words if "Americans" in w.word)
    assert americans.start == pytest.approx(1.76, abs=0.3)
    assert americans.end == pytest.approx(2.26, abs=0.3)


def test_quality_signals_are_carried(english):
    seg = english["en_jfk.flac"].transcript.segments[0]
    assert -1.0 < seg.avg_logprob <= 0.0
    assert 0.0 <= seg.no_speech_prob < 0.5
    assert 0.5 < seg.compression_ratio < 2.4
    assert seg.temperature == 0.0


def test_english_only_model_reports_english(english):
    assert {r.transcript.language for r in english.values()} == {"en"}


def test_fast_median_filter_matches_whispers_exactly():
    import itertools

    import torch
    from whisper.timing import median_filter as current

    from scribeline import transcription

    whispers = transcription._whisper_median_filter
    assert current is transcription.median_filter  # what whisper's alignment now calls
    # Every 0/1 input proves the network sorts (0-1 principle); then real-valued data.
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=7)))[:, None, :]
    assert torch.equal(transcription.median_filter(bits, 7), whispers(bits, 7))
    x = torch.randn(6, 90, 751)
    assert torch.equal(transcription.median_filter(x, 7), whispers(x, 7))
    y = torch.randn(2, 3, 40)
    assert torch.equal(transcription.median_filter(y, 5), whispers(y, 5))  # other widths: whisper's own


def test_prepared_cross_attention_decodes_what_whispers_own_attention_decodes(settings, english):
    # The CPU decoder lays the audio keys/values out once per decode, in float32 or (the default
    # where the CPU has it) bfloat16. Summation order differs from whisper's fused kernel, so a
    # token of an uncertain window can flip (as between whisper's own two attention paths), but
    # the text must stay whisper's, greedy and with beam search (which reorders the cache).
    import torch
    import whisper

    from scribeline import media, stages, transcription
    from scribeline.model_thread import on_model_thread

    tr = stages.transcriber(settings)
    blocks = tr.model.decoder.blocks
    assert all(type(b.cross_attn) is transcription._PreparedCrossAttention for b in blocks)
    default_dtype = blocks[0].cross_attn.prepared_dtype
    samples = [media.read_samples(media.open_audio(r.audio.path), w.start, w.end, r.audio.gain_db)
               for r in english.values() for w in r.windows]

    def decode(features, beam):
        return [r.text for r in tr._decode(features, "en", 0.0, beam)[0]]

    def three_ways():
        features = tr._encode(samples)
        out = {}
        try:
            for dtype in (torch.float32, default_dtype):
                for b in blocks:
                    b.cross_attn.prepared_dtype = dtype
                out[dtype] = [decode(features, None), decode(features, 5)]
            for b in blocks:
                b.cross_attn.__class__ = whisper.model.MultiHeadAttention
            out["whisper"] = [decode(features, None), decode(features, 5)]
        finally:
            for b in blocks:
                b.cross_attn.__class__ = transcription._PreparedCrossAttention
                b.cross_attn.prepared_dtype = default_dtype
        return out

    out = on_model_thread(three_ways)
    assert all(out["whisper"][0])
    for dtype in (torch.float32, default_dtype):
        for mode in range(2):  # greedy, beam
            assert wer(" ".join(out["whisper"][mode]), " ".join(out[dtype][mode])) <= 0.05, out[dtype][mode]


def test_word_alignment_reads_the_keys_decoding_laid_out(settings, english, monkeypatch):
    # The alignment pass attends to the keys and values the decode already laid out (bfloat16
    # where native) instead of computing them again from each window's 1,500 audio states.
    # Same words; times move little (the benchmark's 1,577 words: 0.02 s on average).
    from scribeline import media, stages, transcription

    tr = stages.transcriber(settings)
    jobs = [stages.audio_job(settings, media.open_audio(r.audio.path), r.audio.gain_db, r.windows, r.info.sample_rate)
            for r in english.values()]
    key_rows: list[int] = []
    hook = tr.model.decoder.blocks[0].cross_attn.key.register_forward_hook(lambda _m, a, _o: key_rows.append(a[0].shape[0]))
    try:
        kept = tr.transcribe(jobs)
        computed_when_kept = len(key_rows)
        key_rows.clear()
        monkeypatch.setattr(transcription._AudioKeys, "kept_by", classmethod(lambda cls, *a: None))
        recomputed = tr.transcribe(jobs)
    finally:
        hook.remove()
    assert len(key_rows) > computed_when_kept  # without the kept keys, every aligned input computes them again
    a = [w for t in kept for s in t.segments for w in s.words]
    b = [w for t in recomputed for s in t.segments for w in s.words]
    assert [w.word for w in a] == [w.word for w in b]
    shifts = [max(abs(x.start - y.start), abs(x.end - y.end)) for x, y in zip(a, b)]
    assert max(shifts) <= 0.5 and sum(shifts) / len(shifts) <= 0.05, shifts
