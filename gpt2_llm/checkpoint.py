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
import pickle
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from basics import UserError, atomic_write

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "model_config", "model")  # "lora" (adapters that name their base) for "model"


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


def save_model(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Write a model's config and weights (no tokenizer, no training state): a checkpoint that
    loading.load reads back, as it reads the trainer's."""
    save_checkpoint(path, {"model_config": asdict(model.config), "model": model.state_dict()})


def _kind_of_file(path: Path) -> str | None:
    """What a file is when it is plainly not a torch file (None when it may be one): the first
    bytes of a torch file are a zip archive's."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        return None
    if head.startswith(b"bpe-vocab"):
        return "it is a vocab file (were the arguments swapped? the vocab file comes before the checkpoint)"
    if not head:
        return "the file is empty"
    return "it is not a torch file"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by save_checkpoint, or raise CheckpointError saying why not."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    what = _kind_of_file(path)
    if what is not None:
        raise CheckpointError(f"{path} is not a readable checkpoint: {what}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the file's code: never say that.
        raise CheckpointError(f"{path} is not a readable checkpoint: it holds Python objects besides tensors "
                              f"and plain values, which no checkpoint of ours does (refused; nothing in it was run)") from None
    except Exception as e:  # noqa: BLE001
        # Damaged bytes fail in arbitrary ways (RuntimeError for a truncated zip, KeyError, EOFError, ...).
        raise CheckpointError(f"{path} is not a readable checkpoint: truncated or corrupt ({type(e).__name__})") from None
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise CheckpointError(f"{path} is not a gpt2_llm checkpoint (no format_version)")
    version = checkpoint["format_version"]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, "
            f"but this version of gpt2_llm reads version {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint and not (key == "model" and "lora" in checkpoint)]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}")
    return checkpoint


def check_output_path(path: str | os.PathLike) -> Path:
    """Before a long run: the checkpoint's path names a file, in a folder that exists (it is made
    if need be) and can be written. Returns it as a Path; a CheckpointError says what is wrong."""
    path = Path(path)
    if str(path).endswith(("/", os.sep)) or path.is_dir():
        raise CheckpointError(f"--out {path} is a folder: give a file name, such as {path / 'model.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot make the folder of --out {path}: {e.strerror}") from None
    if not os.access(path.parent, os.W_OK):
        raise CheckpointError(f"cannot write in {path.parent.resolve()} (the folder of --out {path})")
    return path


@contextmanager
def output_lock(path: str | os.PathLike):
    """Hold an exclusive lock on a run's output while the run writes it, so that a second run into
    the same checkpoint is refused instead of silently replacing it. The lock is NAME.lock beside
    the checkpoint, locked with flock: the system releases it when the process ends, however it
    ends, so a lock file left by a killed run is stale and simply taken over. Without flock
    (not POSIX) there is no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(f"another run (process {holder}) is writing {path}: wait for it to end, "
                                  f"or choose another --out") from None
        # The holder before us may have removed the file between our open and our lock: then we
        # hold a lock on a file nobody else will open, and must take the one now at that path.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield
    finally:
        Path(lock_path).unlink(missing_ok=True)
        os.close(fd)
