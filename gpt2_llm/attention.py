"""Causal self-attention: rotary positions, the fused QKV attention layer, and its KV cache.

Shapes: B batch, T new tokens, S tokens attended to (cached + new), C embedding width,
nh (query) heads, hs head size (C = nh * hs), nkv key/value heads (nh, or fewer with grouped-query
attention).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import GPT2Config


class RotaryPositionEmbedding(nn.Module):
    """RoPE: rotate each pair of channels of q and k by an angle proportional to the position.

    The dot product of a query at position m with a key at position n then depends only on
    m - n, since rotating both by the same extra angle leaves their dot product unchanged.
    Pairs are (i, i + hs/2), the "rotate half" layout of GPT-NeoX and Llama.
    """

    def __init__(self, head_size: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        if head_size % 2:
            raise ValueError(f"RoPE needs an even head size, got {head_size}")
        # One frequency per channel pair, from 1 down to about 1/base.
        inv_freq = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (max_seq_len, hs/2)
        # Derived from the arguments, so left out of the state dict.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        """Rotate x (B, nh, T, hs), whose first token sits at position `offset`: one int for every
        row, or a (B,) tensor of each row's own (a decode step of rows of different lengths)."""
        T = x.size(-2)
        if isinstance(offset, torch.Tensor):
            positions = offset[:, None] + torch.arange(T, device=offset.device)  # (B, T)
            cos = self.cos[positions].unsqueeze(1)  # (B, 1, T, hs/2), broadcast over nh
            sin = self.sin[positions].unsqueeze(1)
        else:
            cos = self.cos[offset : offset + T]  # (T, hs/2), broadcast over B and nh
            sin = self.sin[offset : offset + T]
        if cos.dtype != x.dtype:  # under autocast; a .to() that changes nothing still costs a dispatch
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # each (B, nh, T, hs/2)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class KVCache:
    """Keys and values of the tokens seen so far: every layer of a model, for a batch of rows.

    Row r holds one sequence, `lengths[r]` positions of it filled. Each layer's keys and values
    are (rows, nkv, max_len, hs), taken once at the layer's first write (in the dtype of the keys,
    so the cache follows autocast) and zero-filled, so that a step writes its new positions in
    place instead of concatenating (and copying) the whole history every token. The model writes
    a step's new keys at each row's own length (write), and advances the lengths once every layer
    has written (advance).
    """

    def __init__(self, n_layer: int, rows: int, max_len: int):
        self.max_len = max_len
        self.lengths = [0] * rows
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def write(self, layer: int, rows: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v (R, nkv, T, hs) of the cache rows `rows` at positions lengths[r] onward.
        T > 1 new tokens (a prompt) go into one row at any length, or into several empty rows; one
        token goes into any rows."""
        keys, values = self._storage(layer, k)
        T = k.size(2)
        if len(rows) == 1:  # slices, no index tensors: generate() at batch 1, and every prompt the server reads
            row = rows[0]
            start = self.lengths[row]
            assert start + T <= self.max_len, f"{T} new positions after {start}"
            keys[row : row + 1, :, start : start + T] = k
            values[row : row + 1, :, start : start + T] = v
            return
        starts = [self.lengths[r] for r in rows]
        end = max(starts) + T
        assert (T == 1 or end == T) and end <= self.max_len, f"{T} new positions after {starts}, of {self.max_len}"
        if T > 1:
            keys[rows, :, :T], values[rows, :, :T] = k, v
        else:  # one new token per row, each at its own position
            where = torch.tensor(rows, device=k.device), torch.tensor(starts, device=k.device)
            keys[where[0], :, where[1]], values[where[0], :, where[1]] = k[:, :, 0], v[:, :, 0]  # (R, nkv, hs)

    def advance(self, rows: list[int], new: int) -> None:
        """The `new` tokens written to each of `rows` are now part of them."""
        for r in rows:
            self.lengths[r] += new

    def keys_values(self, row: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's keys and values of row's first `length` positions (views): [(k, v)], each (nkv, length, hs)."""
        return [(k[row, :, :length], v[row, :, :length]) for k, v in zip(self.k, self.v)]

    @torch.inference_mode()
    def load(self, row: int, keys_values: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Row takes these keys and values (keys_values' shape) as its first positions; its length is theirs."""
        length = keys_values[0][0].size(1)
        for layer, (k, v) in enumerate(keys_values):
            keys, values = self._storage(layer, k.unsqueeze(0))
            keys[row, :, :length], values[row, :, :length] = k, v
        self.lengths[row] = length

    def _storage(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's keys and values, made at its first write from the shape and dtype of `like` (R, nkv, T, hs)."""
        if self.k[layer] is None:
            shape = (len(self.lengths), like.size(1), self.max_len, like.size(3))
            self.k[layer], self.v[layer] = like.new_zeros(shape), like.new_zeros(shape)
        return self.k[layer], self.v[layer]

    @torch.inference_mode()  # the tensors were made by the model's prefill and decode_step, in inference mode
    def move(self, src: int, dst: int) -> None:
        """Row dst takes row src's filled positions and length (src is left as it was)."""
        length = self.lengths[src]
        for keys, values in zip(self.k, self.v):
            if keys is not None:
                keys[dst, :, :length], values[dst, :, :length] = keys[src, :, :length], values[src, :, :length]
        self.lengths[dst] = length


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x). A plain nn.Linear goes through F.linear on its own weights rather than a module call,
    which costs a few microseconds, four or five per block for every generated token (BENCHMARKS.md,
    "One inference path"); any other layer (lora.LoRALinear: a frozen Linear and an adapter) is called."""
    if type(layer) is nn.Linear:
        return F.linear(x, layer.weight, layer.bias)
    return layer(x)


def first_positions(starts: list[int], rows: int, device: torch.device) -> int | torch.Tensor:
    """The position of each input row's first new token, as RoPE and the position table take it:
    one int when every row starts at the same position (a slice of the tables, the same numbers
    as a gather, for less work), else a (rows,) tensor, 0 for padding rows past len(starts)."""
    if starts.count(starts[0]) == len(starts):
        return starts[0]
    return torch.tensor(starts + [0] * (rows - len(starts)), device=device)


# SDPA shares key/value heads among query heads itself from torch 2.5 (enable_gqa); before, they are repeated.
SDPA_HAS_GQA = torch.__version__ >= "2.5"


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, nkv, S, hs) -> (B, nkv * groups, S, hs): each key/value head once for each query head that
    shares it, next to each other (query head i uses key/value head i // groups)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           dropout: float = 0.0, is_causal: bool = False) -> torch.Tensor:  # fmt: skip
    """F.scaled_dot_product_attention of q (B, nh, T, hs) with k, v (B, nkv, S, hs), where nkv divides
    nh (grouped-query attention); the key/value heads are shared without copying them where torch can."""
    groups = q.size(1) // k.size(1)
    if groups == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
    if not SDPA_HAS_GQA:
        return attend(q, repeat_kv(k, groups), repeat_kv(v, groups), mask, dropout, is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                          enable_gqa=True)


def attend_each_row(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: list[int],
                    starts: list[int]) -> torch.Tensor:  # fmt: skip
    """The one new query of each row, q (B, nh, 1, hs), over its own cached keys and values
    (cache rows, nkv, max_len, hs): query i over those of cache row rows[i], up to and including
    its new position starts[i]. Queries past len(rows) (padding) get zeros.

    Row by row, over exactly the row's own keys (no padding keys, no mask), so a row gets the sums
    it would get alone, whatever the other rows hold: greedy text does not depend on which others
    share a step. Attention is a small share of a step next to the matrix products.
    """
    if len(rows) == q.size(0) == 1:  # one row, no padding (generate() at batch 1): q as it is
        row, start = rows[0], starts[0]
        return attend(q, keys[row : row + 1, :, : start + 1], values[row : row + 1, :, : start + 1])
    ys = [attend(q[i : i + 1], keys[row : row + 1, :, : start + 1], values[row : row + 1, :, : start + 1])
          for i, (row, start) in enumerate(zip(rows, starts))]  # fmt: skip
    if len(rows) < q.size(0):
        ys.append(q.new_zeros(q.size(0) - len(rows), *q.shape[1:]))
    return torch.cat(ys)  # (B, nh, 1, hs)


def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """Causal attention written out, step by step: what F.scaled_dot_product_attention computes.
    The model calls SDPA (attend above); this is for reading, and the tests hold the two equal.

    q (B, nh, T, hs) are the last T of the S positions of k, v (B, nkv, S, hs); nkv divides nh.
    """
    groups = q.size(1) // k.size(1)
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)  # (B, nh, S, hs)
    T, S, hs = q.size(-2), k.size(-2), q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, S): how well each query matches each key
    # Query i sits at position S - T + i and may look at keys up to that position, not later: the
    # later ones get -inf, so softmax gives them weight 0.
    future = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(diagonal=S - T + 1)
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)  # each row sums to 1
    weights = F.dropout(weights, dropout)  # dropout > 0 only in training
    return weights @ v  # (B, nh, T, hs): each query's weighted mean of the values


class QKVAttention(nn.Module):
    """Causal self-attention with one fused projection for queries, keys and values.

    GPT-2 has as many key/value heads as query heads. With grouped-query attention (config.n_kv_head,
    Ainslie et al. 2023) each key/value head serves n_head / n_kv_head query heads: the projection
    and the KV cache shrink by that factor; one key/value head is multi-query attention (Shazeer
    2019). With QK-norm (config.qk_norm) each head's queries and keys are RMS-normalised, with a
    learned gain per channel, before RoPE and their product, which bounds the attention logits.
    """

    def __init__(self, config: GPT2Config):
        super().__init__()
        C, hs = config.n_embd, config.head_size
        self.num_heads, self.num_kv_heads, self.head_size = config.n_head, config.kv_heads, hs
        self.dropout = config.attn_dropout_prob  # on the attention weights, inside SDPA
        # One matrix product makes q, k and v side by side, [q | k | v] (GPT-2's layout): fewer, larger kernels.
        self.c_attn = nn.Linear(C, (self.num_heads + 2 * self.num_kv_heads) * hs, bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.q_norm = self.k_norm = None
        if config.qk_norm:  # one gain per head channel, shared by the heads (as in Qwen3's q_norm, k_norm)
            self.q_norm = nn.RMSNorm(hs, eps=config.layer_norm_eps)
            self.k_norm = nn.RMSNorm(hs, eps=config.layer_norm_eps)
        self.rope = None  # positions are then learned, added to the embeddings by GPT2
        if config.rope:
            self.rope = RotaryPositionEmbedding(hs, config.block_size, config.rope_base)

    def heads(self, x: torch.Tensor, offset: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C), whose first token sits at position `offset` (or each row at its own, a (B,)
        tensor) -> q (B, nh, T, hs), k and v (B, nkv, T, hs): projected, split into heads, queries
        and keys normalised and rotated."""
        B, T, _ = x.shape
        nh, nkv, hs = self.num_heads, self.num_kv_heads, self.head_size
        q, k, v = linear(self.c_attn, x).split((nh * hs, nkv * hs, nkv * hs), dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, T, nh * hs) -> (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, T, nkv * hs) -> (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)
        if self.q_norm is not None:
            # Over each head's hs channels. Under autocast q and k are bf16, which rms_norm's fused
            # kernel takes only with a gain of the same dtype (autocast does not cast it).
            q = F.rms_norm(q, (hs,), self.q_norm.weight.to(q.dtype), self.q_norm.eps)
            k = F.rms_norm(k, (hs,), self.k_norm.weight.to(k.dtype), self.k_norm.eps)
        if self.rope is not None:
            q = self.rope(q, offset=offset)
            k = self.rope(k, offset=offset)
        return q, k, v

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rows: list[int] | None = None) -> torch.Tensor:  # fmt: skip
        """x (B, T, C) -> (B, T, C). Without a cache: causal attention over the T tokens (training,
        the full forward pass). With one, input row i belongs to cache row rows[i], and its new
        tokens go at positions cache.lengths[rows[i]] onward, their keys and values into the
        cache's `layer`:
            a prompt (T > 1, rows empty): causal attention over the new keys, as without a cache;
            the rest of a prompt (T > 1, one row that already holds `start` positions, such as a
            reused prefix): causal attention over the row's keys, old and new;
            one new token per row: each row attends to exactly its own filled keys, row by row.
        Input rows past len(rows) are padding (see GPT2.decode_step): computed, never stored."""
        B, T, C = x.shape
        start = cache.lengths[rows[0]] if cache is not None and T > 1 else 0
        if start:  # the rest of one row's prompt: its queries see the row's earlier keys too
            q, k, v = self.heads(x, start)
            cache.write(layer, rows, k, v)
            end, row = start + T, rows[0]
            keys, values = cache.k[layer][row : row + 1, :, :end], cache.v[layer][row : row + 1, :, :end]
            mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start)  # query i: keys <= start + i
            y = attend(q, keys, values, mask=mask)
        elif cache is None or T > 1:
            q, k, v = self.heads(x, 0)
            if cache is not None:
                cache.write(layer, rows, k, v)
            dropout = self.dropout if self.training else 0.0
            y = attend(q, k, v, dropout=dropout, is_causal=T > 1)
        else:
            starts = [cache.lengths[r] for r in rows]
            q, k, v = self.heads(x, first_positions(starts, B, x.device))
            if len(rows) < B:  # padding rows are not stored
                k, v = k[: len(rows)], v[: len(rows)]
            cache.write(layer, rows, k, v)
            y = attend_each_row(q, cache.k[layer], cache.v[layer], rows, starts)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, nh, hs) -> (B, T, C): heads side by side
        y = linear(self.c_proj, y)
        return self.resid_dropout(y) if self.training else y  # see GPT2._embed
