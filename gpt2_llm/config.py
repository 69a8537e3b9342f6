"""The model's shape in one dataclass, and the named presets.

Every module of the package is built from a `GPT2Config`. Checkpoints store it as `asdict(config)`
(plain ints, floats and bools), so a checkpoint never needs this class to be read.
"""

from dataclasses import dataclass, replace

# The presets give a shape; `vocab_size` normally comes from the tokenizer and overrides it.
# tiny: for tests (136,960 parameters with its 512-token vocabulary).
# small: the original tool's training default.
# gpt2*: OpenAI's published sizes, parameter for parameter (GPT-2's own 50257-token vocabulary).
PRESETS = {
    "tiny": dict(vocab_size=512, n_layer=2, n_head=2, n_embd=64, block_size=64),
    "small": dict(n_layer=12, n_head=12, n_embd=480, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
}


@dataclass
class GPT2Config:
    vocab_size: int = 50257  # GPT-2's BPE vocabulary; set from the tokenizer
    n_layer: int = 12  # decoder blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    block_size: int = 1024  # context length: the most tokens the model sees at once
    n_inner: int | None = None  # MLP hidden width; None means 4 * n_embd, as in GPT-2
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
    rope: bool = False  # rotary positions instead of learned ones
    rope_base: float = 10000.0  # RoPE's frequency base
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        # Report every problem at once, each naming the command-line flag where there is one.
        problems = []
        if self.vocab_size < 1:
            problems.append(f"vocab_size must be at least 1 (the tokenizer's --vocab-size), got {self.vocab_size}")
        if self.n_layer < 1:
            problems.append(f"n_layer must be at least 1, got {self.n_layer}")
        if self.n_head < 1:
            problems.append(f"n_head must be at least 1, got {self.n_head}")
        elif self.n_embd < 1 or self.n_embd % self.n_head:
            problems.append(f"n_embd ({self.n_embd}) must be a positive multiple of n_head ({self.n_head})")
        elif self.rope and (self.n_embd // self.n_head) % 2:
            problems.append(f"rope needs an even head size, got n_embd / n_head = {self.n_embd // self.n_head}")
        if self.block_size < 1:
            problems.append(f"block_size (--context) must be at least 1, got {self.block_size}")
        if self.n_inner is not None and self.n_inner < 1:
            problems.append(f"n_inner must be at least 1 (or None for 4 * n_embd), got {self.n_inner}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rope_base <= 1.0:
            problems.append(f"rope_base must be greater than 1, got {self.rope_base}")
        if self.layer_norm_eps <= 0.0:
            problems.append(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPT2Config":
        """The preset `name` (see PRESETS), with any field replaced by `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r} (--preset); choose one of: {', '.join(PRESETS)}")
        return replace(cls(**PRESETS[name]), **overrides)
