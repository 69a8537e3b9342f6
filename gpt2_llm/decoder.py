"""The decoder: the MLP, the pre-LN block, and the stack of blocks.

Shapes: B batch, T tokens, C embedding width.
"""

import torch
from torch import nn

from .attention import KVCache, QKVAttention
from .config import GPT2Config, config_from_original_args


class MLP(nn.Module):
    """Position-wise feed-forward: widen (4x in GPT-2), GELU, project back."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_size, bias=config.bias)
        # GPT-2 was trained with the tanh approximation of GELU; one fused kernel in torch.
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(config.mlp_size, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class DecoderBlock(nn.Module):
    """One transformer block, pre-LN as in GPT-2: normalise, then attend or transform, then add.

    The residual stream x itself is never normalised, so gradients reach early layers undamped.
    """

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = QKVAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # tokens exchange information
        x = x + self.mlp(self.ln_2(x))  # each token is transformed on its own
        return x


class GPT2Decoder(nn.Module):
    """The stack of decoder blocks, kept in `h` as GPT-2 names it."""

    def __init__(self, config: GPT2Config | None = None, **original_args):
        """GPT2Decoder(config), or with the original tool's keyword arguments (see config.ORIGINAL_ARGS):
        GPT2Decoder(num_layers=2, embedding_dim=64, num_heads=4)."""
        super().__init__()
        config = config_from_original_args("GPT2Decoder", config, original_args)
        self.h = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layer))

    def forward(self, x: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); `caches` holds one KVCache per block during generation."""
        for i, block in enumerate(self.h):
            x = block(x, None if caches is None else caches[i])
        return x
