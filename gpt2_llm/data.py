"""Training data: text files -> a cached token file (memmap) -> (x, y) batches.

    corpus.txt --BPE.iter_encode_file--> corpus.txt.<key>.tokens.bin   (uint16, or uint32 for big vocabs)
    tokens: [ train ............................................ | val (last part) ]
    batch:  x = tokens[i : i+T],  y = tokens[i+1 : i+T+1]   for B window starts i

The input is a text file, a folder (its *.txt files, recursively, in sorted order), a glob pattern
such as "data/*.txt", or a list of these; several files are joined with <|endoftext|> between
documents. Encoding is streamed, in parallel (one process per core for inputs over 8 MB), and
written as it goes, so memory does not grow with the corpus.

The token file's name carries a key made of the text's SHA-256 and the tokenizer's hash, so a
second run on the same text starts at once, and a changed text or vocabulary is encoded afresh.
Where it goes:
  - one file: beside it, as FILE.<key>.tokens.bin;
  - several files: beside the deepest folder that holds them all, as FOLDER.<key>.tokens.bin
    (for a folder given as input, that is next to it in its parent, so the cache is not inside
    the corpus); the key covers every file's SHA-256, in order;
  - in the cache folder ($GPT2_TOOLKIT_CACHE, or ~/.cache/gpt2-toolkit) when that place is not
    writable.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch

from bpe import TokenizerError, UserError, atomic_write, text_digest, text_files, token_typecode

CACHE_ENV = "GPT2_TOOLKIT_CACHE"  # where token files go when the text's own folder is read-only


class DataError(UserError):
    """A problem with the training text that the user can fix (one-line message)."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The numpy dtype of the token file: that of the arrays the tokenizer yields (uint16 or uint32)."""
    return np.dtype(token_typecode(vocab_size))


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gpt2-toolkit")


def input_files(text_path) -> list[Path]:
    """The files of a training input (see bpe.text_files), or a DataError saying what is wrong."""
    try:
        return text_files(text_path)
    except TokenizerError as e:
        raise DataError(str(e)) from None


def token_file_path(text_path, tokenizer) -> Path:
    """Where the tokens of a training input (a file, folder, glob or list) under `tokenizer` are
    cached (see the module's docstring)."""
    return _token_file_path(input_files(text_path), tokenizer)


def _token_file_path(files: list[Path], tokenizer) -> Path:
    key = hashlib.sha256((text_digest(files) + tokenizer.hash).encode()).hexdigest()[:16]  # the files' order counts
    if len(files) == 1:
        folder, name = files[0].resolve().parent, files[0].name
    else:
        common = Path(os.path.commonpath([f.resolve().parent for f in files]))
        folder, name = common.parent, common.name or "corpus"  # "corpus" if the common folder is /
    if not os.access(folder, os.W_OK):
        folder = default_cache_dir()
    return folder / f"{name}.{key}.tokens.bin"


def load_tokens(text_path, tokenizer, progress: bool = False, workers: int | None = None) -> np.ndarray:
    """The tokens of a training input as a read-only memmap, encoding it on first use.

    text_path: a text file, a folder, a glob pattern, or a list of these (see the module's
    docstring). Special-token strings in the text (such as <|endoftext|> between documents)
    become their ids. workers: processes that encode (default: one per core for inputs over
    8 MB); the tokens are the same whatever the number. The file is written to a temporary name
    and renamed when complete, so an interrupted run never leaves a truncated cache behind.
    """
    files = input_files(text_path)
    if all(f.stat().st_size == 0 for f in files):
        raise DataError(f"{text_path} is empty: there is no text to train on")
    path = _token_file_path(files, tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _encode_to_file(files, tokenizer, path, dtype, progress, workers)
    return np.memmap(path, dtype=dtype, mode="r")


def _encode_to_file(files: list[Path], tokenizer, path: Path, dtype: np.dtype, progress: bool,
                    workers: int | None) -> None:
    with atomic_write(path) as f:  # an interrupted run never leaves a truncated cache behind
        # Each chunk's ids (about 1 MB of text) are written as they come, in order: arrays of
        # 2-byte ids up to 65,536 tokens and 4-byte ones above, as `dtype` (bpe.token_typecode).
        for ids in tokenizer.iter_encode_file(files, allowed_special="all", workers=workers, progress=progress):
            assert ids.itemsize == dtype.itemsize
            f.write(ids)


def split_tokens(tokens: np.ndarray, val_fraction: float, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Train on the first part, validate on the last `val_fraction` (checked by TrainConfig) of the tokens."""
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

    Streams: an optimizer step takes one micro-batch from each of `num_streams` streams
    (processes x accumulation micro-steps); a process uses those in `mine`, one per call, in order.
    In random mode each stream has its own generator (stream s is seeded with seed + s); in epoch
    mode stream s takes the s-th share of every num_streams * batch_size windows of the epoch's
    order. Every process advances all the streams, so each holds the whole state, and one process
    with grad_accum = N draws exactly the windows of N processes with grad_accum = 1.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, seed: int,
                 mode: str = "random", stride: int | None = None, num_streams: int = 1, mine=None):
        if mode not in ("random", "epoch"):
            raise ValueError(f"unknown batch mode {mode!r}: use 'random' or 'epoch'")
        self.tokens, self.batch_size, self.block_size, self.mode = tokens, batch_size, block_size, mode
        self.stride = stride or block_size
        self.num_windows = len(tokens) - block_size  # possible window starts
        self.mine = list(range(num_streams) if mine is None else mine)
        self.generators = [torch.Generator().manual_seed(seed + s) for s in range(num_streams)]
        self.epoch, self.position, self.order = 0, 0, None
        self.turn = 0  # the next of `mine` to hand out
        self.round: list[torch.Tensor] = []  # this step's window starts of every stream

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.turn == 0:
            self.round = self._draw_round()
        starts = self.round[self.mine[self.turn]]
        self.turn = (self.turn + 1) % len(self.mine)
        return self.windows(starts)

    def _draw_round(self) -> list[torch.Tensor]:
        """The window starts of every stream for one optimizer step."""
        B = self.batch_size
        if self.mode == "random":
            return [torch.randint(self.num_windows, (B,), generator=g) for g in self.generators]
        starts = self._epoch_starts(B * len(self.generators))
        return list(starts.split(B))

    def _epoch_starts(self, n: int) -> torch.Tensor:
        starts = []
        while len(starts) < n:
            if self.order is None or self.position >= len(self.order):
                if self.order is not None:
                    self.epoch += 1
                count = math.ceil(self.num_windows / self.stride)
                self.order = torch.randperm(count, generator=self.generators[0]) * self.stride
                self.position = 0
            take = self.order[self.position : self.position + n - len(starts)]
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
        """The position at a step boundary (checkpoints are taken between optimizer steps)."""
        return {"generators": [g.get_state() for g in self.generators], "epoch": self.epoch,
                "position": self.position, "order": self.order}

    def load_state_dict(self, state: dict) -> None:
        states = state.get("generators") or [state["generator"]]  # one generator before streams
        if len(states) != len(self.generators):
            raise DataError(f"the checkpoint's data position has {len(states)} batch streams, this run "
                             f"{len(self.generators)} (processes x --grad-accum must stay the same to resume)")
        for generator, saved in zip(self.generators, states):
            generator.set_state(saved)
        self.epoch, self.position, self.order = state["epoch"], state["position"], state["order"]
        self.turn, self.round = 0, []


def validation_windows(tokens: np.ndarray, block_size: int, tokenizer, max_tokens: int | None = None
                       ) -> tuple[torch.Tensor, int]:  # fmt: skip
    """Windows to evaluate on (see eval_windows) and the bytes of text their predicted tokens stand
    for: the denominator of bits per byte. Special tokens (the <|endoftext|> between documents)
    are not text and count no bytes."""
    windows = eval_windows(tokens, block_size, max_tokens)
    specials = set(getattr(tokenizer, "special_tokens", {}).values())
    predicted = [i for i in windows[:, 1:].flatten().tolist() if i not in specials]
    return windows, len(tokenizer.decode_bytes(predicted))


def eval_windows(tokens: np.ndarray, block_size: int, max_tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping windows covering the tokens in order: (n, T+1), at most ~max_tokens."""
    T = block_size
    n = (len(tokens) - 1) // T
    if max_tokens is not None:
        n = min(n, max(1, max_tokens // T))
    used = np.asarray(tokens[: n * T + 1], dtype=np.int64)
    return torch.from_numpy(np.lib.stride_tricks.sliding_window_view(used, T + 1)[::T].copy())
