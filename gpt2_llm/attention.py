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
        row, or a (B,) tensor of each row's own (the server decodes sequences of different lengths
        in one batch)."""
        T = x.size(-2)
        if isinstance(offset, torch.Tensor):
            positions = offset[:, None] + torch.arange(T, device=offset.device)  # (B, T)
            cos = self.cos[positions].unsqueeze(1).to(x.dtype)  # (B, 1, T, hs/2), broadcast over nh
            sin = self.sin[positions].unsqueeze(1).to(x.dtype)
        else:
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
        """Store k, v (B, nkv, T, hs); return all keys and values so far, each (B, nkv, S, hs)."""
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

    def heads(self, x: torch.Tensor, past: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C), whose first token sits at position `past` (or each row at its own, a (B,)
        tensor) -> q (B, nh, T, hs), k and v (B, nkv, T, hs): projected, split into heads, queries
        and keys normalised and rotated. The one-token generation step (GPT2._next_logits_one) and
        the server's batched step (serve/engine.py) use it too."""
        B, T, _ = x.shape
        nh, nkv, hs = self.num_heads, self.num_kv_heads, self.head_size
        q, k, v = F.linear(x, self.c_attn.weight, self.c_attn.bias).split((nh * hs, nkv * hs, nkv * hs), dim=-1)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, T, nh * hs) -> (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, T, nkv * hs) -> (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)
        if self.q_norm is not None:
            # Over each head's hs channels. Under autocast q and k are bf16, which rms_norm's fused
            # kernel takes only with a gain of the same dtype (autocast does not cast it).
            q = F.rms_norm(q, (hs,), self.q_norm.weight.to(q.dtype), self.q_norm.eps)
            k = F.rms_norm(k, (hs,), self.k_norm.weight.to(k.dtype), self.k_norm.eps)
        if self.rope is not None:
            q = self.rope(q, offset=past)
            k = self.rope(k, offset=past)
        return q, k, v

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        past = 0 if cache is None else cache.length  # tokens already in the cache
        q, k, v = self.heads(x, past)
        if cache is not None:
            k, v = cache.append(k, v)  # each (B, nkv, S, hs), S = past + T: nkv heads are kept, not nh

        mask, is_causal = None, T > 1
        if past > 0 and T > 1:
            # New queries after a cached prefix: SDPA's is_causal aligns the mask top-left, which is
            # wrong here, so spell the mask out (query i may see keys 0 .. past + i).
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            is_causal = False
        # One query after a prefix (a generation step) sees every key: no mask at all.
        dropout = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, dropout, is_causal)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, nh, hs) -> (B, T, C): heads side by side
        return self.resid_dropout(self.c_proj(y))
