"""Training data: a text file -> a cached token file (memmap) -> (x, y) batches.

    corpus.txt --BPE.iter_encode_file--> corpus.txt.<key>.tokens.bin   (uint16, or uint32 for big vocabs)
    tokens: [ train ............................................ | val (last part) ]
    batch:  x = tokens[i : i+T],  y = tokens[i+1 : i+T+1]   for B window starts i

The token file's name carries a key made of the text's SHA-256 and the tokenizer's hash, so a
second run on the same text starts at once, and a changed text or vocabulary is encoded afresh.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

CACHE_ENV = "GPT2_TOOLKIT_CACHE"  # where token files go when the text's own folder is read-only


class DataError(ValueError):
    """A problem with the training text that the user can fix (one-line message)."""


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gpt2-toolkit")


def token_file_path(text_path: str | os.PathLike, tokenizer) -> Path:
    """Where the tokens of `text_path` under `tokenizer` are cached: beside the text when that
    folder is writable, else in the cache folder ($GPT2_TOOLKIT_CACHE or ~/.cache/gpt2-toolkit)."""
    text_path = Path(text_path)
    key = hashlib.sha256((file_sha256(text_path) + tokenizer.hash).encode()).hexdigest()[:16]
    name = f"{text_path.name}.{key}.tokens.bin"
    folder = text_path.resolve().parent
    if not os.access(folder, os.W_OK):
        folder = default_cache_dir()
    return folder / name


def load_tokens(text_path: str | os.PathLike, tokenizer, progress: bool = False, workers: int | None = None) -> np.ndarray:
    """The tokens of a text file as a read-only memmap, encoding (streamed) on first use.

    Special-token strings in the text (such as <|endoftext|> between documents) become their ids.
    The file is written to a temporary name and renamed when complete, so an interrupted run
    never leaves a truncated cache behind.
    """
    text_path = Path(text_path)
    if not text_path.exists():
        raise DataError(f"training file not found: {text_path}")
    if text_path.is_dir():
        raise DataError(f"{text_path} is a directory, not a text file")
    if text_path.stat().st_size == 0:
        raise DataError(f"{text_path} is empty: there is no text to train on")
    path = token_file_path(text_path, tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _encode_to_file(text_path, tokenizer, path, dtype, progress)
    return np.memmap(path, dtype=dtype, mode="r")


def _encode_to_file(text_path: Path, tokenizer, path: Path, dtype: np.dtype, progress: bool) -> None:
    from tqdm import tqdm

    from bpe import iter_text_chunks  # the tokenizer module at the repository's top level

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, tqdm(total=text_path.stat().st_size, unit="B", unit_scale=True,
                                             desc="encoding", delay=1.0, disable=not progress) as bar:
            for chunk in iter_text_chunks(text_path, tokenizer.special_tokens):
                ids = tokenizer.encode(chunk, allowed_special="all")
                f.write(np.asarray(ids, dtype=dtype).tobytes())
                bar.update(len(chunk.encode("utf-8")))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a cache is as readable as the text
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_tokens(tokens: np.ndarray, val_fraction: float, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Train on the first part, validate on the last `val_fraction` of the tokens."""
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n_val = int(len(tokens) * val_fraction)
    train, val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
    need = block_size + 1
    if len(train) < need or (val_fraction > 0 and len(val) < need):
        raise DataError(
            f"the text is too short: {len(tokens):,} tokens give {len(train):,} for training and {len(val):,} "
            f"for validation, and each needs at least one window of {need} (--context {block_size}); "
            f"use a longer text, a shorter --context or a smaller --val-fraction"
        )
    return train, val


class Batches:
    """Endless (x, y) batches from a token array, reproducible from a seed and resumable.

    mode "random": each window starts at a random token (nanoGPT's way; best for large texts).
    mode "epoch":  the windows tokens[k*stride : k*stride + T + 1] are visited in a fresh random
                   order every epoch (for small texts: every part is seen equally often).
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, seed: int,
                 mode: str = "random", stride: int | None = None):
        if mode not in ("random", "epoch"):
            raise ValueError(f"unknown batch mode {mode!r}: use 'random' or 'epoch'")
        self.tokens, self.batch_size, self.block_size, self.mode = tokens, batch_size, block_size, mode
        self.stride = stride or block_size
        self.num_windows = len(tokens) - block_size  # possible window starts
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.position, self.order = 0, 0, None

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows(self._starts())

    def _starts(self) -> torch.Tensor:
        if self.mode == "random":
            return torch.randint(self.num_windows, (self.batch_size,), generator=self.generator)
        starts = []
        while len(starts) < self.batch_size:
            if self.order is None or self.position >= len(self.order):
                if self.order is not None:
                    self.epoch += 1
                count = math.ceil(self.num_windows / self.stride)
                self.order = torch.randperm(count, generator=self.generator) * self.stride
                self.position = 0
            take = self.order[self.position : self.position + self.batch_size - len(starts)]
            starts += take.tolist()
            self.position += len(take)
        return torch.tensor(starts)

    def windows(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.block_size
        rows = np.stack([self.tokens[i : i + T + 1] for i in starts.tolist()])  # (B, T+1)
        batch = torch.from_numpy(rows.astype(np.int64))
        return batch[:, :-1], batch[:, 1:]  # x, y: (B, T) each, y is x shifted by one

    @property
    def epochs_done(self) -> float:
        """How many passes over the data the batches so far amount to."""
        if self.mode == "epoch" and self.order is not None:
            return self.epoch + self.position / len(self.order)
        return float("nan")

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch, "position": self.position,
                "order": self.order}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self.position, self.order = state["epoch"], state["position"], state["order"]


def eval_windows(tokens: np.ndarray, block_size: int, max_tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping windows covering the tokens in order: (n, T+1), at most ~max_tokens."""
    T = block_size
    n = (len(tokens) - 1) // T
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // T))
    used = np.asarray(tokens[: n * T + 1], dtype=np.int64)
    return torch.from_numpy(np.lib.stride_tricks.sliding_window_view(used, T + 1)[::T].copy())
