"""The decoder: the norm layers, the MLP, the pre-norm block, and the stack of blocks.

Shapes: B batch, T tokens, C embedding width, H the MLP's hidden width (config.mlp_size).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import KVCache, QKVAttention, linear
from .config import GPT2Config, config_from_original_args


def make_norm(config: GPT2Config) -> nn.Module:
    """The norm before each block's branches and before the head: GPT-2's LayerNorm (without its
    bias when config.bias is off), or RMSNorm (Zhang & Sennrich 2019: no centring, no bias)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)


class MLP(nn.Module):
    """Position-wise feed-forward: widen, activate, project back.

    gelu (GPT-2):  c_proj(gelu_tanh(c_fc(x)))              H = 4C
    relu2:         c_proj(relu(c_fc(x))^2)                 H = 4C   (So et al. 2021, "Primer")
    swiglu:        c_proj(silu(c_fc(x)) * c_fc2(x))        H ~ 8C/3 (Shazeer 2020, "GLU variants"; Llama)

    SwiGLU's matrices map one to one onto Llama's: c_fc is gate_proj, c_fc2 up_proj, c_proj down_proj.
    """

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.kind = config.mlp
        self.c_fc = nn.Linear(config.n_embd, config.mlp_size, bias=config.bias)
        self.c_fc2 = nn.Linear(config.n_embd, config.mlp_size, bias=config.bias) if self.kind == "swiglu" else None
        self.c_proj = nn.Linear(config.mlp_size, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = linear(self.c_fc, x)  # (B, T, H)
        if self.kind == "gelu":
            h = F.gelu(h, approximate="tanh")  # GPT-2 was trained with GELU's tanh approximation
        elif self.kind == "relu2":
            h = torch.square(F.relu(h))
        else:
            h = F.silu(h) * linear(self.c_fc2, x)  # the gate times the value
        y = linear(self.c_proj, h)  # (B, T, C)
        return self.dropout(y) if self.training else y  # see GPT2._embed


class DecoderBlock(nn.Module):
    """One transformer block, pre-norm as in GPT-2: normalise, then attend or transform, then add.

    The residual stream x itself is never normalised, so gradients reach early layers undamped.
    """

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = QKVAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                rows: list[int] | None = None) -> torch.Tensor:  # fmt: skip
        """x (B, T, C) -> (B, T, C); with a cache, this block is its `layer` and input row i its row
        rows[i] (QKVAttention.forward says where the new tokens go)."""
        x = x + self.attn(self.ln_1(x), cache, layer, rows)  # tokens exchange information
        x = x + self.mlp(self.ln_2(x))  # each token is transformed on its own
        return x


class GPT2Decoder(nn.Module):
    """The stack of decoder blocks, kept in `h` as GPT-2 names it.

    recompute (a training setting: the Trainer passes it from --grad-checkpoint): keep only each
    block's input during the forward pass and run the block again in the backward pass to get its
    activations. Activation memory drops from every block's intermediates to one tensor per block,
    for about one more forward pass of compute; the results are the same.
    """

    def __init__(self, config: GPT2Config | None = None, **original_args):
        """GPT2Decoder(config), or with the original tool's keyword arguments (see config.ORIGINAL_ARGS):
        GPT2Decoder(num_layers=2, embedding_dim=64, num_heads=4)."""
        super().__init__()
        config = config_from_original_args("GPT2Decoder", config, original_args)
        self.h = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layer))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, rows: list[int] | None = None,
                recompute: bool = False) -> torch.Tensor:  # fmt: skip
        """x (B, T, C) -> (B, T, C). During generation `cache` holds every block's keys and values
        and input row i is its row rows[i] (see GPT2.prefill and GPT2.decode_step)."""
        recompute = recompute and cache is None and torch.is_grad_enabled()
        for i, block in enumerate(self.h):
            if recompute:
                # Non-reentrant checkpointing restores the random state for the rerun, so dropout
                # draws the same masks twice, and works with DDP and torch.compile.
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, cache, i, rows)
        return x
