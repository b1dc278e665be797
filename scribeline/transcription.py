"""Batched openai-whisper decoding of speech windows, one path for CPU and GPU.

Each window (≤ 30 s, cut in pauses by segmentation) is one whisper input: the audio
of two windows, let alone two media, never shares an input. Windows of several
files go through the decoder together as a batch only where the numerics make a
window's result independent of what else is in its batch (the CPU path: each
window encoded alone, int8 linear layers with a scale per row and exact integer
sums, sampling seeded from the window's own samples); elsewhere (GPU, float32 CPU)
a batch holds the windows of one track only. So a media's transcript depends on
its own bytes and the configuration, nothing else.

No text is carried from one input into the next, which is what keeps long
recordings free of repetition loops. Per input, whisper's own safeguards apply
(temperature fallback on compression ratio and log-probability, no-speech
detection), within a budget: no window decodes more tokens than its duration can
hold, a sequence caught in a loop stops at once, the fallbacks of all windows run
together after the first pass, and a track that holds the worker longer than its
budget stops. What the guards find is returned as flags on the transcript, never
as silent text. Word timestamps come from whisper's cross-attention alignment.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import whisper
import whisper.timing
from whisper.audio import N_SAMPLES, log_mel_spectrogram, pad_or_trim
from whisper.timing import add_word_timestamps
from whisper.tokenizer import get_tokenizer

from scribeline import guards, stopping
from scribeline.transcript import Flag, Segment, TranscribeOptions, Transcript, Word  # noqa: F401 - re-exported
from scribeline.graphed_decoding import GraphedInference
from scribeline.media import SAMPLE_RATE
from scribeline.model_thread import cpu_threads, on_model_thread
from scribeline.segmentation import Window

log = logging.getLogger(__name__)

SENTENCE_END = (".", "?", "!", "。", "？", "！")


@dataclass
class AudioJob:
    """The windows of one audio track, and how to read their samples."""

    read: Callable[[int, int], np.ndarray]  # (start, end) sample offsets -> float32 samples
    windows: Sequence[Window]
    channel: int | None = None
    beam_size: int | None = None  # overrides the options' beam size for this track (narrowband audio)


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
            # a checkpoint named as whisper names its models has that model's heads; another may
            # carry its own (reading the file again for them costs 0.2 s of a cold start)
            heads = whisper._ALIGNMENT_HEADS.get(path.stem)
            if heads is None:
                heads = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True).get("alignment_heads")
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
    """whisper's DTW is compiled by numba on first use: pay that at load, not per file, and
    once per installation, not per process (numba's cache: 3.5 s -> 0.6 s measured)."""
    import numba

    timing = whisper.timing
    if not getattr(timing.dtw_cpu, "_scribeline_cached", False):
        timing.backtrace = numba.jit(nopython=True, cache=True)(timing.backtrace.py_func)
        timing.dtw_cpu = numba.jit(nopython=True, parallel=True, cache=True)(timing.dtw_cpu.py_func)
        timing.dtw_cpu._scribeline_cached = True
    timing.dtw(torch.zeros(4, 4))


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
        """Keys [batch, heads, dim, frames] and values [batch, heads, frames, dim] of the audio states.

        One window at a time: a matrix product's rows can come out differently with the
        number of rows beside them, and a window's keys must not depend on its batch."""
        key, value, bias = (p.to(self.prepared_dtype) for p in self.projections)
        n_batch, n_audio, n_state = xa.shape
        head = n_state // self.n_head
        kts, vvs = [], []
        for audio in xa.to(self.prepared_dtype):
            # W @ audio^T gives the keys already as [state, frames]: no permuting copy.
            kts.append((key @ audio.t()).view(self.n_head, head, n_audio))
            vvs.append(torch.nn.functional.linear(audio, value, bias).view(n_audio, self.n_head, head).transpose(0, 1))
        return torch.stack(kts), torch.stack(vvs)

    def _attend(self, x, kt, vv):
        """One or more new tokens' attention to laid-out keys and values; returns the output and
        whisper's qk (alignment reads them: kt carries whisper's scaling)."""
        q = self.query(x)
        n_batch, n_ctx, n_state = q.shape
        q = q.view(n_batch, n_ctx, self.n_head, -1).permute(0, 2, 1, 3).to(kt.dtype)
        qk = (q @ kt).float()
        out = (torch.softmax(qk, dim=-1).to(vv.dtype) @ vv).permute(0, 2, 1, 3).reshape(n_batch, n_ctx, n_state)
        return self.out(out.to(x.dtype)), qk


class RowwiseInt8Linear(torch.nn.Module):
    """A linear layer in int8 whose result for one row never depends on the other rows.

    Weights carry a scale per output channel; activations are quantized with a scale
    per row (torch's dynamic quantization uses one scale for the whole batch, so a
    window's numbers moved with what shared its batch); the products are summed in
    int32, exactly, so the order of the sums cannot matter either. Measured on 2 cores:
    as fast as fbgemm's dynamic linear for the small layers, ~1.3x its time for the
    vocabulary projection at 16 rows.
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("weight", torch.round(weight / scale[:, None]).to(torch.int8))  # [out, in]
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
        q = torch.round(rows / scale).to(torch.int8)
        out = torch._int_mm(q, self.weight.t()).float() * scale * self.weight_scale
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


def quantize_for_cpu(model):
    """int8 decoder: its linear layers and the vocabulary projection, row-invariant (see RowwiseInt8Linear).

    The decoder runs once per token and is bound by memory traffic, which int8
    weights cut by four. The encoder is compute-bound and runs in bfloat16 instead
    where the CPU has native bfloat16 (see ``cpu_bf16_supported``).
    """
    prepared_dtype = torch.bfloat16 if cpu_bf16_supported() else torch.float32
    for block in model.decoder.blocks:
        block.cross_attn.__class__ = _PreparedCrossAttention
        block.cross_attn.prepared_dtype = prepared_dtype
        block.cross_attn.keep_projections()  # from the float weights, before they are quantized

    def quantize(module):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, RowwiseInt8Linear(child))
            else:
                quantize(child)

    quantize(model.decoder)
    model.decoder.logits_proj = RowwiseInt8Linear(_linear_of(model.decoder.token_embedding.weight))
    model.decoder.__class__ = _Int8LogitsTextDecoder
    return model


def _linear_of(weight: torch.Tensor) -> torch.nn.Linear:
    # on the meta device: no random initialisation of a weight replaced at once (0.3 s for tiny.en)
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)
    return linear


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
    # batch decode faster than 8.
    return 16




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

    def __init__(self, model, options: whisper.DecodingOptions, graphed: bool = False,
                 limits: "_RowLimits | None" = None):
        super().__init__(model, options)
        if limits is not None:
            limits.prepare(self.sample_begin, self.tokenizer.eot, self.n_group)
            self.logit_filters.append(limits)
            if options.temperature > 0:
                self.decoder = _SeededSampler(options.temperature, self.tokenizer.eot, limits.seeds, self.n_group)
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


class _RowLimits(whisper.decoding.LogitFilter):
    """Per-input limits on a decode, applied as a logit filter at every step.

    An input ends (its next token forced to end-of-text) once it has as many tokens
    as its audio can hold, once its last tokens loop, or once its track is past its
    deadline; a stop request (``stopping``) aborts the whole decode. ``seeds`` seed
    each input's sampling at temperature > 0. Nothing here looks at another input.
    """

    def __init__(self, max_tokens: list[int], deadlines: list[float], seeds: list[int]):
        self.max_tokens, self.deadlines, self.seeds = max_tokens, deadlines, seeds
        self.out_of_time: set[int] = set()  # inputs ended by their deadline

    def prepare(self, sample_begin: int, eot: int, n_group: int) -> None:
        self.sample_begin, self.eot, self.n_group = sample_begin, eot, n_group

    def apply(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        stopping.check()
        sampled = tokens.shape[1] - self.sample_begin
        if sampled == 0:
            return
        now = time.monotonic()
        tails = tokens[:, -min(sampled, guards.LOOP_MAX_PERIOD * guards.LOOP_REPEATS):].tolist()
        for row, tail in enumerate(tails):
            if tail[-1] == self.eot:
                continue
            i = row // self.n_group
            late = now > self.deadlines[i]
            if late:
                self.out_of_time.add(i)
            if late or sampled >= self.max_tokens[i] or guards.looping(tail):
                logits[row] = -np.inf
                logits[row, self.eot] = 0.0


class _SeededSampler(whisper.decoding.GreedyDecoder):
    """whisper's sampling at temperature > 0, each row from its own generator.

    whisper samples the whole batch from torch's global generator, so what a window
    drew depended on the rows before it and on every earlier draw in the process.
    Seeded from the window's own samples, a window draws the same tokens wherever it is.
    """

    def __init__(self, temperature: float, eot: int, seeds: list[int], n_group: int):
        super().__init__(temperature, eot)
        self.generators = [torch.Generator().manual_seed(seed * 1009 + k) for seed in seeds for k in range(n_group)]

    def update(self, tokens: torch.Tensor, logits: torch.Tensor, sum_logprobs: torch.Tensor):
        # Inverse-transform sampling, one uniform draw per row: the same distribution as
        # torch.multinomial, at 1.5 ms a step for 15 rows instead of 24 (measured on 2 cores).
        cumulative = torch.softmax(logits.float() / self.temperature, dim=-1).cumsum(dim=-1).cpu()
        draws = torch.cat([torch.rand(1, generator=g) for g in self.generators])[:, None] * cumulative[:, -1:]
        next_tokens = torch.searchsorted(cumulative, draws).squeeze(1).clamp_(max=cumulative.shape[1] - 1)
        next_tokens = next_tokens.to(logits.device)
        logprobs = torch.nn.functional.log_softmax(logits.float(), dim=-1)
        current = logprobs[torch.arange(logprobs.shape[0]), next_tokens]
        sum_logprobs += current * (tokens[:, -1] != self.eot)
        next_tokens[tokens[:, -1] == self.eot] = self.eot
        tokens = torch.cat([tokens, next_tokens[:, None]], dim=-1)
        return tokens, (tokens[:, -1] == self.eot).all()


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
        # Where a window's numbers cannot move with its batch (the int8 CPU path, windows
        # encoded one at a time), windows of several tracks share batches; elsewhere a batch
        # holds one track's windows only.
        self.row_invariant = device == "cpu" and getattr(model, "scribeline_cpu_optimized", False)

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
        """Encoder output per window. On a CPU one window per call: a matrix product's rows can
        come out differently with the number of rows beside them (and it costs little: the
        encoder is compute-bound)."""
        mel = torch.stack([self._mel(s) for s in samples]).to(self.dtype)
        step = 1 if self.device == "cpu" else len(samples)
        chunks = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16):
            for i in range(0, len(samples), step):
                stopping.check()  # a window's encoding is the longest step that cannot be interrupted
                chunks.append(self.model.encoder(mel[i : i + step]))
        return torch.cat(chunks).to(self.dtype)

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
    def _decode(self, features: torch.Tensor, language: str, temperature: float, beam_size: int | None,
                limits: _RowLimits | None = None):
        opts = whisper.DecodingOptions(
            task=self.options.task,
            language=language,
            temperature=temperature,
            sample_len=max(limits.max_tokens) + 1 if limits else None,  # +1: room for the forced end
            best_of=self.options.best_of if temperature > 0 else None,
            beam_size=beam_size if temperature == 0 else None,
            without_timestamps=True,  # window edges + word alignment give the times
            fp16=self.fp16,
        )
        # On a GPU the decoder steps run as CUDA graphs (see graphed_decoding).
        task = _GroupedDecodingTask(self.model, opts, graphed=self.fp16, limits=limits)
        results = task.run(features)
        return results, task.audio_keys

    def max_tokens(self, window: Window) -> int:
        """The most tokens a window's audio can hold (whisper's own cap: half the text context)."""
        cap = self.model.dims.n_text_ctx // 2
        return min(cap, int(np.ceil(self.options.max_tokens_per_s * window.num_samples / SAMPLE_RATE)) + 8)

    def _needs_fallback(self, r, max_tokens: int) -> bool:
        o = self.options
        if r.no_speech_prob > o.no_speech_threshold and r.avg_logprob < o.logprob_threshold:
            return False  # silence: no point in sampling harder
        return (r.compression_ratio > o.compression_ratio_threshold or r.avg_logprob < o.logprob_threshold
                or len(r.tokens) >= max_tokens or guards.looping(r.tokens))

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
        """First every window at the first temperature, then the fallbacks of all windows that
        need them together, temperature by temperature, within each track's budget."""
        stopping.check()
        tracks = [self._track(job) for job in jobs]
        items = [_Item(t, w) for t, track in enumerate(tracks) for w in track.job.windows]
        done, total = 0, len(items)
        temps = self.options.temperatures
        pending: list[_Item] = []
        for batch in self._batches(items, tracks, temps[0]):
            pending += self._decode_batch(batch, tracks, temps[0])
            done += len(batch)
            if progress:
                progress(done, total)
        for track in tracks:  # most windows failing at once: sampling harder will not help, and costs most
            if guards.unintelligible(track.failing, track.speech_windows, min_windows=guards.UNINTELLIGIBLE_MIN_WINDOWS):
                track.flag("unintelligible", f"{track.failing} of {track.speech_windows} speech windows failed whisper's "
                           f"checks: {self._cannot_follow()}; no fallback decoding")
        for temperature in temps[1:]:
            retry = [it for it in pending if self._may_retry(it, tracks[it.track])]
            for it in pending:
                if it not in retry:  # its last result stands
                    self._settle(it, tracks[it.track], it.features, (None, 0))
            pending = []
            total += len(retry)
            for batch in self._batches(retry, tracks, temperature):
                pending += self._decode_batch(batch, tracks, temperature)
                done += len(batch)
                if progress:
                    progress(done, total)
        # At the last temperature _decode_batch settles every window: its result stands (as in whisper).
        for track in tracks:
            if guards.unintelligible(track.unresolved, track.speech_windows) and not track.flagged("unintelligible"):
                track.flag("unintelligible", f"{track.unresolved} of {track.speech_windows} speech windows failed "
                           f"whisper's checks after every fallback: {self._cannot_follow()}")
        return [track.transcript() for track in tracks]

    def _cannot_follow(self) -> str:
        if self.model.is_multilingual:
            return "noise, or speech the model cannot follow"
        return "an English-only model given speech it cannot transcribe (another language?)"

    def _track(self, job: AudioJob) -> _Track:
        language, probability = self.detect_language(job)
        duration_s = sum(w.num_samples for w in job.windows) / SAMPLE_RATE
        budget = max(self.options.decode_budget_min_s, self.options.decode_budget_factor * duration_s)
        return _Track(job, language, probability, job.beam_size or self.options.beam_size, budget)

    def _batches(self, items: list[_Item], tracks: list[_Track], temperature: float) -> list[list[_Item]]:
        """Batches of windows that share a decoder set-up (language, beam), similar lengths together;
        one track's windows only where a window's numbers could move with its batch."""
        def key(it: _Item):
            track = tracks[it.track]
            beam = track.beam if temperature == 0 else None
            return (track.language, beam or 1, 0 if self.row_invariant else it.track)

        groups: dict[tuple, list[_Item]] = {}
        for it in items:
            groups.setdefault(key(it), []).append(it)
        out = []
        for k in sorted(groups):
            alike = sorted(groups[k], key=lambda it: (_speech_samples(it.window), it.track, it.window.index))
            out += [alike[i : i + self.batch_size] for i in range(0, len(alike), self.batch_size)]
        return out

    def _decode_batch(self, batch: list[_Item], tracks: list[_Track], temperature: float) -> list[_Item]:
        """Decode one batch at ``temperature``; settle what is final, return what needs a fallback."""
        batch = [it for it in batch if not tracks[it.track].out_of_time]
        if not batch:
            return []
        first = temperature == self.options.temperatures[0]
        if first:
            with self._timed("read"):
                samples = [np.ascontiguousarray(tracks[it.track].job.read(it.window.start, it.window.end),
                                                dtype=np.float32) for it in batch]
            for it, x in zip(batch, samples):
                it.seed = zlib.crc32(x.tobytes())  # sampling seeded from the window's own audio
            with self._timed("encode"):
                features = self._encode(samples)
        else:
            features = torch.stack([it.features for it in batch])
        now = time.monotonic()
        for it in batch:
            tracks[it.track].begin(now)
        head = tracks[batch[0].track]
        limits = _RowLimits([self.max_tokens(it.window) for it in batch],
                            [tracks[it.track].deadline() for it in batch], [it.seed for it in batch])
        with self._timed("decode"):
            results, kept = self._decode(features, head.language, temperature, head.beam if first else None, limits)
        last = temperature == self.options.temperatures[-1]
        retry = []
        for n, (it, r) in enumerate(zip(batch, results)):
            track = tracks[it.track]
            it.result = r
            if n in limits.out_of_time and not track.out_of_time:
                track.out_of_time = True
                track.flag("decode_budget", f"decoding held the model past the track's budget of {track.budget_s:.0f} s "
                           f"({self.options.decode_budget_factor:g}x its duration); windows after it were not decoded")
            if first and not self._is_silent(r):
                track.speech_windows += 1
                track.failing += self._needs_fallback(r, limits.max_tokens[n])
            if not last and self._needs_fallback(r, limits.max_tokens[n]) and n not in limits.out_of_time:
                it.features = features[n]
                retry.append(it)
                continue
            self._settle(it, track, features[n], (kept, n))
        return retry

    def _may_retry(self, it: _Item, track: _Track) -> bool:
        """Whether a window may be decoded at the next temperature (else its result stands, flagged)."""
        if track.out_of_time or track.flagged("unintelligible"):
            return False
        if time.monotonic() > track.deadline(share=0.5):
            if not track.flagged("fallback_budget"):
                track.flag("fallback_budget", f"fallback decoding stopped at half the track's budget "
                           f"({track.budget_s / 2:.0f} s); some windows keep a result that failed whisper's checks")
            return False
        return True

    def _settle(self, it: _Item, track: _Track, features: torch.Tensor, keys: tuple[_AudioKeys | None, int]) -> None:
        """A window's final result: its segments, or a silent window counted; and the guards' findings."""
        r, window = it.result, it.window
        if self._is_silent(r):
            track.silent += 1
            return
        with self._timed("align"):
            segments = self._segments(window, track, r, features, keys)
        track.segments.extend(segments)
        track.unresolved += self._needs_fallback(r, self.max_tokens(window))
        start, end = segments[0].start, segments[-1].end
        here = dict(window_index=window.index, start=start, end=end)
        speech_s = sum(sp.end - sp.start for sp in window.speech) / SAMPLE_RATE or window.num_samples / SAMPLE_RATE
        if guards.looping(r.tokens):
            track.flag("looping", "decoding looped on a repeated pattern and was stopped", **here)
        elif len(r.tokens) >= self.max_tokens(window):
            track.flag("token_budget", f"decoding reached the window's budget of {self.max_tokens(window)} tokens", **here)
        repeated = guards.repeated_phrase(r.text)
        if repeated:
            track.flag("repeated_text", f"a phrase of {repeated[0]}+ words said {repeated[1]} times in one window", **here)
        rate = guards.too_fast(r.text, speech_s)
        if rate:
            track.flag("word_rate", f"{rate:.1f} words per second of speech (at most {guards.MAX_WORDS_PER_S:g} are possible)",
                       **here)
        if r.compression_ratio > self.options.compression_ratio_threshold:
            track.flag("compression_ratio", f"text compresses {r.compression_ratio:.1f}x (repetitive) in its last decode",
                       **here)

    def _segments(self, window: Window, track: _Track, r, features: torch.Tensor,
                  keys: tuple[_AudioKeys | None, int]) -> list[Segment]:
        """A decoded window's segments: its sentences with their words, or the whole window without word timestamps."""
        row = dict(
            window_index=window.index,
            avg_logprob=round(float(r.avg_logprob), 4),
            no_speech_prob=round(float(r.no_speech_prob), 4),
            compression_ratio=round(float(r.compression_ratio), 4),
            temperature=float(r.temperature),
            channel=track.job.channel,
        )
        start, duration = window.start / SAMPLE_RATE, window.num_samples / SAMPLE_RATE  # exact: integer sample counts
        if not self.options.word_timestamps:
            first = window.speech[0].start if window.speech else window.start
            last = window.speech[-1].end if window.speech else window.end
            return [Segment(first / SAMPLE_RATE, last / SAMPLE_RATE, r.text.strip(), **row)]
        words = self._aligned_words(r, features, track.language, window.num_samples, keys)
        timed = [Word(round(start + min(max(w.start, 0.0), duration), 3), round(start + min(max(w.end, 0.0), duration), 3),
                      w.word, w.probability) for w in words]
        if not timed:
            return [Segment(start, start + duration, r.text.strip(), **row)]
        return [Segment(s[0].start, s[-1].end, "".join(w.word for w in s).strip(), words=s, **row) for s in _sentences(timed)]

    def _aligned_words(self, r, features: torch.Tensor, language: str, num_samples: int,
                       keys: tuple[_AudioKeys | None, int]) -> list[Word]:
        """whisper's word alignment of a decoded window; times in seconds from its start.

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


@dataclass(eq=False)
class _Item:
    """One window in flight: its track, the seed of its sampling, its features while it may be decoded again."""

    track: int
    window: Window
    seed: int = 0
    features: torch.Tensor | None = None
    result: object = None  # the latest whisper DecodingResult


@dataclass
class _Track:
    """One audio job's state during a transcription call."""

    job: AudioJob
    language: str
    language_probability: float
    beam: int | None
    budget_s: float  # how long its windows may hold the model, from its first decode
    started: float | None = None
    out_of_time: bool = False
    speech_windows: int = 0  # first pass: windows with speech...
    failing: int = 0  # ...those of them that failed whisper's checks...
    unresolved: int = 0  # ...and those still failing them in the end
    silent: int = 0
    segments: list[Segment] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)

    def begin(self, now: float) -> None:
        if self.started is None:
            self.started = now

    def deadline(self, share: float = 1.0) -> float:
        return float("inf") if self.started is None else self.started + share * self.budget_s

    def flagged(self, name: str) -> bool:
        return any(f.name == name for f in self.flags)

    def flag(self, name: str, reason: str, **where) -> None:
        self.flags.append(Flag(name, reason, **where))
        log.warning("transcript flagged %s: %s", name, reason)

    def transcript(self) -> Transcript:
        segments = sorted(self.segments, key=lambda s: s.start)
        flags = sorted(self.flags, key=lambda f: (f.start is not None, f.start or 0.0))
        return Transcript(self.language, round(self.language_probability, 4), segments, len(self.job.windows),
                          self.silent, flags)


def _speech_samples(window: Window) -> int:
    return sum(s.end - s.start for s in window.speech)


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
