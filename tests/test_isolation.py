"""A media's transcript is a function of its own bytes and the configuration, nothing else.

The same recording alone, in a crowd, or in another order gives identical segments,
words, timestamps and quality signals. The crowd is the case a user found broken:
one 3.3-second Harvard sentence in several containers processed together, beside a
long file that holds the sentence at both ends, and other clips.
"""

import dataclasses

import pytest

from scribeline import local, stages
from scribeline.transcription import Transcriber
from tests.conftest import ffmpeg

SENTENCE = "the birch canoe slid on the smooth planks"

# The sentence in other containers: name -> ffmpeg output arguments.
CONTAINERS = {
    "birch.mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "birch.opus": ["-c:a", "libopus", "-b:a", "32k"],
    "birch.m4a": ["-c:a", "aac", "-b:a", "96k", "-ac", "2"],
    "birch-8k.wav": ["-c:a", "pcm_mulaw", "-ar", "8000"],
    "birch.flac": ["-c:a", "flac", "-ar", "44100"],
}


@pytest.fixture(scope="module")
def crowd(media_dir, settings, tmp_path_factory):
    """Normalized audio and windows of the crowd's media, and their transcription jobs."""
    tmp = tmp_path_factory.mktemp("isolation")
    birch = media_dir / "en_harvard_birch_canoe.wav"
    paths = [birch]
    for name, args in CONTAINERS.items():
        ffmpeg("-i", str(birch), *args, str(tmp / name))
        paths.append(tmp / name)
    # A long file with the sentence at both ends and real speech between.
    long = tmp / "birch-both-ends.flac"
    parts = [birch, media_dir / "en_nasa_spacewalk_interview.wav", media_dir / "en_jfk.flac", birch]
    inputs = [a for p in parts for a in ("-i", str(p))]
    graph = "".join(f"[{i}:a]aresample=16000,aformat=sample_fmts=s16:channel_layouts=mono[a{i}];" for i in range(len(parts)))
    graph += "".join(f"[a{i}]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=0:a=1[out]"
    ffmpeg(*inputs, "-filter_complex", graph, "-map", "[out]", str(long))
    paths += [long, media_dir / "en_timit_ldc93s1.wav", media_dir / "en_ls_1272-128104-0000.wav",
              media_dir / "en_jfk.flac"]
    prepared = local.prepare_files(settings, paths, tmp / "work")
    jobs = local.audio_jobs(settings, [(track, windows) for _, track, windows in prepared])
    return [p.name for p in paths], jobs


def _same(a, b) -> bool:
    return a.as_dict() == b.as_dict()


def test_a_transcript_is_the_same_alone_among_others_and_in_any_order(settings, crowd):
    names, jobs = crowd
    tr = stages.transcriber(settings)
    together = tr.transcribe(jobs)
    backwards = list(reversed(tr.transcribe(list(reversed(jobs)))))
    alone = [tr.transcribe([job])[0] for job in jobs]
    for name, t, b, a in zip(names, together, backwards, alone):
        assert t.segments, name
        assert _same(t, a), f"{name}: alone {a.text!r}, among others {t.text!r}"
        assert _same(t, b), f"{name}: in another order {b.text!r}, first {t.text!r}"
    # The sentence once in every container, twice in the long file: no doubled or lost text.
    for name, t in zip(names, together):
        said = " ".join(t.text.lower().replace(",", "").replace(".", "").split())
        if name.startswith("birch") or name.startswith("en_harvard"):
            assert said.count("birch canoe") == (2 if "both-ends" in name else 1), (name, t.text)


def test_sampled_fallbacks_are_seeded_by_each_window_not_by_the_batch(settings, crowd):
    # A compression-ratio threshold no text meets sends every window through every temperature:
    # sampling, which whisper draws for the whole batch from one global generator.
    names, jobs = crowd
    base = stages.transcriber(settings)
    options = dataclasses.replace(base.options, compression_ratio_threshold=0.0, best_of=2, temperatures=(0.0, 0.6, 1.0))
    tr = Transcriber(base.model, base.device, options)
    few = [jobs[0], jobs[2], jobs[7]]  # the sentence as wav and opus, the TIMIT sentence
    together = tr.transcribe(few)
    alone = [tr.transcribe([job])[0] for job in few]
    again = tr.transcribe(list(reversed(few)))[::-1]
    assert {s.temperature for t in together for s in t.segments} == {1.0}  # every window sampled
    for t, a, g in zip(together, alone, again):
        assert _same(t, a) and _same(t, g), (t.text, a.text, g.text)
