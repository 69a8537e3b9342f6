"""The decoder: the MLP, the pre-LN block, and the stack of blocks.

Shapes: B batch, T tokens, C embedding width.
"""

import torch
from torch import nn

from .attention import KVCache, QKVAttention


class MLP(nn.Module):
    """Position-wise feed-forward: widen (4x in GPT-2), GELU, project back."""

    def __init__(self, embedding_dim: int, feedforward_dim: int | None = None, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        feedforward_dim = feedforward_dim or 4 * embedding_dim
        self.c_fc = nn.Linear(embedding_dim, feedforward_dim, bias=bias)
        # GPT-2 was trained with the tanh approximation of GELU; one fused kernel in torch.
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(feedforward_dim, embedding_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class DecoderBlock(nn.Module):
    """One transformer block, pre-LN as in GPT-2: normalise, then attend or transform, then add.

    The residual stream x itself is never normalised, so gradients reach early layers undamped.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        feedforward_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        use_rope: bool = False,
        rope_max_seq_len: int = 1024,
        rope_base: float = 10000.0,
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.ln_1 = nn.LayerNorm(embedding_dim, eps=layer_norm_eps, bias=bias)
        self.attn = QKVAttention(embedding_dim, num_heads, dropout, use_rope, rope_max_seq_len, bias, rope_base)
        self.ln_2 = nn.LayerNorm(embedding_dim, eps=layer_norm_eps, bias=bias)
        self.mlp = MLP(embedding_dim, feedforward_dim, dropout, bias)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # tokens exchange information
        x = x + self.mlp(self.ln_2(x))  # each token is transformed on its own
        return x


class GPT2Decoder(nn.Module):
    """The stack of decoder blocks, kept in `h` as GPT-2 names it."""

    def __init__(
        self,
        num_layers: int,
        embedding_dim: int,
        num_heads: int,
        feedforward_dim: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        use_rope: bool = False,
        rope_max_seq_len: int = 1024,
        rope_base: float = 10000.0,
        layer_norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.h = nn.ModuleList(
            DecoderBlock(
                embedding_dim, num_heads, feedforward_dim, dropout, bias,
                use_rope, rope_max_seq_len, rope_base, layer_norm_eps,
            )  # fmt: skip
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); `caches` holds one KVCache per block during generation."""
        for i, block in enumerate(self.h):
            x = block(x, None if caches is None else caches[i])
        return x
