"""Batched openai-whisper decoding of speech windows, one path for CPU and GPU.

Each window (≤ 30 s, cut in pauses by segmentation) is an independent whisper
input, or, if 15 s or shorter, shares one with other short windows (packed 1 s of
silence apart; its words are split back by their times): inputs of one file, and
of several files, go through the encoder and ``whisper.decode`` together as a
batch. No text is carried from one input into the next, which is what keeps long
recordings free of repetition loops. Per input, whisper's own safeguards apply:
temperature fallback on compression ratio and log-probability, and no-speech
detection. Word timestamps come from whisper's cross-attention alignment, run on
the encoder output, and the cross-attention keys and values, already computed for
decoding.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import whisper
import whisper.timing
from whisper.audio import N_SAMPLES, log_mel_spectrogram, pad_or_trim
from whisper.timing import add_word_timestamps
from whisper.tokenizer import get_tokenizer

from scribeline.graphed_decoding import GraphedInference
from scribeline.media import SAMPLE_RATE
from scribeline.model_thread import cpu_threads, on_model_thread
from scribeline.segmentation import Window

log = logging.getLogger(__name__)

SENTENCE_END = (".", "?", "!", "。", "？", "！")


@dataclass(frozen=True)
class TranscribeOptions:
    language: str | None = None  # None: detect from speech windows
    task: str = "transcribe"  # or "translate" (to English)
    batch_size: int = 0  # 0: choose from the device
    word_timestamps: bool = True
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    beam_size: int | None = 5  # beam search at temperature 0 (None: greedy)
    best_of: int = 5  # samples per window when falling back to temperature > 0
    language_windows: int = 3  # speech windows used to detect a file's language
    pack_short_windows: bool = True  # short windows share one 30-s input (needs word timestamps to split)


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass
class Segment:
    """A sentence (or a whole window without word timestamps) with its quality signals."""

    start: float
    end: float
    text: str
    window_index: int
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float
    words: list[Word] = field(default_factory=list)
    channel: int | None = None


@dataclass
class Transcript:
    language: str
    language_probability: float
    segments: list[Segment]
    windows_decoded: int = 0
    windows_silent: int = 0  # windows whisper judged to hold no speech

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments).strip()

    @property
    def no_speech(self) -> bool:
        return not self.segments

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Transcript":
        segs = [Segment(**{**s, "words": [Word(**w) for w in s["words"]]}) for s in d["segments"]]
        return cls(d["language"], d["language_probability"], segs, d.get("windows_decoded", 0), d.get("windows_silent", 0))


@dataclass
class AudioJob:
    """The windows of one audio track, and how to read their samples."""

    read: Callable[[int, int], np.ndarray]  # (start, end) sample offsets -> float32 samples
    windows: Sequence[Window]
    channel: int | None = None
    beam_size: int | None = None  # overrides the options' beam size for this track (narrowband audio)


# ------------------------------------------------------------------ packing
PACK_MAX_S = 15.0  # windows at most this long may share one whisper input...
PACK_GAP_S = 1.0  # ...with this much silence between them
PACK_SPILL_S = 0.3  # a word centred further than this outside its window's audio voids the packing


@dataclass
class _Input:
    """One whisper input: a window, or several short windows packed with silence between them."""

    parts: list[tuple[int, Window]]  # (job index, window), in the order they are laid out

    @property
    def packed(self) -> bool:
        return len(self.parts) > 1

    def offsets(self) -> list[int]:
        """Sample offset of each part in the input's audio."""
        out, at = [], 0
        for _, w in self.parts:
            out.append(at)
            at += w.num_samples + int(PACK_GAP_S * SAMPLE_RATE)
        return out

    @property
    def num_samples(self) -> int:
        return self.offsets()[-1] + self.parts[-1][1].num_samples

    def speech_samples(self) -> int:
        return sum(s.end - s.start for _, w in self.parts for s in w.speech)

    def read(self, jobs: Sequence[AudioJob]) -> np.ndarray:
        gap = np.zeros(int(PACK_GAP_S * SAMPLE_RATE), dtype=np.float32)
        pieces = []
        for j, w in self.parts:
            if pieces:
                pieces.append(gap)
            pieces.append(np.asarray(jobs[j].read(w.start, w.end), dtype=np.float32))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def pack_windows(parts: list[tuple[int, Window]], max_s: float = PACK_MAX_S) -> list[_Input]:
    """Whisper inputs for windows that share a language and beam: first-fit decreasing.

    A window costs the encoder, and every decoding step's cross-attention, a full 30 s
    whatever its length. Windows of at most ``max_s`` (of any jobs) are laid out
    together, PACK_GAP_S of silence apart, up to 30 s; longer windows stay alone.
    """
    gap = int(PACK_GAP_S * SAMPLE_RATE)
    inputs: list[_Input] = []
    shared: list[_Input] = []  # the inputs short windows may join
    for part in sorted(parts, key=lambda p: -p[1].num_samples):
        n = part[1].num_samples
        short = n <= max_s * SAMPLE_RATE
        fits = next((inp for inp in shared if inp.num_samples + gap + n <= N_SAMPLES), None) if short else None
        if fits is not None:
            fits.parts.append(part)
            continue
        inputs.append(_Input([part]))
        if short:
            shared.append(inputs[-1])
    return inputs


# --------------------------------------------------------------------- model
_models: dict[tuple[str, str], "whisper.Whisper"] = {}
_models_lock = threading.Lock()


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(spec: str, device: str = "auto", download_root: str | None = None,
               cpu_int8: bool = False) -> "whisper.Whisper":
    """Load a checkpoint (path) or a model name (whisper downloads it) once per process.

    ``cpu_int8`` quantizes the linear layers and the output projection to int8
    (dynamic quantization) when the device is the CPU.
    """
    return on_model_thread(_load_model, spec, device, download_root, cpu_int8)


def _load_model(spec: str, device: str, download_root: str | None, cpu_int8: bool) -> "whisper.Whisper":
    device = resolve_device(device)
    cpu_int8 = cpu_int8 and device == "cpu"
    key = (spec, device, cpu_int8)
    with _models_lock:
        if key in _models:
            return _models[key]
        if device == "cpu":
            torch.set_num_threads(cpu_threads())
        path = Path(spec).expanduser()
        if path.exists():
            model = whisper.load_model(str(path), device=device)
            heads = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True).get("alignment_heads")
            name = path.stem
            if heads is None and name in whisper._ALIGNMENT_HEADS:
                heads = whisper._ALIGNMENT_HEADS[name]
            if heads is not None:
                model.set_alignment_heads(heads if isinstance(heads, bytes) else bytes(heads))
        elif spec in whisper.available_models():
            model = whisper.load_model(spec, device=device, download_root=download_root)
        else:
            raise ValueError(f"whisper model {spec!r} is neither a checkpoint file nor one of {whisper.available_models()}")
        model.eval()
        if cpu_int8:
            model = quantize_for_cpu(model)
            model.scribeline_cpu_optimized = True
        _warm_up_alignment()
        _models[key] = model
        return model


def _warm_up_alignment() -> None:
    # whisper's DTW is compiled by numba on first use (seconds): pay that at load, not per file.
    from whisper.timing import dtw

    dtw(torch.zeros(4, 4))


class _Int8LogitsTextDecoder(whisper.model.TextDecoder):
    """whisper's TextDecoder with the output projection as an int8 matrix.

    The projection onto the 51,864-token vocabulary reads the whole embedding matrix
    at every decoding step; in float32 that memory traffic is the largest single
    cost of greedy decoding on a CPU. The forward pass is whisper's, but for that line.
    """

    logits_proj: torch.nn.Module

    def forward(self, x, xa, kv_cache=None):
        offset = next(iter(kv_cache.values())).shape[1] if kv_cache else 0
        x = self.token_embedding(x) + self.positional_embedding[offset : offset + x.shape[-1]]
        x = x.to(xa.dtype)
        for block in self.blocks:
            x = block(x, xa, mask=self.mask, kv_cache=kv_cache)
        x = self.ln(x)
        return self.logits_proj(x).float()


class _PreparedCrossAttention(whisper.model.MultiHeadAttention):
    """whisper's cross-attention, with the audio keys and values laid out once per decode.

    While decoding, every step attends from one new token to all 1,500 encoder states
    of every window in the batch. whisper re-permutes the cached keys and values for
    each step and runs scaled_dot_product_attention, whose CPU kernel is slow for a
    single query (and slower still in bfloat16). Here, at a decode's first step, the
    keys (scaled) and values are projected from the audio in ``prepared_dtype``
    (bfloat16 where the CPU computes it natively: half the memory read per step),
    straight into the layouts the steps read, and each step is two batched matrix
    products. Measured on 2 cores, batch of 16 windows: 3.5 ms -> 2.0 ms per layer and
    step; the projection and layout, once per layer and decode, 49-69 ms through the int8
    layers and a scaling and re-layout pass -> 37 ms. The sums run in another order
    than the fused kernel's, so a token of an uncertain window can flip (as between
    whisper's own two attention paths). Alignment reads the decode's kept keys and
    values; calls without a cache or kept keys take whisper's own path.
    """

    prepared_dtype: torch.dtype = torch.float32
    projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # key weight (scaled), value weight, value bias
    kept: tuple[torch.Tensor, torch.Tensor] | None = None  # one input's laid-out keys/values, for its alignment

    def keep_projections(self) -> None:
        """Keep the key and value projections in ``prepared_dtype`` (taken before the layers are
        quantized; bfloat16 halves what these copies add), the key's with the attention scale folded in."""
        head = self.key.weight.shape[0] // self.n_head
        weights = (self.key.weight.detach() * head**-0.5, self.value.weight.detach(), self.value.bias.detach())
        self.projections = tuple(w.to(self.prepared_dtype, copy=True).contiguous() for w in weights)

    def forward(self, x, xa=None, mask=None, kv_cache=None):
        if kv_cache is None and xa is not None and self.kept is not None:
            return self._attend(x, *self.kept)
        if kv_cache is None or xa is None:
            return super().forward(x, xa, mask, kv_cache)
        if self.key not in kv_cache:  # the decode's first step
            kv_cache[self.key], kv_cache[self.value] = self._lay_out(xa)
        return self._attend(x, kv_cache[self.key], kv_cache[self.value])

    def _lay_out(self, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys [batch, heads, dim, frames] and values [batch, heads, frames, dim] of the audio states."""
        key, value, bias = (p.to(self.prepared_dtype) for p in self.projections)
        audio = xa.to(self.prepared_dtype)
        n_batch, n_audio, n_state = audio.shape
        head = n_state // self.n_head
        # W @ audio^T gives the keys already as [state, frames]: no permuting copy.
        kt = (key @ audio.transpose(1, 2)).view(n_batch, self.n_head, head, n_audio)
        vv = torch.nn.functional.linear(audio, value, bias).view(n_batch, n_audio, self.n_head, head)
        return kt, vv.permute(0, 2, 1, 3).contiguous()

    def _attend(self, x, kt, vv):
        """One or more new tokens' attention to laid-out keys and values; returns the output and
        whisper's qk (alignment reads them: kt carries whisper's scaling)."""
        q = self.query(x)
        n_batch, n_ctx, n_state = q.shape
        q = q.view(n_batch, n_ctx, self.n_head, -1).permute(0, 2, 1, 3).to(kt.dtype)
        qk = (q @ kt).float()
        out = (torch.softmax(qk, dim=-1).to(vv.dtype) @ vv).permute(0, 2, 1, 3).reshape(n_batch, n_ctx, n_state)
        return self.out(out.to(x.dtype)), qk


def quantize_for_cpu(model):
    """Dynamic int8 quantization of the decoder: its linear layers and the vocabulary projection.

    The decoder runs once per token and is bound by memory traffic, which int8
    weights cut by four. The encoder is compute-bound and runs in bfloat16 instead
    where the CPU has native bfloat16 (see ``cpu_bf16_supported``).
    """
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    def plain(module):
        # whisper's Linear subclass is not in quantize_dynamic's type map: swap in nn.Linear.
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and type(child) is not torch.nn.Linear:
                new = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                new.load_state_dict(child.state_dict())
                setattr(module, name, new)
            else:
                plain(child)

    plain(model.decoder)
    prepared_dtype = torch.bfloat16 if cpu_bf16_supported() else torch.float32
    for block in model.decoder.blocks:
        block.cross_attn.__class__ = _PreparedCrossAttention
        block.cross_attn.prepared_dtype = prepared_dtype
        block.cross_attn.keep_projections()
    embedding = model.decoder.token_embedding.weight
    projection = torch.nn.Linear(embedding.shape[1], embedding.shape[0], bias=False)
    projection.weight = torch.nn.Parameter(embedding.detach().clone(), requires_grad=False)
    model.decoder.logits_proj = projection
    model.decoder.__class__ = _Int8LogitsTextDecoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice that eager quantization moves to torchao
        # One scale per output row: a single scale for the whole vocabulary matrix costs accuracy.
        model.decoder = quantize_dynamic(model.decoder, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return model


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 / AMX); emulated it is slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_batch_size(device: str) -> int:
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        # ~350 MiB per window covers large-v3 in fp16 with a 224-token KV cache.
        return int(max(4, min(64, free // (350 * 2**20))))
    # On a CPU the decoder's per-step cost is mostly fixed overhead, so 16 windows per
    # batch decode faster than 8; the encoder runs them 4 at a time (ENCODE_CHUNK_CPU).
    return 16


ENCODE_CHUNK_CPU = 4  # measured on 2 cores: 4 windows per encoder call ran ~4 % faster than 8, 16 ~10 % slower (cache)


# ------------------------------------------------------- word-alignment speed
# A 16-comparator sorting network for 7 values (optimal for n = 7); its middle output is the median.
_SORT7 = ((0, 6), (2, 3), (4, 5), (0, 2), (1, 4), (3, 6), (0, 1), (2, 5), (3, 4), (1, 2), (4, 6), (2, 3), (4, 5),
          (1, 2), (3, 4), (5, 6))
_whisper_median_filter = whisper.timing.median_filter


def median_filter(x: torch.Tensor, filter_width: int) -> torch.Tensor:
    """whisper.timing.median_filter, with the same results, for its width 7 on the CPU.

    whisper's CPU path sorts every 7-sample window of the alignment heads' weights
    (``unfold().sort()``): measured, that was ~45 % of word alignment. Taking the middle
    of a sorting network over 7 shifted views gives the identical medians ~8× faster
    (tested against whisper's on random data and on every 0/1 input). Other widths,
    small inputs and GPU tensors go to whisper's own function.
    """
    if filter_width != 7 or x.is_cuda or x.ndim < 3 or x.shape[-1] <= filter_width // 2:
        return _whisper_median_filter(x, filter_width)
    n = x.shape[-1]
    padded = torch.nn.functional.pad(x, (3, 3, 0, 0), mode="reflect")  # whisper pads the same way
    v = [padded[..., i : i + n] for i in range(7)]
    for a, b in _SORT7:
        v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])
    return v[3]


# whisper's find_alignment looks median_filter up in its module: point it at the faster twin.
whisper.timing.median_filter = median_filter


@dataclass
class _AudioKeys:
    """A decoded batch's cross-attention keys and values, per decoder block, as decoding laid them out."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # (keys [rows, heads, dim, frames], values [rows, heads, frames, dim])
    rows_per_input: int  # beam search and best-of repeat each input

    @classmethod
    def kept_by(cls, model, kv_cache: dict | None, n_group: int) -> "_AudioKeys | None":
        layers = []
        for block in model.decoder.blocks:
            att = block.cross_attn
            kt = (kv_cache or {}).get(att.key)
            if not isinstance(att, _PreparedCrossAttention) or kt is None:
                return None  # whisper's own attention (GPU): alignment computes them again
            layers.append((kt, kv_cache[att.value]))
        return cls(layers, n_group)

    @contextmanager
    def aligning(self, model, index: int):
        """Word alignment of input ``index`` of the batch reads its keys and values from here."""
        row = index * self.rows_per_input
        blocks = model.decoder.blocks
        try:
            for block, (kt, vv) in zip(blocks, self.layers):
                block.cross_attn.kept = (kt[row : row + 1], vv[row : row + 1])
            yield
        finally:
            for block in blocks:
                block.cross_attn.kept = None


class _GroupedDecodingTask(whisper.decoding.DecodingTask):
    """whisper's DecodingTask with the audio features repeated per beam / sample.

    openai-whisper 20250625 repeats the text tokens by the group size (beam_size or
    best_of) but not the audio features, so beam search and best-of sampling fail
    for batches of more than one input. Repeating the features here fixes that.
    ``graphed``: whisper's decoder steps through ``GraphedInference`` (on a GPU, one
    CUDA graph replay per token instead of hundreds of kernel launches).
    """

    def __init__(self, model, options: whisper.DecodingOptions, graphed: bool = False):
        super().__init__(model, options)
        if graphed:
            self.inference = GraphedInference(model, len(self.initial_tokens), self.sample_len,
                                              graphs=model.device.type == "cuda")
            if hasattr(self.decoder, "inference"):  # beam search holds the inference it rearranges
                self.decoder.inference = self.inference

    def run(self, mel: torch.Tensor):
        """whisper's run; the cross-attention keys and values it laid out are kept in ``audio_keys``."""
        self.audio_keys: _AudioKeys | None = None
        inference, cleanup = self.inference, self.inference.cleanup_caching

        def keep_then_clean_up():
            self.audio_keys = _AudioKeys.kept_by(self.model, getattr(inference, "kv_cache", None), self.n_group)
            cleanup()

        inference.cleanup_caching = keep_then_clean_up
        return super().run(mel)

    def _get_audio_features(self, mel: torch.Tensor) -> torch.Tensor:
        features = super()._get_audio_features(mel)
        return features.repeat_interleave(self.n_group, dim=0) if self.n_group > 1 else features

    def _detect_language(self, audio_features: torch.Tensor, tokens: torch.Tensor):
        return super()._detect_language(audio_features[:: self.n_group], tokens)


class _EncodedModel:
    """Lets whisper's alignment run the decoder on audio features we already encoded."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self._model.decoder(tokens, features)


# ---------------------------------------------------------------- transcribe
class Transcriber:
    """Batch-decodes the windows of many audio jobs through one loaded model."""

    def __init__(self, model, device: str, options: TranscribeOptions):
        self.model = model
        self.device = device
        self.options = options
        self.fp16 = device.startswith("cuda")
        self.dtype = torch.float16 if self.fp16 else torch.float32
        self.batch_size = options.batch_size or default_batch_size(device)
        self.timings: dict[str, float] = {}  # seconds per step, summed over this transcriber's life
        # On a CPU with native bfloat16 the encoder (compute-bound) runs in bfloat16.
        self.cpu_bf16 = device == "cpu" and getattr(model, "scribeline_cpu_optimized", False) and cpu_bf16_supported()

    @contextmanager
    def _timed(self, step: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - start

    # Encoding -----------------------------------------------------------
    def _mel(self, samples: np.ndarray) -> torch.Tensor:
        audio = pad_or_trim(torch.from_numpy(np.array(samples, dtype=np.float32)), N_SAMPLES)
        return log_mel_spectrogram(audio, self.model.dims.n_mels, device=self.device)

    @torch.no_grad()
    def _encode(self, samples: list[np.ndarray]) -> torch.Tensor:
        mel = torch.stack([self._mel(s) for s in samples]).to(self.dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16):
            features = self.model.encoder(mel)
        return features.to(self.dtype)

    # Language -----------------------------------------------------------
    @torch.no_grad()
    def detect_language(self, job: AudioJob) -> tuple[str, float]:
        """Language of a track from its speech-richest windows, not its first 30 s."""
        if self.options.language:
            return self.options.language, 1.0
        if not self.model.is_multilingual:
            return "en", 1.0
        ranked = sorted(job.windows, key=lambda w: -sum(s.end - s.start for s in w.speech))
        chosen = ranked[: self.options.language_windows]
        if not chosen:
            return "en", 0.0
        features = self._encode([job.read(w.start, w.end) for w in chosen])
        _, probs = self.model.detect_language(features)
        weights = np.array([sum(s.end - s.start for s in w.speech) for w in chosen], dtype=np.float64)
        weights /= weights.sum()
        total: dict[str, float] = {}
        for weight, p in zip(weights, probs):
            for lang, v in p.items():
                total[lang] = total.get(lang, 0.0) + weight * v
        lang = max(total, key=total.get)
        return lang, float(total[lang])

    # Decoding -----------------------------------------------------------
    def _decode(self, features: torch.Tensor, language: str, temperature: float, beam_size: int | None):
        opts = whisper.DecodingOptions(
            task=self.options.task,
            language=language,
            temperature=temperature,
            best_of=self.options.best_of if temperature > 0 else None,
            beam_size=beam_size if temperature == 0 else None,
            without_timestamps=True,  # window edges + word alignment give the times
            fp16=self.fp16,
        )
        # On a GPU the decoder steps run as CUDA graphs (see graphed_decoding).
        task = _GroupedDecodingTask(self.model, opts, graphed=self.fp16)
        results = task.run(features)
        return results, task.audio_keys

    def _needs_fallback(self, r) -> bool:
        o = self.options
        if r.no_speech_prob > o.no_speech_threshold and r.avg_logprob < o.logprob_threshold:
            return False  # silence: no point in sampling harder
        return r.compression_ratio > o.compression_ratio_threshold or r.avg_logprob < o.logprob_threshold

    def _is_silent(self, r) -> bool:
        o = self.options
        return not r.text.strip() or (r.no_speech_prob > o.no_speech_threshold and r.avg_logprob < o.logprob_threshold)

    def transcribe(self, jobs: Sequence[AudioJob], progress: Callable[[int, int], None] | None = None) -> list[Transcript]:
        # On the model thread, so decodes never overlap: whisper.decode installs KV-cache
        # hooks on the model itself, and two decodes at once corrupt each other's caches.
        return on_model_thread(self._transcribe_on_model_thread, jobs, progress)

    def _transcribe_on_model_thread(self, jobs: Sequence[AudioJob], progress: Callable[[int, int], None] | None) -> list[Transcript]:
        if self.device == "cpu":
            # OpenMP's thread count is per calling thread (silero-vad's import sets 1 for
            # the thread that imports it, which is this one).
            torch.set_num_threads(cpu_threads())
        return self._transcribe(jobs, progress)

    @torch.no_grad()
    def _transcribe(self, jobs: Sequence[AudioJob], progress: Callable[[int, int], None] | None) -> list[Transcript]:
        languages = [self.detect_language(job) for job in jobs]
        beams = [job.beam_size or self.options.beam_size for job in jobs]

        def setup(inp: _Input) -> tuple[str, int | None]:
            j = inp.parts[0][0]
            return languages[j][0], beams[j]

        def order(inputs: list[_Input]) -> list[_Input]:
            # By language and beam so that one batch shares one decoder set-up, and by length
            # so that a batch's inputs need similar numbers of decoding steps.
            return sorted(inputs, key=lambda inp: (setup(inp)[0], setup(inp)[1] or 1, inp.speech_samples()))

        alike: dict[tuple[str, int | None], list[tuple[int, Window]]] = {}
        for j, job in enumerate(jobs):
            alike.setdefault((languages[j][0], beams[j]), []).extend((j, w) for w in job.windows)
        pack = self.options.pack_short_windows and self.options.word_timestamps  # word times split packed text
        queue = order([inp for parts in alike.values()
                       for inp in (pack_windows(parts) if pack else [_Input([p]) for p in parts])])
        per_job: list[list[Segment]] = [[] for _ in jobs]
        silent = [0] * len(jobs)
        done, total = 0, len(queue)
        while queue:
            unpacked: list[_Input] = []  # windows of packed inputs whose text could not be split
            for lo in range(0, len(queue), self.batch_size):
                batch = queue[lo : lo + self.batch_size]
                unpacked += self._run_batch(batch, [setup(inp) for inp in batch], jobs, per_job, silent)
                done += len(batch)
                if progress:
                    progress(done, total + len(unpacked))
            if unpacked:
                log.info("decoding %d packed windows again alone", len(unpacked))
            total += len(unpacked)
            queue = order(unpacked)
        out = []
        for j, job in enumerate(jobs):
            segs = sorted(per_job[j], key=lambda s: s.start)
            out.append(Transcript(languages[j][0], round(languages[j][1], 4), segs, len(job.windows), silent[j]))
        return out

    def _run_batch(self, batch: list[_Input], setups: list[tuple[str, int | None]], jobs: Sequence[AudioJob],
                   per_job: list[list[Segment]], silent: list[int]) -> list[_Input]:
        """Encode, decode and align one batch into ``per_job`` and ``silent``; returns the
        windows of packed inputs that are to be decoded again alone."""
        groups: dict[tuple[str, int | None], list[int]] = {}
        for i, key in enumerate(setups):
            groups.setdefault(key, []).append(i)
        with self._timed("read"):
            samples = [inp.read(jobs) for inp in batch]
        with self._timed("encode"):
            step = ENCODE_CHUNK_CPU if self.device == "cpu" else len(samples)
            features = torch.cat([self._encode(samples[i : i + step]) for i in range(0, len(samples), step)])
        again: list[_Input] = []
        for (language, beam), idx in groups.items():
            sub = features[idx]
            with self._timed("decode"):
                results, keys = self._decode_with_fallback(sub, language, beam)
            for n, (k, r) in enumerate(zip(idx, results)):
                inp, placed = batch[k], None
                if not self._is_silent(r):
                    with self._timed("align"):
                        placed = self._segments(inp, r, sub[n], language, jobs, keys[n])
                elif not inp.packed:
                    silent[inp.parts[0][0]] += 1
                    continue
                if placed is None:  # a packed input judged silent, or its words not in its windows
                    again.extend(_Input([p]) for p in inp.parts)
                    continue
                for j, segs in placed:
                    per_job[j].extend(segs)
        return again

    def _decode_with_fallback(self, features: torch.Tensor, language: str, beam_size: int | None) -> tuple[list, list]:
        """Each input's result, and where the keys and values of the decode that gave it are (or None)."""
        temps = self.options.temperatures
        results, kept = self._decode(features, language, temps[0], beam_size)
        results = list(results)
        keys = [(kept, i) for i in range(len(results))]
        pending = [i for i, r in enumerate(results) if self._needs_fallback(r)]
        for t in temps[1:]:
            if not pending:
                break
            retried, kept = self._decode(features[pending], language, t, None)
            for n, (i, r) in enumerate(zip(pending, retried)):
                results[i], keys[i] = r, (kept, n)
            pending = [i for i in pending if self._needs_fallback(results[i])]
        return results, keys

    def _segments(self, inp: _Input, r, features: torch.Tensor, language: str, jobs: Sequence[AudioJob],
                  keys: tuple[_AudioKeys | None, int]) -> list[tuple[int, list[Segment]]] | None:
        """Each part's segments, as (job index, segments); None where a packed input's words
        cannot be told apart by window (one lies in a gap, or a window got none)."""
        base = dict(
            avg_logprob=round(float(r.avg_logprob), 4),
            no_speech_prob=round(float(r.no_speech_prob), 4),
            compression_ratio=round(float(r.compression_ratio), 4),
            temperature=float(r.temperature),
        )
        if not self.options.word_timestamps:  # never packed
            j, window = inp.parts[0]
            first = window.speech[0].start if window.speech else window.start
            last = window.speech[-1].end if window.speech else window.end
            return [(j, [Segment(first / SAMPLE_RATE, last / SAMPLE_RATE, r.text.strip(), window.index,
                                 channel=jobs[j].channel, **base)])]
        words = self._aligned_words(r, features, language, inp.num_samples, keys)
        split = _split_words(inp, words) if inp.packed else [words]
        if split is None:
            return None
        out = []
        for (j, window), at, ws in zip(inp.parts, inp.offsets(), split):
            shift, duration = at / SAMPLE_RATE, window.num_samples / SAMPLE_RATE
            start = window.start / SAMPLE_RATE  # exact: an integer sample count
            timed = [Word(round(start + min(max(w.start - shift, 0.0), duration), 3),
                          round(start + min(max(w.end - shift, 0.0), duration), 3), w.word, w.probability) for w in ws]
            if inp.packed and timed and window.speech:
                # Whisper's word times are contiguous: the silence before a packed window goes to
                # the previous window's last word or to this one's first. Where it went to the
                # previous, the first word starts late (0.4 s measured); the VAD's onset is sure.
                onset = window.speech[0].start / SAMPLE_RATE
                if onset < timed[0].start < timed[0].end:
                    timed[0] = dataclasses.replace(timed[0], start=round(onset, 3))
            row = dict(window_index=window.index, channel=jobs[j].channel, **base)
            if not timed:  # only an unpacked window: a packed one without words was refused above
                out.append((j, [Segment(start, start + duration, r.text.strip(), **row)]))
                continue
            out.append((j, [Segment(s[0].start, s[-1].end, "".join(w.word for w in s).strip(), words=s, **row)
                            for s in _sentences(timed)]))
        return out

    def _aligned_words(self, r, features: torch.Tensor, language: str, num_samples: int,
                       keys: tuple[_AudioKeys | None, int]) -> list[Word]:
        """whisper's word alignment of a decoded input; times in seconds from its start.

        Where the decode kept its cross-attention keys and values (the CPU path), the
        alignment pass reads them instead of computing them again from the audio."""
        tokenizer = get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages, language=language, task=self.options.task
        )
        seg = {"tokens": r.tokens, "seek": 0, "start": 0.0, "end": num_samples / SAMPLE_RATE}
        kept, index = keys
        with kept.aligning(self.model, index) if kept is not None else nullcontext():
            add_word_timestamps(
                segments=[seg], model=_EncodedModel(self.model), tokenizer=tokenizer, mel=features,
                num_frames=num_samples // 160, last_speech_timestamp=0.0,
            )
        return [Word(float(w["start"]), float(w["end"]), w["word"], round(float(w["probability"]), 4))
                for w in seg.get("words", [])]


def _split_words(inp: _Input, words: list[Word]) -> list[list[Word]] | None:
    """A packed input's words, per part, by where each word's middle lies.

    None if a word's middle lies more than PACK_SPILL_S outside its part's audio (in a
    gap: it cannot be told whose it is) or a part got no words (whisper skipped it):
    then the parts are decoded again alone rather than risk text landing in the wrong file.
    """
    spans = [(at / SAMPLE_RATE, (at + w.num_samples) / SAMPLE_RATE) for at, (_, w) in zip(inp.offsets(), inp.parts)]
    out: list[list[Word]] = [[] for _ in spans]
    for word in words:
        middle = (word.start + word.end) / 2
        k = next((i for i, (_, end) in enumerate(spans) if middle < end + PACK_GAP_S / 2), len(spans) - 1)
        lo, hi = spans[k]
        if not lo - PACK_SPILL_S <= middle <= hi + PACK_SPILL_S:
            return None
        out[k].append(word)
    return out if all(out) else None


def _sentences(words: list[Word]) -> list[list[Word]]:
    """Split a window's words into sentences, so subtitles and rows stay readable."""
    out, current = [], []
    for w in words:
        current.append(w)
        if w.word.strip().endswith(SENTENCE_END) and len(current) >= 3:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def transcriber_for(model_spec: str, device: str, options: TranscribeOptions, download_root: str | None = None,
                    cpu_int8: bool = False) -> Transcriber:
    device = resolve_device(device)
    return Transcriber(load_model(model_spec, device, download_root, cpu_int8), device, options)
