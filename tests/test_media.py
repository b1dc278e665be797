
import numpy as np
import pytest

from scribeline import media
from tests.conftest import ffmpeg


def test_probe_reads_facts_from_content_not_extension(media_dir, tmp_path):
    disguised = tmp_path / "recording.mp3"  # FLAC data under an .mp3 name
    disguised.write_bytes((media_dir / "en_jfk.flac").read_bytes())
    info = media.probe(disguised)
    assert (info.container, info.codec, info.sample_rate, info.channels) == ("flac", "flac", 44100, 2)
    assert info.duration_s == pytest.approx(11.0, abs=0.01)


def test_video_uses_first_audio_stream(media_dir):
    info = media.probe(media_dir / "en_video_wda_katiehill.mp4")
    assert info.has_video and info.codec == "aac" and info.sample_rate == 16000
    assert info.audio_stream_index == 1


def test_text_file_is_rejected_with_a_readable_reason(tmp_path):
    fake = tmp_path / "song.mp3"
    fake.write_text("just some text\n")
    with pytest.raises(media.MediaError, match="not a media file") as err:
        media.probe(fake)
    assert str(tmp_path) not in str(err.value)  # operators see no scratch paths


def test_video_without_audio_is_rejected(tmp_path):
    silent_video = tmp_path / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=64x64:rate=10", "-c:v", "libx264" if _has_x264() else "mpeg4",
           str(silent_video))
    with pytest.raises(media.MediaError, match="no audio stream"):
        media.probe(silent_video)


def _has_x264() -> bool:
    import subprocess

    return "libx264" in subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout


def test_normalize_gives_exact_16k_mono_sample_count(media_dir, tmp_path):
    src = media_dir / "en_jfk.flac"
    out = media.normalize(src, tmp_path / "a.f32", media.probe(src))
    assert out.num_samples == 11 * 16000  # 11.000 s at 44.1 kHz resampled exactly
    audio = media.open_audio(out.path)
    assert len(audio) == out.num_samples
    samples = audio[0 : len(audio)]
    assert 0.01 < float(np.abs(samples).max()) <= 1.5


def test_normalized_audio_is_16_bit_half_the_bytes_same_samples_and_float32_files_still_read(media_dir, tmp_path):
    # The pipeline stores 16-bit audio (what whisper decodes to) in the normalized bucket;
    # float32 files written by earlier versions, still referenced by cached stage results,
    # must read the same.
    src = media_dir / "en_jfk.flac"
    info = media.probe(src)
    s16 = media.normalize(src, tmp_path / "a.s16", info)
    f32 = media.normalize(src, tmp_path / "a.f32", info)
    assert s16.path.stat().st_size * 2 == f32.path.stat().st_size
    assert s16.num_samples == f32.num_samples
    a, b = media.open_audio(s16.path), media.open_audio(f32.path)
    assert len(a) == len(b) == s16.num_samples and a[0:10].dtype == b[0:10].dtype == np.float32
    # ffmpeg downmixes this stereo file 3 dB lower into integers (so the sum cannot clip);
    # the measured gain makes up for it, and what VAD and the model read is the same.
    x = media.read_samples(a, 0, len(a), s16.gain_db)
    y = media.read_samples(b, 0, len(b), f32.gain_db)
    assert float(np.abs(x - y).max()) < 2e-4
    with pytest.raises(ValueError, match="s16 or"):
        media.normalize(src, tmp_path / "a.wav", info)


def test_recording_at_minus_45_dbfs_gets_gain_back_to_speech_level(media_dir, tmp_path):
    src = media_dir / "en_harvard_birch_canoe.wav"
    loud = media.normalize(src, tmp_path / "l.f32", media.probe(src))
    drop = 45 + loud.speech_level_dbfs  # bring speech to -45 dBFS
    quiet = tmp_path / "quiet.wav"
    ffmpeg("-i", str(src), "-af", f"volume=-{drop:.2f}dB", "-c:a", "pcm_s24le", str(quiet))
    soft = media.normalize(quiet, tmp_path / "q.f32", media.probe(quiet))
    assert soft.speech_level_dbfs == pytest.approx(-45, abs=1.0)
    assert soft.gain_db == pytest.approx(loud.gain_db + drop, abs=1.0)
    a = media.read_samples(media.open_audio(loud.path), 0, loud.num_samples, loud.gain_db)
    b = media.read_samples(media.open_audio(soft.path), 0, soft.num_samples, soft.gain_db)
    assert np.sqrt(np.mean(b**2)) == pytest.approx(np.sqrt(np.mean(a**2)), rel=0.1)


def test_noisy_decoder_warnings_do_not_stall_normalize(media_dir, tmp_path):
    # Stream-copied concatenation: ffmpeg warns about every packet's timestamps while
    # decoding (megabytes of stderr), which must not block the decode.
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"file '{media_dir / 'en_jfk.flac'}'\n" for _ in range(30)))
    joined = tmp_path / "joined.flac"
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(joined))
    out = media.normalize(joined, tmp_path / "j.f32", media.probe(joined))
    assert out.duration_s == pytest.approx(330.0, abs=1.0)
