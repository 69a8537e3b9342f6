"""The one way to load a model: a checkpoint file -> the model, its tokenizer, and what else it holds.

    load("gpt2_model.pt") -> Loaded(model, tokenizer, checkpoint, path)

Every reader of a model goes through `load`: `main.py` predict, eval and train (to continue a run),
`check_checkpoint.py`, `GPT2.load` and `Trainer.from_checkpoint`. So a file is checked once, in one
order, and each problem is one line (a CheckpointError) naming the file:

    1. the file itself: a torch file read without running pickles, of our format (checkpoint.py)
    2. its model config: known fields only, the required ones present, each of the right type
       and value (GPT2Config.from_dict); fields added in later versions take their defaults
    3. its weights: every tensor the config implies, of the shape it implies, and nothing else
    4. its tokenizer (written by main.py train; GPT2.save stores none): it parses, its hash is the
       one recorded, and the model has an embedding row for each of its tokens
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bpe import BPE, TokenizerError

from .checkpoint import CheckpointError, load_checkpoint
from .config import ConfigError, GPT2Config
from .gpt2 import GPT2

# What a checkpoint written by the trainer holds besides the model, to continue the run exactly.
TRAINING_KEYS = ("optimizer", "train_config", "state", "rng", "tokenizer")


@dataclass
class Loaded:
    """A loaded model (in eval mode, on the CPU unless asked otherwise) and what came with it."""

    model: GPT2
    tokenizer: BPE | None  # None when the file holds weights only (GPT2.save)
    path: Path
    checkpoint: dict = field(repr=False)  # everything stored: optimizer, train_config, state, rng, data, ...

    @property
    def can_resume(self) -> bool:
        return all(key in self.checkpoint for key in TRAINING_KEYS)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Loaded:
    """Read and check a checkpoint (see the module's docstring); a CheckpointError says what is wrong.
    The model goes to `device`; the rest of the checkpoint stays on the CPU."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    try:
        config = GPT2Config.from_dict(checkpoint["model_config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    weights = checkpoint["model"]
    model = GPT2(config)
    problem = weights_problem(model, weights)
    if problem:
        raise CheckpointError(f"{path}: its weights do not fit its model config: {problem}")
    model.load_state_dict(weights)
    model.to(device)
    return Loaded(model.eval(), read_tokenizer(checkpoint, path, config), path, checkpoint)


def weights_problem(model: GPT2, weights) -> str | None:
    """Why a state dict cannot be loaded into `model`, in one line; None when it can.

    An embedding of vocab_size rows stands for the padded one (GPT2.load_state_dict pads it)."""
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        return "the weights are not a dict of tensors"
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    config = model.config
    wrong = []
    for name, t in weights.items():
        want = expected.get(name)
        unpadded = name in ("wte.weight", "lm_head.weight") and tuple(t.shape) == (config.vocab_size, config.n_embd)
        if want is not None and tuple(t.shape) != want and not unpadded:
            wrong.append(f"{name} is {_shape(t.shape)}, the config needs {_shape(want)}")
    problems = [f"{what} {_some(names)}" for what, names in (("missing", missing), ("unexpected", unexpected)) if names]
    problems += wrong[:3] + ([f"and {len(wrong) - 3} more of another shape"] if len(wrong) > 3 else [])
    return "; ".join(problems) or None


def read_tokenizer(checkpoint: dict, path: Path, config: GPT2Config) -> BPE | None:
    """The tokenizer stored beside the model (None if there is none), checked against the model."""
    stored = checkpoint.get("tokenizer")
    if stored is None:
        return None
    if not isinstance(stored, dict) or not isinstance(stored.get("text"), str):
        raise CheckpointError(f"{path}: its tokenizer entry is not a vocab text")
    try:
        tokenizer = BPE.from_text(stored["text"], f"{path} (its tokenizer)")
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None
    if stored.get("hash") not in (None, tokenizer.hash):
        raise CheckpointError(f"{path}: its tokenizer does not match the hash recorded beside it (a damaged file?)")
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{path}: its tokenizer has {tokenizer.vocab_size} tokens but the model's embedding "
                              f"only {config.vocab_size} rows")
    return tokenizer


def _shape(shape) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
