"""Causal self-attention: rotary positions, the fused QKV attention layer, and its KV cache.

Shapes: B batch, T new tokens, S tokens attended to (cached + new), C embedding width,
nh heads, hs head size (C = nh * hs).
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

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Rotate x (B, nh, T, hs), whose first token sits at position `offset`."""
        T = x.size(-2)
        cos = self.cos[offset : offset + T].to(x.dtype)  # (T, hs/2), broadcast over B and nh
        sin = self.sin[offset : offset + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # each (B, nh, T, hs/2)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer.

    Memory for the whole context is taken once, at the first append, so a generation step writes
    one position instead of concatenating (and copying) the whole history every token.
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.k = self.v = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs); return all keys and values so far, each (B, nh, S, hs)."""
        B, nh, T, hs = k.shape
        end = self.length + T
        assert end <= self.max_len, f"KV cache overflow: {end} > {self.max_len} positions"
        if self.k is None:
            # Take the dtype from the first keys, so the cache follows autocast.
            self.k = k.new_empty(B, nh, self.max_len, hs)
            self.v = v.new_empty(B, nh, self.max_len, hs)
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def manual_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """Causal attention written out: what F.scaled_dot_product_attention computes (tested against it).

    q (B, nh, T, hs) are the last T of the S positions of k, v (B, nh, S, hs).
    """
    T, S = q.size(-2), k.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, S)
    # Query i sits at position S - T + i and may look at keys up to that position, not later.
    allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), dropout) if dropout else scores.softmax(dim=-1)
    return weights @ v  # (B, nh, T, hs)


def plain_products_are_faster(q: torch.Tensor) -> bool:
    """On a CPU in bf16 with a short context, two batched matrix products and a softmax beat the
    fused attention kernel, whose blocks suit long sequences. In float32, or from 512 tokens, the
    kernel wins, and on a GPU it always does (BENCHMARKS.md has the measurements)."""
    return q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and q.size(-2) <= 256


class QKVAttention(nn.Module):
    """Multi-head causal self-attention with one fused projection for queries, keys and values."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        C = config.n_embd
        self.num_heads = config.n_head
        self.dropout = config.attn_dropout_prob  # on the attention weights, inside SDPA
        # One matrix product makes q, k and v side by side: fewer, larger kernels than three.
        self.c_attn = nn.Linear(C, 3 * C, bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.rope = None  # positions are then learned, added to the embeddings by GPT2
        if config.rope:
            self.rope = RotaryPositionEmbedding(config.head_size, config.block_size, config.rope_base)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        nh = self.num_heads
        # (B, T, 3C) -> (3, B, nh, T, hs): q, k and v, each split into heads
        q, k, v = self.c_attn(x).view(B, T, 3, nh, C // nh).permute(2, 0, 3, 1, 4).unbind(0)

        past = 0 if cache is None else cache.length  # tokens already in the cache
        if self.rope is not None:
            q = self.rope(q, offset=past)
            k = self.rope(k, offset=past)
        if cache is not None:
            k, v = cache.append(k, v)  # each (B, nh, S, hs), S = past + T

        mask, is_causal = None, T > 1
        if past > 0 and T > 1:
            # New queries after a cached prefix: SDPA's is_causal aligns the mask top-left, which is
            # wrong here, so spell the mask out (query i may see keys 0 .. past + i).
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            is_causal = False
        # One query after a prefix (a generation step) sees every key: no mask at all.
        dropout = self.dropout if self.training else 0.0
        if cache is None and plain_products_are_faster(q):
            y = manual_attention(q, k, v, dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, nh, hs) -> (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))
