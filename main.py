"""Command-line tool: train a BPE tokenizer, encode and decode text.

    python main.py tokenize corpus.txt --vocab-size 4096      # writes vocab.txt
    python main.py encode "Hello world"                       # prints [..ids..]
    python main.py decode "[15496, 995]"                      # prints the text

This file only parses arguments, calls the library and prints. Every error a user can cause
ends with one line on stderr and exit code 1 (2 for a malformed command line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import bpe

DEFAULT_VOCAB = "vocab.txt"


class UserError(Exception):
    """An error caused by the user's input: reported as one line, exit code 1."""


# ---- helpers ---------------------------------------------------------------------------------


def read_text_file(path: str) -> None:
    """Check that `path` is a readable, non-empty file (its text is streamed later)."""
    if not os.path.exists(path):
        raise UserError(f"file not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, not a text file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty: there is no text to learn from")


def load_tokenizer(path: str) -> bpe.BPE:
    if not os.path.exists(path):
        hint = " (make one with: python main.py tokenize <text file>)" if path == DEFAULT_VOCAB else ""
        raise UserError(f"vocab file not found: {path}{hint}")
    return bpe.BPE.load(path)


def read_arg_or_stdin(value: str) -> str:
    """'-' means: read standard input (as UTF-8, whatever the locale)."""
    if value != "-":
        return value
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"standard input is not UTF-8 text: invalid byte at offset {e.start}") from None


def parse_ids(text: str) -> list[int]:
    try:
        ids = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON ids: {e.msg} at character {e.pos}; expected a list like [15496, 995]") from None
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise UserError("invalid JSON ids: expected a list of integers like [15496, 995]")
    return ids


# ---- subcommands -----------------------------------------------------------------------------


def cmd_tokenize(args: argparse.Namespace) -> None:
    read_text_file(args.file)
    size = os.path.getsize(args.file)
    vocab_size = args.vocab_size or bpe.recommended_vocab_size(size)
    start = time.perf_counter()
    tok = bpe.BPE.train(args.file, vocab_size, pattern=args.pattern, progress=True)
    seconds = time.perf_counter() - start
    if tok.vocab_size < vocab_size:
        print(f"note: the text offers only {tok.vocab_size} tokens' worth of merges", file=sys.stderr)
    tok.save(args.output)
    if args.vocab_size is None:
        print(f"vocab size {vocab_size}: recommended for {size:,} bytes (choose with --vocab-size)")
    print(f"wrote {args.output}: {tok.vocab_size} tokens ({len(tok.merges)} merges), trained in {seconds:.1f} s, hash {tok.hash[:16]}")


def cmd_encode(args: argparse.Namespace) -> None:
    tok = load_tokenizer(args.vocab_file)
    text = read_arg_or_stdin(args.text)
    if not args.allow_special:
        for special in tok.special_tokens:
            if special in text:
                raise UserError(f"the text contains the special token {special!r}; add --allow-special to encode it as one token")
    ids = tok.encode(text, allowed_special="all" if args.allow_special else ())
    print(json.dumps(ids))


def cmd_decode(args: argparse.Namespace) -> None:
    tok = load_tokenizer(args.vocab_file)
    ids = parse_ids(read_arg_or_stdin(args.ids))
    if args.pieces:
        print(json.dumps(tok.token_pieces(ids), ensure_ascii=False))
    else:
        print(tok.decode(ids))


# ---- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="main.py", description="A GPT-2 toolkit: byte-level BPE tokenizer.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("tokenize", help="train a BPE tokenizer on a text file", description="Train a byte-level BPE tokenizer on a UTF-8 text file and write its vocab file.")
    p.add_argument("file", help="UTF-8 text file to learn from")
    p.add_argument("--vocab-size", type=int, default=None, help="tokens in all: 256 bytes + merges + special tokens (default: chosen from the file size, see bpe.recommended_vocab_size)")
    p.add_argument("--pattern", choices=sorted(bpe.PATTERNS), default="gpt2", help="pre-tokenization regex (default: gpt2)")
    p.add_argument("-o", "--output", default=DEFAULT_VOCAB, help=f"vocab file to write (default: {DEFAULT_VOCAB})")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("encode", help="text -> JSON list of token ids", description="Encode text and print the JSON list of token ids.")
    p.add_argument("text", help="the text, or - to read standard input")
    p.add_argument("vocab_file", nargs="?", default=DEFAULT_VOCAB, help=f"vocab file, or a folder with GPT-2's encoder.json and vocab.bpe (default: {DEFAULT_VOCAB})")
    p.add_argument("--allow-special", action="store_true", help="encode special-token strings such as <|endoftext|> as their own ids (by default such text is refused)")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="JSON list of token ids -> text", description="Decode a JSON list of token ids and print the text.")
    p.add_argument("ids", help="JSON list of ids such as [15496, 995], or - to read standard input")
    p.add_argument("vocab_file", nargs="?", default=DEFAULT_VOCAB, help=f"vocab file, or a folder with GPT-2's encoder.json and vocab.bpe (default: {DEFAULT_VOCAB})")
    p.add_argument("--pieces", action="store_true", help="print each token's text as a JSON list instead of the joined text")
    p.set_defaults(func=cmd_decode)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # UTF-8 output whatever the locale
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="replace")
    try:
        args.func(args)
    except (UserError, bpe.TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
