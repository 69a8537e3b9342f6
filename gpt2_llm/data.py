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

Instruction records (JSON lines) take another road, at the end of this file:

    data.jsonl --read_records--> conversations --instruct (template, loss mask)--> examples (x, y)
    every 10th record held out | the rest --InstructionBatches--> padded (x, y) batches

Each example is a whole record (never a window cut from a stream), its targets set to
instruct.IGNORE_INDEX where the loss does not count. They are few and short enough to be
encoded at every start, so they have no cache file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from basics import UserError, atomic_write
from bpe import BPE, ENDOFTEXT, TokenizerError, text_digest, text_files, token_typecode

from .instruct import IGNORE_INDEX, TEMPLATES, RecordError, Template, example_arrays, record_kind, record_messages

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


def split_tokens(tokens: np.ndarray, val_fraction: float, block_size: int, test_fraction: float = 0.0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The tokens in three parts, in text order: train | validation | test. The test part is the
    last `test_fraction` of the tokens, validation the `val_fraction` before it (both fractions of
    the whole, checked by TrainConfig); an empty part is a fraction of 0."""
    n_test = int(len(tokens) * test_fraction)
    n_val = int(len(tokens) * val_fraction)
    train_end, val_end = len(tokens) - n_test - n_val, len(tokens) - n_test
    train, val, test = tokens[:train_end], tokens[train_end:val_end], tokens[val_end:]
    need = block_size + 1
    short = [name for name, part, fraction in (("training", train, 1), ("validation", val, val_fraction),
                                              ("test", test, test_fraction)) if fraction > 0 and len(part) < need]
    if short:
        raise DataError(
            f"the text is too short: {len(tokens):,} tokens give {len(train):,} for training, {len(val):,} "
            f"for validation and {len(test):,} for the test part, and each needs at least one window of {need} "
            f"(--context {block_size}); use a longer text, a shorter --context or smaller --val-fraction/--test-fraction"
        )
    return train, val, test


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
    def round_tokens(self) -> int:
        """Positions one optimizer step computes, over all streams."""
        return self.batch_size * self.block_size * len(self.generators)

    @property
    def epochs_done(self) -> float:
        """How many passes over the data the batches so far amount to."""
        if self.mode == "epoch" and self.order is not None:
            return self.epoch + self.position / len(self.order)
        return float("nan")

    def token_counts(self) -> np.ndarray:
        """How often each id occurs in the training tokens (indexed by id, up to the largest)."""
        return np.bincount(self.tokens)

    def state_dict(self) -> dict:
        """The position at a step boundary (checkpoints are taken between optimizer steps)."""
        return {"generators": [g.get_state() for g in self.generators], "epoch": self.epoch,
                "position": self.position, "order": self.order}

    def load_state_dict(self, state: dict) -> None:
        if "kind" in state:
            raise DataError(f"the checkpoint was trained on {DATA_KINDS.get(state['kind'], state['kind'])}, not on "
                            f"text: continue it on them")
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


# ---- instruction records -------------------------------------------------------------------------

RECORD_KEYS = ("instruction", "messages")  # a JSON line with one of these is an instruction record
_SNIFF_BYTES = 1 << 20  # how much of a file's first line is read to tell records from text


def is_instruction_input(files: list[Path]) -> bool:
    """Are these files instruction records rather than text? A file named .jsonl is always read as
    records (a bad line is then an error, not text to train on); any other file is, when its
    first non-blank line is a JSON object with an "instruction" or "messages" field."""
    kinds = {_holds_records(f) for f in files}
    if len(kinds) > 1:
        records = next(f for f in files if _holds_records(f))
        text = next(f for f in files if not _holds_records(f))
        raise DataError(f"{records} holds instruction records and {text} text: train on one kind at a time")
    return kinds == {True}


def _holds_records(path: Path) -> bool:
    if path.suffix.lower() == ".jsonl":
        return True
    with open(path, "rb") as f:
        while line := f.readline(_SNIFF_BYTES):  # at most this much, whatever the text (one huge line?)
            if line.strip():
                try:
                    first = json.loads(line.decode("utf-8-sig"))
                except ValueError:  # not UTF-8, not JSON, or a line cut short: text
                    return False
                return isinstance(first, dict) and any(key in first for key in RECORD_KEYS)
    return False


def read_records(files: list[Path]) -> tuple[Template, list[list[dict]]]:
    """The conversations of JSON-lines files (one record a line; blank lines skipped) and the
    template their kind calls for. Every problem is one DataError naming the file and line."""
    conversations, kind, first = [], None, None
    for path in files:
        for number, line in _numbered_lines(path):
            try:
                record = json.loads(line)
                this = record_kind(record)
                messages = record_messages(record)
            except ValueError as e:  # json's errors, and RecordError (a UserError is a ValueError)
                problem = e if isinstance(e, RecordError) else f"not a JSON line ({getattr(e, 'msg', e)})"
                raise DataError(f"{path}:{number}: {problem}") from None
            if kind is None:
                kind, first = this, f"{path}:{number}"
            elif this != kind:
                raise DataError(f"{path}:{number}: a {_KIND_NAMES[this]} record, but the records before it are "
                                f"{_KIND_NAMES[kind]} (from {first}): one run trains on one kind")
            conversations.append(messages)
    if not conversations:
        raise DataError(f"{', '.join(map(str, files))}: no records (one JSON object a line)")
    return TEMPLATES[kind], conversations


_KIND_NAMES = {"alpaca": "Alpaca (instruction, input, output)", "chat": "chat (messages)"}


def _numbered_lines(path: Path):
    """(line number, text) of a UTF-8 file's non-blank lines; a bad byte is named by its offset."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text: invalid byte 0x{data[e.start]:02x} at byte offset {e.start}") from None
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
        if line.strip():
            yield number, line


def records_tokenizer(files: list[Path], vocab_size: int, pattern: str = "gpt2", workers: int | None = None,
                      progress: bool = False) -> BPE:  # fmt: skip
    """A tokenizer learned from instruction records as the model reads them, each rendered in its
    template (not their JSON, with its quotes and escapes). It records the files it was learned
    from, as one learned from a text does, so a later run on them knows it for theirs."""
    template, conversations = read_records(files)
    text = ENDOFTEXT.join(template.render(messages) for messages in conversations)
    tokenizer = BPE.train(text, vocab_size, pattern=pattern, progress=progress, workers=workers)
    names = ", ".join(str(f) for f in files[:3]) + (f" and {len(files) - 3} more files" if len(files) > 3 else "")
    tokenizer.trained_on = {"text": names, "bytes": sum(f.stat().st_size for f in files), "sha256": text_digest(files)}
    return tokenizer


def split_records(conversations: list, val_fraction: float) -> tuple[list, list]:
    """Hold out every k-th record (k = 1 / val_fraction, spread evenly over the file, so a file
    sorted by task still validates on every task); train on the rest. Deterministic, seed aside."""
    held = [int((i + 1) * val_fraction) > int(i * val_fraction) for i in range(len(conversations))]
    train = [c for c, h in zip(conversations, held) if not h]
    val = [c for c, h in zip(conversations, held) if h]
    if not train or (val_fraction > 0 and not val):
        raise DataError(f"too few records: {len(conversations)} give {len(train)} for training and {len(val)} "
                        f"for validation (--val-fraction {val_fraction:g}); each needs at least one")
    return train, val


DATA_KINDS = {"instructions": "instruction records", "labelled": "labelled texts"}  # a data position's "kind"


@dataclass
class Examples:
    """Encoded examples, concatenated: example k is x[starts[k]:starts[k+1]] with its targets y there."""

    x: np.ndarray  # (total,) input ids
    y: np.ndarray  # (total,) target ids, IGNORE_INDEX where the loss does not count
    starts: np.ndarray  # (n + 1,)

    def __len__(self) -> int:
        return len(self.starts) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)

    def batch(self, indices, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples as (x, y), (b, L) each, L the longest of them, right-padded: inputs with
        pad_id, targets with IGNORE_INDEX. Attention is causal, so a real token never sees the
        padding after it, and each row is its own sequence: no example attends to another."""
        lengths = self.lengths[indices]
        x = np.full((len(indices), lengths.max()), pad_id, dtype=np.int64)
        y = np.full_like(x, IGNORE_INDEX)
        for row, (k, n) in enumerate(zip(indices, lengths)):
            x[row, :n] = self.x[self.starts[k] : self.starts[k] + n]
            y[row, :n] = self.y[self.starts[k] : self.starts[k] + n]
        return torch.from_numpy(x), torch.from_numpy(y)


def encode_examples(conversations: list, template: Template, tokenizer, block_size: int, mask_prompt: bool = True
                    ) -> tuple[Examples, int]:  # fmt: skip
    """The conversations as examples of at most block_size positions (see instruct.example_arrays),
    and how many were cut to fit."""
    xs, ys, cut = [], [], 0
    for messages in conversations:
        x, y, was_cut = example_arrays(messages, template, tokenizer, block_size, mask_prompt)
        xs.append(x)
        ys.append(y)
        cut += was_cut
    starts = np.cumsum([0] + [len(x) for x in xs])
    return Examples(np.concatenate(xs), np.concatenate(ys), starts), cut


class InstructionBatches:
    """Endless padded (x, y) batches of whole examples, reproducible from a seed and resumable.

    Every epoch visits each example once, in an order drawn from (seed, epoch): the examples are
    shuffled and cut into batches, each padded to its longest example. Streams work as in
    Batches: an optimizer step takes the next batch of the epoch for each of `num_streams`
    streams, and this process uses those in `mine`; every process draws the same order, so one
    process with grad_accum = N sees exactly the batches of N processes.

    POOL > 1 groups examples of similar length (sorted within pools of POOL batches, the batches
    then shuffled), which wastes less padding, but where length goes with the kind of task, as it
    often does, a batch then holds one kind of task, and learning was measured to be several times
    slower (BENCHMARKS.md, "Fine-tuning on instructions"): so every batch is a random draw.
    """

    POOL = 1
    KIND = "instructions"  # what a checkpoint's data position says it was trained on (see DATA_KINDS)

    def __init__(self, examples: Examples, batch_size: int, seed: int, pad_id: int, num_streams: int = 1,
                 mine=None):  # fmt: skip
        self.examples, self.batch_size, self.seed, self.pad_id = examples, batch_size, seed, pad_id
        self.num_streams = num_streams
        self.mine = list(range(num_streams) if mine is None else mine)
        self.epoch, self.position = 0, 0
        self.plan = self._plan(0)
        self.turn = 0
        self.round: list[np.ndarray] = []
        self.round_tokens = 0  # positions of the last step's batches, over all streams

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.turn == 0:
            self.round = [self._next_batch() for _ in range(self.num_streams)]
            self.round_tokens = sum(len(b) * int(self.examples.lengths[b].max()) for b in self.round)
        indices = self.round[self.mine[self.turn]]
        self.turn = (self.turn + 1) % len(self.mine)
        return self.examples.batch(indices, self.pad_id)

    def _next_batch(self) -> np.ndarray:
        if self.position == len(self.plan):
            self.epoch, self.position = self.epoch + 1, 0
            self.plan = self._plan(self.epoch)
        self.position += 1
        return self.plan[self.position - 1]

    def _plan(self, epoch: int) -> list[np.ndarray]:
        """The batches of one epoch, as arrays of example indices."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.examples))
        lengths, pool = self.examples.lengths, self.POOL * self.batch_size
        batches = []
        for i in range(0, len(order), pool):
            chunk = order[i : i + pool]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        return [batches[k] for k in rng.permutation(len(batches))]

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.position / len(self.plan)

    def token_counts(self) -> np.ndarray:
        """How often each id occurs in the examples, as an input and as a target (indexed by id)."""
        x, y = self.examples.x, self.examples.y
        return np.bincount(np.concatenate([x, y[y != IGNORE_INDEX]]))

    def state_dict(self) -> dict:
        return {"kind": self.KIND, "seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.KIND:
            raise DataError(f"the checkpoint was trained on {DATA_KINDS.get(state.get('kind'), 'text')}, not on "
                            f"{DATA_KINDS[self.KIND]}: continue it on what it was trained on")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self.plan = self._plan(self.epoch)
        if self.position > len(self.plan):
            raise DataError(f"the checkpoint's data position (batch {self.position} of epoch {self.epoch}) is past "
                            f"the {len(self.plan)} batches of these records: continue it on the records it was "
                            f"trained on, with the same --batch-size")
        self.turn, self.round = 0, []


def instruction_eval_set(examples: Examples, tokenizer, pad_id: int, max_tokens: int | None = None
                         ) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:  # fmt: skip
    """The validation examples as one padded (x, y) pair (shortest first: batches cut from it in
    order waste little padding, and trainer.evaluate trims what no row needs), at most about
    max_tokens positions; and the bytes of text its counted targets stand for (bits per byte).
    The end-of-turn token is not text and counts no bytes."""
    lengths = examples.lengths
    order = np.argsort(lengths, kind="stable")
    if max_tokens is not None:
        order = order[: max(1, int(np.searchsorted(np.cumsum(lengths[order]), max_tokens, side="right")))]
    x, y = examples.batch(order, pad_id)
    specials = set(tokenizer.special_tokens.values())
    counted = [t for t in y[y != IGNORE_INDEX].tolist() if t not in specials]
    return (x, y), len(tokenizer.decode_bytes(counted))
