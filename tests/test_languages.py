"""Language identification from speech windows, multilingual checkpoints and translation (base.pt)."""

from dataclasses import replace

import pytest

from scribeline import local
from tests.conftest import MODELS, ffmpeg

pytestmark = pytest.mark.skipif(not (MODELS / "base.pt").exists(), reason="needs ../shared/models/base.pt")


@pytest.fixture(scope="module")
def base(settings):
    return replace(settings, model=str(MODELS / "base.pt"))


def test_german_and_french_are_identified_and_transcribed(base, media_dir, tmp_path):
    french = tmp_path / "fr.wav"
    ffmpeg("-i", str(media_dir / "fr_smartphone_chronicle.mp3"), "-t", "25", str(french))
    de, fr = local.transcribe_files(base, [media_dir / "de_leopard_test.wav", french], tmp_path)
    assert de.transcript.language == "de" and de.transcript.language_probability > 0.5
    assert fr.transcript.language == "fr"
    words = set(de.transcript.text.lower().replace(".", "").split())
    assert {"portal", "raum"} <= words
    assert "smartphone" in fr.transcript.text.lower()


def test_language_comes_from_speech_not_from_a_musical_intro(base, media_dir, tmp_path):
    intro = tmp_path / "intro.wav"
    ffmpeg("-f", "lavfi", "-t", "35", "-i", "sine=frequency=440:sample_rate=16000", "-i", str(media_dir / "de_leopard_test.wav"),
           "-filter_complex", "[0:a][1:a]concat=n=2:v=0:a=1[o]", "-map", "[o]", str(intro))
    r = local.transcribe_files(base, [intro], tmp_path)[0]
    assert r.transcript.language == "de"
    assert r.transcript.segments and r.transcript.segments[0].start > 34.0


def test_translate_task_gives_english(base, media_dir, tmp_path):
    translated = local.transcribe_files(replace(base, task="translate"), [media_dir / "de_leopard_test.wav"], tmp_path)[0]
    text = translated.transcript.text.lower()
    assert translated.transcript.language == "de"
    assert any(w in text for w in ("portal", "room", "hall")) and "raum" not in text
