"""The one way checkpoints are written and read.

A checkpoint is a dict saved with torch.save:
    format_version  int, FORMAT_VERSION of the code that wrote it
    model_config    asdict(GPT2Config): plain ints, floats, bools
    model           the model's state dict (of the uncompiled module: no "_orig_mod." keys)
Later versions add the optimizer and the training state beside these.

Writing is atomic: a crash mid-save leaves the previous file as it was. Reading goes through
torch.load(weights_only=True), which refuses any pickle that would run code.
"""

import os
from pathlib import Path

import torch

from bpe import UserError, atomic_write

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_config", "model")


class CheckpointError(UserError):
    """A checkpoint that cannot be used; the message is one line that says why."""


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> None:
    """Write `checkpoint` to `path` atomically; `format_version` is added when absent."""
    path = Path(path)
    checkpoint = {"format_version": FORMAT_VERSION, **checkpoint}
    if "model" in checkpoint:
        # A state dict taken from torch.compile's wrapper prefixes every key; store the plain names.
        checkpoint["model"] = {k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()}
    with atomic_write(path) as f:  # a crash or Ctrl-C mid-save leaves the previous file as it was
        torch.save(checkpoint, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by save_checkpoint, or raise CheckpointError saying why not."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        # Arbitrary bytes fail in arbitrary ways (UnpicklingError for a pickle that would run code,
        # RuntimeError for a truncated zip, KeyError or EOFError for garbage): all mean "unusable".
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt or not a torch file): {reason}"
        ) from None
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise CheckpointError(f"{path} is not a gpt2_llm checkpoint (no format_version)")
    version = checkpoint["format_version"]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, "
            f"but this version of gpt2_llm reads version {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}")
    return checkpoint
