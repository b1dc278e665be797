"""whisper's text decoder with a fixed-size KV cache, each decoding step replayed as one CUDA graph.

whisper's own inference (``PyTorchInference``) grows its KV cache by concatenation
and launches every matrix product, norm and attention of every layer as its own
kernel: hundreds of launches per generated token, and every step meets new
tensor shapes. On a GPU those launches, not the arithmetic, set the pace
(measured on an H100 with base's shapes: 7.8-9.4 ms per step once every shape
had been seen, 76-108 ms the first time). Here the cache has a fixed size (the
prompt plus the most tokens a decode may sample) at fixed addresses, so one step
(embedding, every block, the vocabulary projection) is captured once per decode
as a CUDA graph and replayed per token: 1.6-3.0 ms per step at 8-64 windows.

The arithmetic is whisper's, layer by layer; only the cache layout differs: each
step attends over the whole fixed cache with the positions not yet written
masked out. It implements whisper's ``Inference`` interface, so ``DecodingTask``
(its loop, logit filters, beam search, temperature fallback) is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import whisper
from whisper.decoding import Inference


class GraphedInference(Inference):
    """One decode's forward passes: the prompt eagerly, then each step as a graph replay (``graphs=False``: eagerly)."""

    def __init__(self, model: "whisper.Whisper", initial_token_length: int, sample_len: int, graphs: bool = True):
        self.decoder = model.decoder
        # Room for the prompt and every token the loop may sample (as much as whisper's growing cache reaches).
        self.n_ctx = min(initial_token_length + sample_len, model.dims.n_text_ctx)
        self.graphs = graphs
        self.cache: list[torch.Tensor] | None = None  # per block: self keys, self values, cross keys, cross values
        self.graph: torch.cuda.CUDAGraph | None = None

    # Inference interface ------------------------------------------------
    def logits(self, tokens: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            self._allocate(audio_features)
            positions = torch.arange(tokens.shape[-1], device=tokens.device)
            return self._forward(tokens, positions)
        if tokens.shape[-1] > self.n_ctx:
            raise ValueError("decoded past the cache")
        self.step_token.copy_(tokens[:, -1:])
        self.step_position.fill_(tokens.shape[-1] - 1)
        if not self.graphs:
            return self._forward(self.step_token, self.step_position)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.step_logits

    def rearrange_kv_cache(self, source_indices) -> None:
        if source_indices != list(range(len(source_indices))):
            index = torch.tensor(source_indices, device=self.step_token.device)
            # Beams never move between audio inputs, so only the self-attention caches change;
            # copied in place: the captured graph reads these addresses.
            for block in range(len(self.decoder.blocks)):
                for k in (0, 1):
                    buf = self.cache[4 * block + k]
                    buf.copy_(buf.index_select(0, index))

    def cleanup_caching(self) -> None:
        self.cache = self.graph = None

    # the forward pass -----------------------------------------------------
    def _allocate(self, audio_features: torch.Tensor) -> None:
        n_batch, n_ctx, n_state = audio_features.shape[0], self.n_ctx, self.decoder.positional_embedding.shape[1]
        dtype, device = audio_features.dtype, audio_features.device
        self.cache = []
        for block in self.decoder.blocks:
            self.cache += [torch.zeros(n_batch, n_ctx, n_state, dtype=dtype, device=device),
                           torch.zeros(n_batch, n_ctx, n_state, dtype=dtype, device=device),
                           block.cross_attn.key(audio_features), block.cross_attn.value(audio_features)]
        self.context = torch.arange(n_ctx, device=device)
        self.step_token = torch.zeros(n_batch, 1, dtype=torch.long, device=device)
        self.step_position = torch.zeros(1, dtype=torch.long, device=device)

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits for ``tokens`` at ``positions``, writing their keys and values into the cache."""
        d = self.decoder
        dtype = self.cache[0].dtype
        x = (d.token_embedding(tokens) + d.positional_embedding.index_select(0, positions)).to(dtype)
        # A query at position p sees the cache up to p: the prompt causally, a step everything written so far.
        mask = torch.zeros(positions.shape[0], self.context.shape[0], dtype=dtype, device=x.device)
        mask.masked_fill_(self.context[None, :] > positions[:, None], float("-inf"))
        for b, block in enumerate(d.blocks):
            self_k, self_v, cross_k, cross_v = self.cache[4 * b : 4 * b + 4]
            h = block.attn_ln(x)
            self_k.index_copy_(1, positions, block.attn.key(h).to(dtype))
            self_v.index_copy_(1, positions, block.attn.value(h).to(dtype))
            x = x + block.attn.out(_attention(block.attn.query(h), self_k, self_v, block.attn.n_head, mask))
            h = block.cross_attn_ln(x)
            x = x + block.cross_attn.out(_attention(block.cross_attn.query(h), cross_k, cross_v, block.cross_attn.n_head))
            x = x + block.mlp(block.mlp_ln(x))
        x = d.ln(x)
        return (x @ d.token_embedding.weight.to(x.dtype).T).float()

    def _capture(self) -> None:
        # Kernels are chosen and memory reserved in two eager steps on a side stream, then
        # captured. The eager steps write the same cache slot that the replay writes again.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(self.step_token, self.step_position)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step_logits = self._forward(self.step_token, self.step_position)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_head: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    n_batch, n_query, n_state = q.shape

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], n_head, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(n_batch, n_query, n_state)
