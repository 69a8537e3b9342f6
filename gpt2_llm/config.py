"""The model's shape in one dataclass, and the named presets.

Every module of the package is built from a `GPT2Config`. Checkpoints store it as `asdict(config)`
(plain ints, floats and bools), so a checkpoint never needs this class to be read, and
`GPT2Config.from_dict` reads it back, checking every field.
"""

import math
import types
import typing
from dataclasses import dataclass, field, fields, replace

from basics import UserError
from bpe import workers_problem


class ConfigError(UserError):
    """A model or training setting that cannot be used; the message names the flag or field."""


# The presets give a shape; `vocab_size` normally comes from the tokenizer and overrides it.
# tiny: for tests (136,960 parameters with its 512-token vocabulary).
# mini: the 10-minute CPU recipe for a text of about 1 MB (see README).
# small: the original tool's training default.
# gpt2*: OpenAI's published sizes, parameter for parameter (GPT-2's own 50257-token vocabulary).
PRESETS = {
    "tiny": dict(vocab_size=512, n_layer=2, n_head=2, n_embd=64, block_size=64),
    "mini": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.1, attn_dropout=0.0),
    "small": dict(n_layer=12, n_head=12, n_embd=480, block_size=256),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
}

# The files the command line reads and writes when none is named.
DEFAULT_VOCAB = "vocab.txt"
DEFAULT_MODEL = "gpt2_model.pt"


NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu2")


def _opt(default, help: str, flag: str | None = None, choices: tuple[str, ...] | None = None):
    """A config field with its command-line help: main.py makes one flag of each such field, so its
    default lives here alone. The flag is --NAME with dashes unless `flag` names another; a switch
    sets the value that is not the default (--no-bias sets bias False, --rope sets rope True)."""
    metadata = {"help": help} | ({"flag": flag} if flag else {}) | ({"choices": choices} if choices else {})
    return field(default=default, metadata=metadata)


def flag_fields(cls) -> list:
    """The fields of a config dataclass that are command-line flags (those with a help text)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def flag_of(f) -> str:
    """The command-line flag of a config field: --context for block_size, --lr for lr."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@dataclass
class GPT2Config:
    """A model's shape. The fields with a help text are `main.py train` flags (see _opt); the others
    come from a preset or a checkpoint."""

    vocab_size: int = 50257  # GPT-2's BPE vocabulary; set from the tokenizer
    n_layer: int = _opt(12, "decoder blocks")
    n_head: int = _opt(12, "attention heads per block")
    n_embd: int = _opt(768, "width of the residual stream, a multiple of --n-head")
    block_size: int = _opt(1024, "context length in tokens", flag="--context")  # the most tokens the model sees at once
    n_inner: int | None = None  # MLP hidden width; None means 4 * n_embd, as in GPT-2
    dropout: float = _opt(0.0, "dropout rate")  # on embeddings, attention weights and residual branches
    # None: the same as dropout (GPT-2). 0 keeps the fast fused attention kernel on the CPU, where
    # dropout inside attention is slow.
    attn_dropout: float | None = _opt(None, "dropout on attention weights alone (default: as --dropout)")
    bias: bool = _opt(True, "no biases in the linear and norm layers (GPT-2 has them)", flag="--no-bias")
    rope: bool = _opt(False, "rotary position embeddings instead of learned positions")
    rope_base: float = 10000.0  # RoPE's frequency base
    layer_norm_eps: float = 1e-5  # the epsilon of every norm layer (LayerNorm or RMSNorm)
    # Architecture options (README, "Architecture options"); the defaults are GPT-2 as published.
    # rmsnorm: scale by the root mean square, no centring, no bias
    norm: str = _opt("layernorm", "layernorm (GPT-2's, the default) or rmsnorm", choices=NORMS)
    mlp: str = _opt("gelu", "gelu (GPT-2's, the default), swiglu (three matrices, hidden width the multiple of 64 "
                            "nearest 8/3 x n_embd: GPT-2's parameter count) or relu2", choices=MLPS)
    n_kv_head: int | None = _opt(None, "key/value heads, a divisor of the heads: grouped-query attention (1: "
                                       "multi-query; default: one per head, GPT-2's)", flag="--kv-heads")
    qk_norm: bool = _opt(False, "RMS-normalise each head's queries and keys before their product")
    tie_embeddings: bool = _opt(True, "an output head with its own matrix (GPT-2's is the token embedding)",
                                flag="--untied")

    def __post_init__(self):
        # Report every problem at once, each naming the command-line flag where there is one.
        problems = []
        if self.vocab_size < 1:
            problems.append(f"vocab_size must be at least 1 (the tokenizer's --vocab-size), got {self.vocab_size}")
        if self.n_layer < 1:
            problems.append(f"n_layer (--n-layer) must be at least 1, got {self.n_layer}")
        if self.n_head < 1:
            problems.append(f"n_head (--n-head) must be at least 1, got {self.n_head}")
        elif self.n_embd < 1 or self.n_embd % self.n_head:
            problems.append(f"n_embd ({self.n_embd}) must be a positive multiple of n_head ({self.n_head}) "
                            f"(--n-embd, --n-head)")
        elif self.rope and (self.n_embd // self.n_head) % 2:
            problems.append(f"rope needs an even head size, got n_embd / n_head = {self.n_embd // self.n_head}")
        if self.n_kv_head is not None and not (1 <= self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0):
            problems.append(f"n_kv_head (--kv-heads) must divide n_head ({self.n_head}), got {self.n_kv_head}")
        if self.norm not in NORMS:
            problems.append(f"norm (--norm) must be {' or '.join(NORMS)}, got {self.norm!r}")
        if self.mlp not in MLPS:
            problems.append(f"mlp (--mlp) must be {', '.join(MLPS[:-1])} or {MLPS[-1]}, got {self.mlp!r}")
        if self.block_size < 1:
            problems.append(f"block_size (--context) must be at least 1, got {self.block_size}")
        if self.n_inner is not None and self.n_inner < 1:
            problems.append(f"n_inner must be at least 1 (or None for 4 * n_embd), got {self.n_inner}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout (--dropout) must be in [0, 1), got {self.dropout}")
        if self.attn_dropout is not None and not 0.0 <= self.attn_dropout < 1.0:
            problems.append(f"attn_dropout (--attn-dropout) must be in [0, 1), got {self.attn_dropout}")
        if not self.rope_base > 1.0:
            problems.append(f"rope_base must be greater than 1, got {self.rope_base}")
        if not self.layer_norm_eps > 0.0:
            problems.append(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """The rows of the embedding matrix: vocab_size rounded up to a multiple of 64.

        Matrix kernels (AMX tiles, tensor cores) work in blocks of 16 to 64; an odd size such as
        GPT-2's 50257 leaves a ragged edge on the largest product of the model. The extra rows
        are never a target, their logits are cut off before the loss and before sampling, and
        they are not counted as parameters.
        """
        return -(-self.vocab_size // 64) * 64

    @property
    def mlp_size(self) -> int:
        """The MLP's hidden width: n_inner when given; else 4 x n_embd (GPT-2), or for SwiGLU, whose
        three matrices hold as many weights as two at 8/3 x n_embd, the multiple of 64 nearest
        8/3 x n_embd (as for the vocabulary, a multiple of 64 suits the matrix kernels):
        2048 at width 768, 192 at 64. The weights then match GPT-2's MLP within 3 x 32 x n_embd."""
        if self.n_inner is not None:
            return self.n_inner
        if self.mlp == "swiglu":
            return 64 * max(1, (self.n_embd + 12) // 24)  # round(8/3 * C / 64) * 64, halves up
        return 4 * self.n_embd

    @property
    def kv_heads(self) -> int:
        """Key/value heads: n_kv_head, or one per query head (multi-head attention, GPT-2)."""
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    def gpt2_departures(self) -> list[str]:
        """The architecture options this config takes that GPT-2 has not (empty for GPT-2's own)."""
        options = [("RMSNorm", self.norm == "rmsnorm"), (f"{self.mlp} MLP", self.mlp != "gelu"),
                   (f"{self.kv_heads} key/value head{'s' * (self.kv_heads > 1)}", self.kv_heads != self.n_head), ("QK-norm", self.qk_norm),
                   ("untied head", not self.tie_embeddings), ("RoPE", self.rope), ("no bias", not self.bias)]
        return [name for name, taken in options if taken]

    @property
    def attn_dropout_prob(self) -> float:
        """The probability attention weights are dropped with: attn_dropout, or dropout where that is None."""
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPT2Config":
        """The preset `name` (see PRESETS), with any field replaced by `overrides`."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r} (--preset); choose one of: {', '.join(PRESETS)}")
        return replace(cls(**PRESETS[name]), **overrides)

    @classmethod
    def from_dict(cls, stored: dict) -> "GPT2Config":
        """The config stored in a checkpoint (`asdict` of one), or a ConfigError saying what is wrong
        (see config_from_dict). Fields added after the first version may be missing: their
        defaults give the model as it was before them. Fields of removed options are dropped when
        they hold the option's "off" value, and refused when they do (without_removed_options)."""
        return config_from_dict(cls, without_removed_options(stored), "model config", REQUIRED_FIELDS)


DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"


def is_device_name(name: str) -> bool:
    """Is this a --device value (whether or not that device is here: hardware.pick_device says)?"""
    return name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())


# Fields every stored model config has had since the first version. Fields added later must have
# a default that gives the model as it was before them (see GPT2Config.from_dict).
REQUIRED_FIELDS = ("vocab_size", "n_layer", "n_head", "n_embd", "block_size")

# Experimental options earlier versions stored in the model config, and this one removed: each
# field's flag, the value that meant "off" (None: any value, the field means nothing alone), what
# the option was, and what a user of such a model can still do. A model trained with one computes
# something else here, so it is refused rather than loaded as another model.
REMOVED_OPTIONS = {
    "token_shift": ("--token-shift", False, "RWKV's token shift", "retrain without it"),
    "copy_weight": ("--copy", 0.0, "a copying cache", "retrain without it, or write the model without the "
                    "cache, which holds no weights, with an earlier version's export --copy 0"),
    "copy_sharpness": ("--copy-sharpness", None, "", ""),
}


def without_removed_options(stored):
    """A stored model config without the fields of REMOVED_OPTIONS, or a ConfigError naming the
    option when the model used one. Anything but a dict is left to config_from_dict to refuse."""
    if not isinstance(stored, dict):
        return stored
    for name, (flag, off, what, instead) in REMOVED_OPTIONS.items():
        value = stored.get(name, off)
        if off is not None and value != off:
            used = flag if isinstance(off, bool) else f"{flag} {value}"
            raise ConfigError(f"the model was trained with {used} ({what}), an experimental option this version "
                              f"of the toolkit removed; {instead}")
    return {name: value for name, value in stored.items() if name not in REMOVED_OPTIONS}


def config_from_dict(cls, stored: dict, what: str, required: tuple[str, ...] = ()):
    """A config dataclass from the plain dict a file holds, every field checked: a field this
    version does not know means a newer version wrote the file; `required` fields must be there,
    others take their defaults; each value must have its field's type, then __post_init__ checks it."""
    if not isinstance(stored, dict):
        raise ConfigError(f"the {what} is a {type(stored).__name__}, not a dict of fields")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(str(k) for k in stored if k not in known)
    if unknown:
        raise ConfigError(f"the {what} has fields this version does not know ({', '.join(unknown)}): "
                          f"it was written by a newer version of the toolkit")
    missing = [name for name in required if name not in stored]
    if missing:
        raise ConfigError(f"the {what} lacks {', '.join(missing)}")
    for name, value in stored.items():
        if not _has_type(value, known[name].type):
            raise ConfigError(f"the {what}'s {name} is {value!r}, not {_type_name(known[name].type)}")
    return cls(**stored)


def _has_type(value, annotation) -> bool:
    """Does a value read from a file fit a field's annotation (int, float, bool, str, or X | None)?
    An int fits a float field; a bool fits no number field."""
    choices = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for kind in choices:
        if kind is type(None) and value is None:
            return True
        if kind is bool and type(value) is bool:
            return True
        if kind is int and type(value) is int:
            return True
        if kind is float and type(value) in (int, float):
            return True
        if kind is str and type(value) is str:
            return True
    return False


def _type_name(annotation) -> str:
    choices = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return " or ".join("None" if kind is type(None) else f"a {kind.__name__}" for kind in choices)


# The original tool's keyword arguments (GPT2's, and GPT2Decoder's extras), and the field each sets.
ORIGINAL_ARGS = {
    "vocab_size": "vocab_size",
    "embedding_dim": "n_embd",
    "num_layers": "n_layer",
    "num_heads": "n_head",
    "max_seq_len": "block_size",
    "rope_max_seq_len": "block_size",  # the decoder's name for it: the positions RoPE covers
    "feedforward_dim": "n_inner",
    "dropout": "dropout",
    "bias": "bias",
    "use_rope": "rope",
    "rope_base": "rope_base",
    "layer_norm_eps": "layer_norm_eps",
}


def config_from_original_args(caller: str, config: GPT2Config | None, original_args: dict) -> GPT2Config:
    """The config of a module built as `caller(config)` or `caller(**original_args)`: GPT2 and
    GPT2Decoder take either. Fields no argument names keep their defaults (the decoder's
    vocab_size among them: it never reads it)."""
    if not original_args:
        return config or GPT2Config()
    if config is not None:
        raise TypeError(f"{caller}() takes a GPT2Config or keyword arguments, not both")
    unknown = sorted(original_args.keys() - ORIGINAL_ARGS.keys())
    if unknown:
        raise TypeError(f"{caller}() got unexpected arguments {unknown}; it takes {sorted(ORIGINAL_ARGS)}")
    fields = {ORIGINAL_ARGS[name]: value for name, value in original_args.items()}
    if len(fields) < len(original_args):  # the one field with two names
        raise TypeError(f"{caller}() takes max_seq_len or rope_max_seq_len, not both: each sets block_size")
    return GPT2Config(**fields)


# What `train --init-from` uses where a flag does not say otherwise: a pretrained model needs a far
# smaller learning rate than one trained from zero (5e-5 is transformers' Trainer default), a short
# warm-up, and batches small enough for its long context on a laptop.
FINETUNE_DEFAULTS = {"lr": 5e-5, "warmup_steps": 20, "batch_size": 8}
# With --lora the adapters start at zero and hold few weights: they take a larger step. 3e-3 measured
# best of 1e-3 and 3e-3 on two validation parts (BENCHMARKS.md, "Classification and LoRA"): the SMS
# task's (the same accuracy, a lower loss) and the instruction tasks' (a loss of 0.88 against 1.01).
LORA_LR = 3e-3

# Muon's default peak learning rate: the value of torch.optim.Muon's documented example (and of
# Keller Jordan's original runs), with its "original" shape adjustment (see trainer.make_muon).
MUON_LR = 0.02


def muon_missing() -> str | None:
    """Why --optimizer muon cannot run here (torch.optim.Muon came with torch 2.9), or None."""
    import torch  # here, not at the top: this module loads without torch

    if hasattr(torch.optim, "Muon"):
        return None
    return f"--optimizer muon needs torch.optim.Muon, in torch 2.9 or later; this torch is {torch.__version__}"


@dataclass
class TrainConfig:
    """How to train. Each field is a `main.py train` flag of the same name (dashes for underscores)."""

    batch_size: int = _opt(16, 'sequences per micro-step')
    grad_accum: int = _opt(1, 'micro-steps per optimizer step')
    lr: float = _opt(6e-4, 'peak learning rate')
    min_lr_ratio: float = _opt(0.1, 'the cosine decays to lr * min_lr_ratio')
    warmup_steps: int | None = _opt(None, 'steps of linear warm-up (default: a tenth of the schedule, at most 100)')
    steps: int | None = _opt(None, "total optimizer steps (the schedule's length; with no --steps, --epochs or "
                                   "--minutes, one epoch)")
    minutes: float | None = _opt(None, 'wall-clock budget of this run')
    epochs: float | None = _opt(None, 'passes over the training tokens (used when steps is not given)')
    weight_decay: float = _opt(0.1, 'on matrices only (not on biases, LayerNorms)')
    beta1: float = _opt(0.9, "AdamW's beta1")
    beta2: float = _opt(0.95, "AdamW's beta2")
    grad_clip: float = _opt(1.0, 'clip the gradient norm to this')
    label_smoothing: float = _opt(0.0, 'train toward (1 - e) x the next token + e x uniform over the vocabulary '
                                       '(the loss in training only; evaluations are plain cross-entropy)')
    ema: float = _opt(0.0, 'evaluate, sample and save a moving average of the weights that takes in each step '
                           'with this decay (0: off; 0.99 spans about the last 100 steps)')
    eval_every: int = _opt(250, 'steps between evaluations and checkpoints')
    eval_tokens: int = _opt(200_000, 'validation tokens per evaluation (at most)')
    log_every: int = _opt(10, 'steps between metrics-log lines')
    val_fraction: float = _opt(0.1, 'the part of the text held out for validation: its end, or with --test-fraction '
                                    'the part just before the test part')
    test_fraction: float = _opt(0.0, 'the last part of the text held out as a test part: no evaluation reads it until '
                                     "the run's end, where its loss and bits per byte are reported beside validation's")
    batch_mode: str = _opt("random", 'random windows, or epoch: every window once per epoch')
    stride: int | None = _opt(None, 'window stride in epoch mode (default: the context length)')
    device: str = _opt("auto", 'auto | cpu | cuda | mps')
    dtype: str = _opt("auto", 'auto | float32 | bfloat16 | float16')
    compile: bool = _opt(False, 'torch.compile the model')
    grad_checkpoint: bool = _opt(False, "keep only each block's input and recompute its activations in the backward "
                                        "pass: less memory, about a third more compute, the same results")
    optimizer: str = _opt("adamw", "adamw, or muon: Muon for the attention and MLP matrices, AdamW for the rest")
    muon_lr: float | None = _opt(None, f"Muon's peak learning rate, on the same schedule as --lr (default: {MUON_LR}, "
                                       f"torch's example; with --optimizer muon only)")
    seed: int = _opt(1337, 'seed of the weights, the batches and dropout')
    workers: int | None = _opt(None, 'processes that encode the text on first use (default: one per core)')
    sample_prompt: str | None = _opt(None, 'prompt of the sample printed at each evaluation '
                                           '(default: the start of the validation text)')
    sample_tokens: int = _opt(64, 'tokens of that sample (0: no samples)')
    init_from: str | None = _opt(None, "start from this model's weights and tokenizer (fine-tuning): a checkpoint, "
                                       "a transformers folder or a hub name such as gpt2")
    mask_prompt: bool = _opt(True, 'instruction records: the loss is on the responses only (--no-mask-prompt: on '
                                   'every token but the padding)')
    classify: bool = _opt(False, 'the input is labelled texts (JSONL with "text" and "label", or CSV / TSV): train a '
                                 'classifier that reads each text and scores its classes at the last token',
                          flag="--classify")
    train_blocks: int | None = _opt(None, "classifier: train only the last N blocks, the final norm and the new head "
                                          "(default: all of the model)")
    text_column: str | None = _opt(None, "classifier: the texts' column of a CSV/TSV (a header's name or a 0-based "
                                         "index) or a JSONL field (default: text)")
    label_column: str | None = _opt(None, "classifier: the labels' column or field, as --text-column (default: label)")
    balance: bool = _opt(False, "classifier: as many examples of each class as of the rarest (drawn with a fixed "
                                "seed, before the split)", flag="--balance")
    lora: int = _opt(0, "with --init-from: freeze the model and train rank-R adapters (LoRA) on its matrices; the "
                        "checkpoint holds the adapters and names the model (0: off, train the weights themselves)")
    lora_alpha: float | None = _opt(None, "LoRA: the adapters' update is scaled by alpha / rank (default: the rank)")
    lora_dropout: float = _opt(0.0, "LoRA: dropout on the adapters' input")
    lora_targets: str = _opt("attention", "LoRA: the matrices that get adapters: attention (its input and output "
                                          "projections), mlp, or both", choices=("attention", "mlp", "both"))

    def __post_init__(self):
        problems = []
        for f in fields(self):  # NaN and infinity pass comparisons such as "lr <= 0" unnoticed
            value = getattr(self, f.name)
            if type(value) is float and not math.isfinite(value):
                problems.append(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if problems:
            raise ConfigError("; ".join(problems))
        for name in ("batch_size", "grad_accum", "eval_every", "log_every", "eval_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if workers_problem(self.workers):
            problems.append(workers_problem(self.workers))
        if self.sample_tokens < 0:
            problems.append(f"--sample-tokens must be 0 or more, got {self.sample_tokens}")
        if self.lr <= 0:
            problems.append(f"--lr must be positive, got {self.lr}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            problems.append(f"--warmup-steps must be 0 or more, got {self.warmup_steps}")
        if self.steps is not None and self.steps < 1:
            problems.append(f"--steps must be at least 1, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            problems.append(f"--minutes must be positive, got {self.minutes}")
        if self.steps is not None and self.epochs is not None:
            problems.append("--steps and --epochs both give the schedule's length: choose one (--minutes may join either)")
        if self.epochs is not None and self.epochs <= 0:
            problems.append(f"--epochs must be positive, got {self.epochs}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.ema < 1:
            problems.append(f"--ema must be in [0, 1), got {self.ema}")
        if not 0 <= self.val_fraction < 1:
            problems.append(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.test_fraction < 1:
            problems.append(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        elif self.val_fraction + self.test_fraction >= 1:
            problems.append(f"--val-fraction {self.val_fraction:g} and --test-fraction {self.test_fraction:g} leave "
                            f"nothing to train on: together they must be under 1")
        if not is_device_name(self.device):
            problems.append(f"--device must be {DEVICE_NAMES}, got {self.device!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            problems.append(f"--dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        problems += self._part_problems()
        if self.optimizer not in ("adamw", "muon"):
            problems.append(f"--optimizer must be adamw or muon, got {self.optimizer!r}")
        elif self.optimizer == "muon" and muon_missing():
            problems.append(muon_missing())
        if self.muon_lr is not None and self.optimizer != "muon":
            problems.append(f"--muon-lr is the learning rate of --optimizer muon, not of {self.optimizer}")
        elif self.muon_lr is not None and self.muon_lr <= 0:
            problems.append(f"--muon-lr must be positive, got {self.muon_lr}")
        if self.batch_mode not in ("random", "epoch"):
            problems.append(f"--batch-mode must be random or epoch, got {self.batch_mode!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    def _part_problems(self) -> list[str]:
        """What is wrong with the settings of training part of a model: a classifier's, LoRA's."""
        problems = []
        if self.train_blocks is not None and self.train_blocks < 0:
            problems.append(f"--train-blocks must be 0 or more, got {self.train_blocks}")
        if self.lora < 0:
            problems.append(f"--lora (the adapters' rank) must be 0 or more, got {self.lora}")
        lora_only = [f"--{n.replace('_', '-')}" for n in ("lora_alpha", "lora_dropout")
                     if getattr(self, n) not in (None, 0.0)] + (["--lora-targets"] if self.lora_targets != "attention" else [])
        if lora_only and not self.lora:
            problems.append(f"{', '.join(lora_only)} go{'es' * (len(lora_only) == 1)} with --lora R")
        if self.lora and self.init_from is None:
            problems.append("--lora trains adapters on a trained model: give it with --init-from")
        if self.lora and self.train_blocks is not None:
            problems.append("--lora and --train-blocks are two ways to train part of a model: choose one")
        classifier_only = [f"--{n.replace('_', '-')}" for n in ("train_blocks", "text_column", "label_column", "balance")
                           if getattr(self, n) not in (None, False)]
        if classifier_only and not self.classify:
            problems.append(f"{', '.join(classifier_only)} go{'es' * (len(classifier_only) == 1)} with --classify")
        return problems
