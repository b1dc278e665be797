"""Every common container and codec gives the same transcript as the original, with the right media facts.

The source is the 26-second NASA interview (about 65 words, spontaneous speech): on a
clip this long a 5-point WER difference means three or more words. (On the 22-word JFK
clip one word is 4.5 points; there 8-bit PCM costs tiny.en two words, openai-whisper's own
transcribe() one, while on this clip 8-bit PCM, µ-law and A-law cost none.)
"""

import subprocess

import pytest

from scribeline import local
from tests.conftest import ffmpeg, manifest, wer

SOURCE = "en_nasa_spacewalk_interview.wav"  # 44.1 kHz mono, 25.93 s
VIDEO = ["-f", "lavfi", "-i", "color=c=blue:size=64x64:rate=10:duration=26"]

# name: (file name, ffmpeg output args, is video, expected codec, expected rate, expected channels)
FORMATS = {
    "wav-u8-16k-mono": ("a.wav", ["-c:a", "pcm_u8", "-ar", "16000", "-ac", "1"], False, "pcm_u8", 16000, 1),
    "wav-s16-44k-stereo": ("b.wav", ["-c:a", "pcm_s16le", "-ar", "44100", "-ac", "2"], False, "pcm_s16le", 44100, 2),
    "wav-s24-48k": ("c.wav", ["-c:a", "pcm_s24le", "-ar", "48000"], False, "pcm_s24le", 48000, 1),
    "wav-s32-96k": ("d.wav", ["-c:a", "pcm_s32le", "-ar", "96000"], False, "pcm_s32le", 96000, 1),
    "wav-float-192k": ("e.wav", ["-c:a", "pcm_f32le", "-ar", "192000"], False, "pcm_f32le", 192000, 1),
    "wav-mulaw-8k-telephony": ("f.wav", ["-c:a", "pcm_mulaw", "-ar", "8000", "-ac", "1"], False, "pcm_mulaw", 8000, 1),
    "wav-alaw-8k-telephony": ("g.wav", ["-c:a", "pcm_alaw", "-ar", "8000", "-ac", "1"], False, "pcm_alaw", 8000, 1),
    "wav-8-channels": ("h.wav", ["-c:a", "pcm_s16le", "-ac", "8"], False, "pcm_s16le", 44100, 8),
    "flac": ("i.flac", ["-c:a", "flac", "-ar", "22050", "-ac", "2"], False, "flac", 22050, 2),
    "mp3": ("j.mp3", ["-c:a", "libmp3lame", "-b:a", "64k"], False, "mp3", 44100, 1),
    "aac-m4a": ("k.m4a", ["-c:a", "aac", "-b:a", "96k", "-ac", "2"], False, "aac", 44100, 2),
    "ogg-vorbis": ("l.ogg", ["-c:a", "libvorbis"], False, "vorbis", 44100, 1),
    "ogg-opus": ("m.opus", ["-c:a", "libopus", "-b:a", "32k"], False, "opus", 48000, 1),
    "webm-opus": ("n.webm", ["-c:a", "libopus", "-vn"], False, "opus", 48000, 1),
    "aiff": ("o.aiff", ["-c:a", "pcm_s16be"], False, "pcm_s16be", 44100, 1),
    "wma": ("p.wma", ["-c:a", "wmav2", "-b:a", "96k"], False, "wmav2", 44100, 1),
    "mp4-h264-aac": ("q.mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest"], True, "aac", 44100, 1),
    "mkv-h264-flac": ("r.mkv", ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "flac", "-ac", "2", "-shortest"], True, "flac", 44100, 2),
    "webm-vp9-opus": ("s.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus", "-shortest"], True, "opus", 48000, 1),
    "mov-h264-aac": ("t.mov", ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-shortest"], True, "aac", 44100, 1),
}


def _encoders() -> str:
    return subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def transcoded(media_dir, settings, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats")
    src = media_dir / SOURCE
    paths = {"original": src}
    for name, (filename, args, video, *_rest) in FORMATS.items():
        out = tmp / filename
        inputs = [*(VIDEO if video else []), "-i", str(src)]
        if video:
            args = ["-map", "0:v", "-map", "1:a", *args]
        ffmpeg(*inputs, *args, str(out))
        paths[name] = out
    results = local.transcribe_files(settings, list(paths.values()), tmp / "work")
    return dict(zip(paths, results))


@pytest.mark.parametrize("name", list(FORMATS))
def test_format_gives_the_original_transcript_and_right_facts(transcoded, name):
    _, _, video, codec, rate, channels = FORMATS[name]
    ref = manifest()[SOURCE]["reference_text"]
    base = wer(ref, transcoded["original"].transcript.text)
    got = transcoded[name]
    assert wer(ref, got.transcript.text) - base <= 0.05, got.transcript.text
    info = got.info
    assert (info.codec, info.sample_rate, info.channels) == (codec, rate, channels)
    assert info.has_video == video
    assert info.duration_s == pytest.approx(25.93, abs=0.1)
    assert got.audio.duration_s == pytest.approx(25.93, abs=0.1)
    if not codec.startswith("pcm"):
        assert info.bit_rate and info.bit_rate > 0


def test_amr_where_ffmpeg_can_make_it(media_dir, settings, tmp_path):
    if "amr" not in _encoders():
        pytest.skip("this ffmpeg has no AMR encoder (AMR decoding is still used when a file arrives)")
    out = tmp_path / "x.amr"
    ffmpeg("-i", str(media_dir / SOURCE), "-ar", "8000", "-ac", "1", "-b:a", "12.2k", str(out))
    r = local.transcribe_files(settings, [out], tmp_path)[0]
    assert wer(manifest()[SOURCE]["reference_text"], r.transcript.text) <= 0.15  # model-quality reference


def test_very_quiet_and_clipped_recordings_are_still_transcribed(transcoded, media_dir, settings, tmp_path):
    from scribeline import media

    src = media_dir / SOURCE
    level = media.normalize(src, tmp_path / "o.f32", media.probe(src)).speech_level_dbfs
    quiet, clipped = tmp_path / "quiet.wav", tmp_path / "clipped.wav"
    ffmpeg("-i", str(src), "-af", f"volume={-45 - level:.2f}dB", "-c:a", "pcm_s24le", str(quiet))  # speech at -45 dBFS
    ffmpeg("-i", str(src), "-af", "volume=24dB", "-c:a", "pcm_s16le", str(clipped))  # peaks flattened at full scale
    q, c = local.transcribe_files(settings, [quiet, clipped], tmp_path)
    assert q.audio.speech_level_dbfs == pytest.approx(-45, abs=1.5)
    assert c.audio.peak_dbfs >= -0.1  # at full scale (the resampler may overshoot it)
    ref = manifest()[SOURCE]["reference_text"]
    base = wer(ref, transcoded["original"].transcript.text)
    assert wer(ref, q.transcript.text) - base <= 0.05, q.transcript.text
    assert wer(ref, c.transcript.text) - base <= 0.05, c.transcript.text
