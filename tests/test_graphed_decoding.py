"""The fixed-cache decoder (CUDA graphs on a GPU) must decode exactly what whisper's own inference decodes."""

import pytest
import torch
import whisper

from scribeline.graphed_decoding import GraphedInference
from scribeline.transcription import _GroupedDecodingTask
from tests.conftest import MODELS

CLIPS = ["en_jfk.flac", "en_ls_1272-128104-0000.wav", "en_nasa_spacewalk_interview.wav"]


@pytest.fixture(scope="module")
def model_and_features(media_dir):
    model = whisper.load_model(str(MODELS / "tiny.en.pt"), device="cpu")
    mel = torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(whisper.load_audio(str(media_dir / c))))
                       for c in CLIPS])
    with torch.no_grad():
        return model, model.encoder(mel)


def _decode(model, features, graphed: bool, **options):
    torch.manual_seed(0)  # the same draws for both when sampling
    opts = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False, **options)
    with torch.no_grad():
        return _GroupedDecodingTask(model, opts, graphed=graphed).run(features)


@pytest.mark.parametrize("options", [{}, {"beam_size": 5}, {"temperature": 0.8, "best_of": 3}],
                         ids=["greedy", "beam search", "sampling at the fallback temperature"])
def test_fixed_cache_decodes_the_same_tokens_as_whisper(model_and_features, options):
    model, features = model_and_features
    ours = _decode(model, features, graphed=True, **options)
    theirs = _decode(model, features, graphed=False, **options)
    assert [r.tokens for r in ours] == [r.tokens for r in theirs]
    assert [r.avg_logprob for r in ours] == pytest.approx([r.avg_logprob for r in theirs], abs=1e-4)
    assert "ask not what your country can do for you" in ours[0].text.lower()


def test_the_cache_is_freed_after_a_decode(model_and_features):
    model, features = model_and_features
    task = _GroupedDecodingTask(model, whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False),
                                graphed=True)
    assert isinstance(task.inference, GraphedInference)
    with torch.no_grad():
        task.run(features[:1])
    assert task.inference.cache is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_decodes_the_same_tokens_as_whisper(model_and_features):
    model, features = model_and_features
    model = model.to("cuda")
    features = features.to("cuda", torch.float16)
    opts = dict(language="en", without_timestamps=True, fp16=True)
    with torch.no_grad():
        ours = _GroupedDecodingTask(model, whisper.DecodingOptions(**opts), graphed=True).run(features)
        theirs = _GroupedDecodingTask(model, whisper.DecodingOptions(**opts), graphed=False).run(features)
    assert [r.tokens for r in ours] == [r.tokens for r in theirs]
