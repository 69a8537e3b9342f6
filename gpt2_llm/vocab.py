"""Vocab files: learn one from a text (`main.py tokenize`) or take a model's; encode and decode with one.

    tokenize("corpus.txt", output="vocab.txt", vocab_size=4096)    # learns and writes vocab.txt
    tokenize(from_checkpoint="gpt2_model.pt", output="v.txt")       # the tokenizer a model holds
    encode("Hello world", "vocab.txt")                              # [..ids..]
    decode([15496, 995], "vocab.txt")                               # the text

Importing this module imports no torch (learning and taking a tokenizer import it when they
run): encode and decode stay fast.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import bpe
from basics import UserError, atomic_write

from .config import DEFAULT_VOCAB


def text_inputs(spec: str, purpose: str = "learn from") -> list:
    """The files a text argument names (a file, a folder of .txt files, or a quoted glob pattern),
    checked to hold some text (they are streamed later)."""
    files = bpe.text_files(spec)
    if all(os.path.getsize(f) == 0 for f in files):
        raise UserError(f"{spec} is empty: there is no text to {purpose}")
    return files


def text_bytes(files: list) -> int:
    return sum(os.path.getsize(f) for f in files)


def load_vocab(path: str) -> bpe.BPE:
    """A vocab file (or a folder of GPT-2's files); the default name, missing, says how to make it."""
    if not os.path.exists(path):
        hint = " (make one with: python main.py tokenize <text file>)" if path == DEFAULT_VOCAB else ""
        raise UserError(f"vocab file not found: {path}{hint}")
    return bpe.BPE.load(path)


def encode(text: str, vocab: bpe.BPE | str = DEFAULT_VOCAB, allow_special: bool = False) -> list[int]:
    """The ids of `text` (vocab: a tokenizer or its vocab file); special-token strings such as
    <|endoftext|> become their ids only if allowed."""
    tokenizer = load_vocab(vocab) if isinstance(vocab, str) else vocab
    try:
        return tokenizer.encode(text, allowed_special="all" if allow_special else ())
    except bpe.SpecialTokenError as e:  # bpe's message names its keyword arguments; say the flag instead
        raise UserError(f"the text contains the special token {e.token!r}; "
                        f"add --allow-special to encode it as one token") from None


def decode(ids: list[int], vocab: bpe.BPE | str = DEFAULT_VOCAB, pieces: bool = False) -> str | list[str]:
    """The text of `ids` (vocab: a tokenizer or its vocab file); with pieces, each token's own text."""
    tokenizer = load_vocab(vocab) if isinstance(vocab, str) else vocab
    return tokenizer.token_pieces(ids) if pieces else tokenizer.decode(ids)


def tokenize(text: str | None = None, *, output: str = DEFAULT_VOCAB, from_checkpoint: str | None = None,
             vocab_size: int | None = None, pattern: str | None = None, workers: int | None = None,
             overwrite: bool = False, say: Callable = print) -> tuple[bpe.BPE, str]:  # fmt: skip
    """Write a vocab file: learned from `text` (a file, a folder or a glob), or the tokenizer a model
    holds (from_checkpoint: a checkpoint, a transformers folder or a hub name). Returns it and how it
    was made. A Ctrl-C at any moment leaves the old output as it was."""
    check_tokenize_args(text, from_checkpoint, vocab_size, pattern, workers)
    files = text_inputs(text) if text else []  # a bad text is reported before a taken output
    if os.path.exists(output) and not overwrite:
        raise UserError(f"{output} already exists: pass --overwrite to replace it, or choose another -o")
    with ctrl_c_remembered() as stop_if_interrupted:
        if from_checkpoint:
            tokenizer, made = tokenizer_of_checkpoint(from_checkpoint), f"the tokenizer of {from_checkpoint}"
        else:
            tokenizer, made = learn_vocab(files, vocab_size, pattern, workers, say)
        with atomic_write(output, "w") as f:
            f.write(tokenizer.to_text())
            stop_if_interrupted()  # raised inside the block, it removes the new file: the old one stays
    return tokenizer, made


def check_tokenize_args(text, from_checkpoint, vocab_size, pattern, workers) -> None:
    """Where the tokenizer comes from: a text or a checkpoint, exactly one, with settings that fit it."""
    if (text is None) == (from_checkpoint is None):
        raise UserError("give a text to learn from or --from-checkpoint MODEL.pt (exactly one of them)")
    training_flags = {"--vocab-size": vocab_size, "--pattern": pattern, "--workers": workers}
    given = [flag for flag, value in training_flags.items() if value is not None]
    if from_checkpoint and given:
        raise UserError(f"{given[0]} is for learning from a text: --from-checkpoint writes the tokenizer stored in "
                        f"the checkpoint as it is")


def learn_vocab(files: list, vocab_size: int | None = None, pattern: str | None = None, workers: int | None = None,
                say: Callable = print) -> tuple[bpe.BPE, str]:  # fmt: skip
    """A tokenizer learned from text files (instruction records as their template renders them), of
    vocab_size tokens or the size recommended for the text, and how it was made."""
    from .data import is_instruction_input, records_tokenizer  # these import torch: encode and decode do not

    size = text_bytes(files)
    wanted = vocab_size or bpe.recommended_vocab_size(size)
    chosen = {"pattern": pattern} if pattern else {}  # else BPE.train's default
    start = time.perf_counter()
    if is_instruction_input(files):
        tokenizer = records_tokenizer(files, wanted, workers=workers, progress=True, **chosen)
    else:
        tokenizer = bpe.BPE.train(files, wanted, progress=True, workers=workers, **chosen)
    seconds = time.perf_counter() - start
    if tokenizer.vocab_size < wanted:
        say(f"note: the text offers only {tokenizer.vocab_size} tokens' worth of merges", file=sys.stderr)
    if vocab_size is None:
        say(f"vocab size {wanted}: recommended for {size:,} bytes (choose with --vocab-size)")
    return tokenizer, f"trained in {seconds:.1f} s"


def tokenizer_of_checkpoint(name: str) -> bpe.BPE:
    """The tokenizer a model holds (a checkpoint, a transformers folder or a hub name)."""
    from .loading import load, why_no_tokenizer

    loaded = load(name)
    if loaded.tokenizer is None:
        raise UserError(f"{name} holds model weights only, no tokenizer ({why_no_tokenizer(loaded)})")
    return loaded.tokenizer


@contextlib.contextmanager
def ctrl_c_remembered() -> Iterator[Callable[[], None]]:
    """Within the block Ctrl-C raises KeyboardInterrupt as usual, and is also remembered: the
    function the block gets raises it again if one came.

    Python only prints an exception raised in a __del__ or a finalizer ("Exception ignored in ...")
    and goes on, so an interrupt that lands in one (a progress bar's, a worker queue's) would be
    lost, and the work would go on to replace its output and exit 0. Call the function just before
    committing anything.
    """
    came: list[int] = []

    def on_ctrl_c(signum, frame):
        came.append(signum)
        raise KeyboardInterrupt

    def stop_if_interrupted() -> None:
        if came:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield stop_if_interrupted  # only the main thread may set a handler (and only it gets Ctrl-C)
        return
    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield stop_if_interrupted
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
