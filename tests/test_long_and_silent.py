"""Timestamps stay exact over long files; silence, noise, tones and music give no words."""


import pytest

from scribeline import local
from tests.conftest import ffmpeg, manifest, wer

SR = 16000


def _words(result):
    return [w for s in result.transcript.segments for w in s.words]


@pytest.fixture(scope="module")
def sentences(media_dir, settings, tmp_path_factory):
    """The two sentences alone: where their words are, relative to each clip's start."""
    tmp = tmp_path_factory.mktemp("alone")
    a, b = media_dir / "en_harvard_birch_canoe.wav", media_dir / "en_timit_ldc93s1.wav"
    ra, rb = (local.transcribe_files(settings, [clip], tmp / clip.stem)[0] for clip in (a, b))
    return a, b, ra, rb


def _concat(tmp_path, parts, out_name):
    """parts: paths or ('silence', seconds) / ('noise', seconds); joined sample-exactly at 16 kHz."""
    inputs, labels = [], []
    for i, part in enumerate(parts):
        if isinstance(part, tuple):
            kind, seconds = part
            src = "anullsrc=r=16000:cl=mono" if kind == "silence" else "anoisesrc=r=16000:a=0.0003:c=pink"
            inputs += ["-f", "lavfi", "-t", str(seconds), "-i", src]
        else:
            inputs += ["-i", str(part)]
        labels.append(f"[{i}:a]aresample=16000,aformat=sample_fmts=s16:channel_layouts=mono[a{i}]")
    graph = ";".join(labels) + ";" + "".join(f"[a{i}]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=0:a=1[out]"
    out = tmp_path / out_name
    ffmpeg(*inputs, "-filter_complex", graph, "-map", "[out]", "-c:a", "flac", str(out))
    return out


def test_ten_minutes_of_silence_between_two_sentences(sentences, settings, tmp_path):
    a, b, ra, rb = sentences
    offset_b = 3.261 + 600.0  # duration of the first clip + the pause
    joined = _concat(tmp_path, [a, ("noise", 600), b], "pause.flac")
    r = local.transcribe_files(settings, [joined], tmp_path)[0]
    refs = manifest()
    first = [s for s in r.transcript.segments if s.start < 300]
    second = [s for s in r.transcript.segments if s.start >= 300]
    assert wer(refs[a.name]["reference_text"], " ".join(s.text for s in first)) <= 0.15
    assert wer(refs[b.name]["reference_text"], " ".join(s.text for s in second)) <= 0.25
    assert not [s for s in r.transcript.segments if 4 < s.start < offset_b - 0.5]  # nothing in between
    for alone, together, offset in ((_words(ra), _words(r)[: len(_words(ra))], 0.0),
                                    (_words(rb), _words(r)[-len(_words(rb)):], offset_b)):
        for x, y in zip(alone, together):
            assert y.start == pytest.approx(x.start + offset, abs=0.2), (x, y)


def test_a_word_at_two_hours_ten_minutes_is_where_it_is_spoken(sentences, settings, tmp_path):
    _, b, _, rb = sentences
    offset = 2 * 3600 + 10 * 60
    joined = _concat(tmp_path, [("silence", offset), b, ("silence", 5)], "late.flac")
    r = local.transcribe_files(settings, [joined], tmp_path)[0]
    assert r.audio.duration_s == pytest.approx(offset + 5 + 2.925, abs=0.01)
    late, alone = _words(r), _words(rb)
    assert late and len(late) == len(alone)
    for x, y in zip(alone, late):
        assert y.start == pytest.approx(x.start + offset, abs=0.2)
        assert y.end == pytest.approx(x.end + offset, abs=0.2)


NON_SPEECH = {
    "silence": ["-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "40"],
    "white noise": ["-f", "lavfi", "-i", "anoisesrc=r=16000:a=0.2:c=white", "-t", "40"],
    "pink noise": ["-f", "lavfi", "-i", "anoisesrc=r=16000:a=0.2:c=pink", "-t", "40"],
    "test tone": ["-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=16000", "-t", "40"],
    "music": None,  # a melody of plucked notes with harmonics, made below
}


def _melody(path, seconds=40):
    import wave

    import numpy as np

    t = np.arange(int(0.25 * SR)) / SR
    notes = [220.0, 277.2, 329.6, 440.0, 329.6, 277.2, 246.9, 293.7]
    out = []
    for i in range(int(seconds / 0.25)):
        f = notes[i % len(notes)]
        tone = sum(np.sin(2 * np.pi * f * k * t) / k for k in (1, 2, 3, 4))
        out.append(0.25 * tone * np.exp(-6 * t))
    pcm = (np.concatenate(out) * 32767 / 2).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR)
        w.writeframes(pcm.tobytes())


@pytest.mark.parametrize("kind", list(NON_SPEECH))
def test_non_speech_gives_no_words_anywhere_in_the_file(kind, settings, tmp_path):
    path = tmp_path / f"{kind.replace(' ', '_')}.wav"
    if NON_SPEECH[kind] is None:
        _melody(path)
    else:
        ffmpeg(*NON_SPEECH[kind], str(path))
    r = local.transcribe_files(settings, [path], tmp_path)[0]
    assert r.transcript.segments == [], r.transcript.text
    assert r.transcript.no_speech


def test_channels_transcribed_apart_are_labelled_and_merged_in_time(media_dir, settings, tmp_path):
    from scribeline import media, segmentation, stages

    src = media_dir / "en_stereo_overlap_2spk.wav"
    info = media.probe(src)
    jobs = []
    for ch in (0, 1):
        norm = media.normalize(src, tmp_path / f"{ch}.f32", info, channel=ch)
        audio = media.open_audio(norm.path)
        jobs.append(stages.audio_job(settings, audio, norm.gain_db, segmentation.segment(audio, norm.gain_db),
                                     info.sample_rate, channel=ch))
    left, right = stages.transcriber(settings).transcribe(jobs)
    assert {s.channel for s in left.segments} == {0} and {s.channel for s in right.segments} == {1}
    assert wer("He began a confused complaint against the wizard, who had vanished behind the curtain on the left.",
               left.text) <= 0.2
    assert wer("The horizon seems extremely distant.", right.text) <= 0.2
