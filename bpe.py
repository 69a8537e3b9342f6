"""Byte-level BPE tokenizer in pure Python (the `regex` module does the pre-tokenization).

How it works, in three steps:

1. Pre-tokenization. A regex cuts text into pieces ("pre-tokens"): words with their leading
   space, runs of digits, runs of punctuation, runs of whitespace. Merges never cross a piece
   boundary, so " the" can become one token but "e t" never does.
2. Bytes. Each piece is UTF-8 encoded; the 256 byte values are the base tokens, so every string
   can be encoded and nothing is ever "unknown".
3. Merges. Training repeatedly joins the most frequent adjacent pair of tokens into a new token.
   Encoding replays them: inside a piece, the adjacent pair whose joined bytes form the
   lowest-ranked token is merged first (leftmost on ties), until no adjacent pair forms a token.
   A token's rank is its id, so earlier merges win. This is exactly the rule of OpenAI's GPT-2
   encoder and tiktoken, which is why `BPE.from_gpt2` reproduces their ids token for token.

Worked example (no regex split, 3 merges):

    >>> bpe = BPE.train("aaabdaaabac", vocab_size=259, pattern=r".+", special_tokens=())
    >>> bpe.merges                     # "aa"->256, "ab"->257, then "aa"+"ab"->258
    [(97, 97), (97, 98), (256, 257)]
    >>> bpe.encode("aaabdaaabac")
    [258, 100, 258, 97, 99]
    >>> bpe.decode([258, 100, 258, 97, 99])
    'aaabdaaabac'

Special tokens such as "<|endoftext|>" are whole tokens with ids after the merged ones. Following
tiktoken's safe policy, `encode` refuses text that contains one unless it is allowed explicitly,
and `encode_ordinary` treats such text as ordinary characters.

Corpora larger than memory: `BPE.train` and `BPE.iter_encode_file` take a file, a folder of .txt
files or a list (see `text_files`), read it in chunks of about 1 MB, and share the chunks among
one process per core (for inputs over 8 MB), a few chunks at a time.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import gc
import glob
import hashlib
import heapq
import json
import math
import operator
import os
import sys
from array import array
from collections import Counter, deque
from pathlib import Path
from typing import Collection, Iterable, Iterator, Literal

import re as _re

import regex

from basics import UserError, atomic_write  # re-exported: bpe.UserError is the same class

# GPT-2's pre-tokenization pattern (OpenAI's encoder.py, as tiktoken spells it).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4's (tiktoken cl100k_base): case-insensitive contractions, digits in groups of at most
# three, newlines kept apart from other whitespace.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
_GPT2_FULL = regex.compile(GPT2_PATTERN)
ENDOFTEXT = "<|endoftext|>"

FORMAT_NAME = "bpe-vocab"
FORMAT_VERSION = 1

_NO_MERGE = 1 << 62  # rank of a pair that is not a token: larger than any real rank
_LONG_PIECE = 200  # bytes; longer pieces use the O(n log n) heap merge instead of the O(n^2) scan
_CHUNK_BYTES = 1 << 20  # files are read and pre-tokenized in pieces of about this size
_PARALLEL_BYTES = 8 << 20  # texts larger than this are pre-tokenized and encoded by several processes
_CACHE_LIMIT = 500_000  # pre-tokens remembered by encode before the cache is cleared
_CACHE_MAX_PIECE = 64  # characters; longer pieces are rare and not worth remembering

# GPT-2's pattern restricted to ASCII text, for the standard library's `re`, which is faster than
# `regex` on it. On ASCII input, \s is [\t\n\v\f\r ], \p{L} is [A-Za-z] and \p{N} is [0-9], so this
# finds exactly the same pieces (test_bpe.py checks that on random ASCII text).
_W = r"\t\n\v\f\r "
_GPT2_ASCII = _re.compile(
    rf"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_W}A-Za-z0-9]+|[{_W}]+(?![^{_W}])|[{_W}]+"""
)
# Under GPT-2's pattern a whitespace character that is followed by a non-space always starts a
# new piece, and the pieces before it do not depend on what follows (see _gpt2_findall).
_GPT2_CUT = regex.compile(r"\s(?=\S)")
# Characters: blocks that _gpt2_findall sorts into ASCII or not. Larger blocks mean fewer cuts to
# find; smaller ones mean that one non-ASCII character sends less ASCII text to the slower `regex`.
_BLOCK = 256

# A place where a file may be cut into chunks without changing any pre-token: right after a
# newline that sits between two non-space characters ("end.\nNext"), or, for text without
# newlines, between a letter and " <letter>" (" word" always starts a new piece). Both built-in
# patterns end a piece there, whatever follows, so chunks pre-tokenize exactly like the whole.
_SAFE_CUT = regex.compile(r"(?r)(?<=\S\n)(?=\S)|(?<=\p{L})(?= \p{L})")


def _replace_but_keep_surrogates(err: UnicodeDecodeError) -> tuple[str, int]:
    r"""Decode error handler: like "replace" (U+FFFD for broken bytes), except that the 3-byte
    form of a lone surrogate, which encode writes for strs such as "\ud800", decodes back to it."""
    b = err.object[err.start : err.start + 3]
    if len(b) == 3 and b[0] == 0xED and 0xA0 <= b[1] <= 0xBF and 0x80 <= b[2] <= 0xBF:
        return b.decode("utf-8", "surrogatepass"), err.start + 3
    return "\ufffd", err.end


_REPLACE = "bpe.replace"
codecs.register_error(_REPLACE, _replace_but_keep_surrogates)


class TokenizerError(UserError):
    """A user-facing problem with a tokenizer file or with input text (one-line message)."""


class SpecialTokenError(TokenizerError):
    """Text holds the string of a special token that `encode` was not allowed to encode.

    `token` is that special token, so a caller can word its own advice (main.py names its flag).
    """

    def __init__(self, message: str, token: str):
        super().__init__(message)
        self.token = token

    def __reduce__(self):
        # Pickled when raised in an encoding worker; the default would call cls(message) alone.
        return type(self), (str(self), self.token)


# ----------------------------------------------------------------------------------------------
# Reading text: which files, then each streamed, lossless, with the byte offset of any invalid UTF-8.


def text_files(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The files a text input names, in the order they are read.

    spec: a file; a folder (the *.txt files in it and its subfolders, in sorted path order); a glob
    pattern such as "data/*.txt" (the files it matches, sorted); or a list of any of these.
    The toolkit's own outputs (see _tool_output) are never text: a folder or a glob leaves them out
    without a word (a vocab file saved beside the corpus is the common case, not a surprise), and a
    file named on its own that is one is refused.
    """
    if not isinstance(spec, (str, os.PathLike)):
        files = [file for item in spec for file in text_files(item)]
        if not files:
            raise TokenizerError("no text files given")
        return files
    path = Path(spec)
    if path.is_file():
        what = _tool_output(path)
        if what:
            raise TokenizerError(f"{path} is {what}, not text")
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*.txt") if p.is_file())
        files = [p for p in found if not _tool_output(p)]
        if not files:
            raise TokenizerError(f"{path} is a directory with no .txt files in it{_only_outputs(found)}")
        return files
    if any(ch in str(spec) for ch in "*?["):
        found = sorted(Path(m) for m in glob.glob(str(spec), recursive=True) if os.path.isfile(m))
        files = [p for p in found if not _tool_output(p)]
        if not files:
            raise TokenizerError(f"no file matches {str(spec)!r}{_only_outputs(found)}")
        return files
    raise TokenizerError(f"file not found: {spec}")


def _tool_output(path: Path) -> str | None:
    """What the file is if the toolkit wrote it ("a vocab file", ...), else None.

    Vocab files are known by their first line, whatever their name (only its first bytes are read);
    token caches and metrics logs by the name the toolkit gives them.
    """
    if path.name.endswith(".tokens.bin"):
        return "a token cache"
    if path.name.endswith(".metrics.jsonl"):
        return "a metrics log"
    header = f"{FORMAT_NAME} ".encode()
    try:
        with open(path, "rb") as f:
            return "a vocab file" if f.read(len(header)) == header else None
    except OSError:
        return None  # reading it as text will say what is wrong


def _only_outputs(found: list[Path]) -> str:
    """The end of the message for a folder or glob whose only files are the toolkit's outputs."""
    if not found:
        return ""
    return f" (only the toolkit's own outputs, such as {found[0].name}, which is {_tool_output(found[0])})"


def file_sha256(path: str | os.PathLike) -> str:
    """The file's SHA-256. A run asks for it several times (the vocab's record, the token cache's
    name), so it is remembered while the file keeps its size and modification time."""
    st = os.stat(path)
    return _sha256_of(os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=1024)
def _sha256_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def text_digest(files: list[Path]) -> str:
    """SHA-256 naming the text of these files, in order: a file's own SHA-256, or for several the
    SHA-256 of theirs, one a line. A vocab file records it, and so does the token cache's name."""
    if len(files) == 1:
        return file_sha256(files[0])
    return hashlib.sha256("".join(file_sha256(f) + "\n" for f in files).encode()).hexdigest()


def files_name(files: list[Path]) -> str:
    """How a vocab file names the text it was learned from: the files, the first three of a longer list."""
    more = f" and {len(files) - 3} more files" if len(files) > 3 else ""
    return ", ".join(str(f) for f in files[:3]) + more


def workers_problem(workers: int | None) -> str | None:
    """What is wrong with a number of worker processes (the --workers flag), or None: the one check
    of it, used by training and encoding here and by the trainer's config."""
    if workers is not None and workers < 1:
        return f"--workers must be at least 1, got {workers}"
    return None


def default_workers(num_bytes: int) -> int:
    """Processes that pre-tokenize or encode `num_bytes` of text: one per core, but a single one
    for texts up to 8 MB, whose work is too short to repay starting the others."""
    return (os.cpu_count() or 1) if num_bytes > _PARALLEL_BYTES else 1


def iter_text_chunks(
    path: str | os.PathLike, special_tokens: Collection[str] = (), chunk_bytes: int = _CHUNK_BYTES
) -> Iterator[str]:
    """Yield a UTF-8 file as str chunks cut at safe places, never holding the whole file.

    Line endings are kept as they are (no "\\r\\n" -> "\\n"), so encoding stays lossless. Bytes
    that are not UTF-8 raise TokenizerError naming their offset in the file.
    """
    # A read of chunk_bytes bytes decodes to at least chunk_bytes / 4 characters (UTF-8 takes at
    # most 4 bytes a character), so asking for that many makes each read release about one chunk.
    chunker = _SafeChunker(special_tokens, max(1, chunk_bytes // 4))
    with open(path, "rb") as f:
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0  # bytes of the file read before `data`
        while True:
            data = f.read(chunk_bytes)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                # The decoder may hold up to 3 bytes of a character begun in the last read;
                # the error's position counts from the first of those.
                held = len(decoder.getstate()[0]) if data else 0
                bad = offset - held + e.start
                f.seek(bad)
                raise TokenizerError(
                    f"{path} is not UTF-8 text: invalid byte 0x{f.read(1)[0]:02x} at byte offset {bad}"
                ) from None
            yield from chunker.feed(text)
            if not data:
                break
            offset += len(data)
    yield from chunker.finish()


def iter_str_chunks(text: str, special_tokens: Collection[str] = ()) -> Iterator[str]:
    """The same cutting for a str already in memory, so a large text is handled in slices."""
    if len(text) <= _CHUNK_BYTES:
        yield text
        return
    chunker = _SafeChunker(special_tokens, _CHUNK_BYTES)
    for start in range(0, len(text), _CHUNK_BYTES):
        yield from chunker.feed(text[start : start + _CHUNK_BYTES])
    yield from chunker.finish()


class _SafeChunker:
    """Buffers text and releases it up to the last safe cut once enough has arrived."""

    def __init__(self, special_tokens: Collection[str], min_size: int):
        self.buf = ""
        self.min_size = min_size
        self.special_tokens = [s for s in special_tokens if len(s) > 1]

    def feed(self, text: str) -> Iterator[str]:
        self.buf += text
        if len(self.buf) >= self.min_size:
            cut = self._last_safe_cut()
            if cut > 0:
                yield self.buf[:cut]
                self.buf = self.buf[cut:]

    def finish(self) -> Iterator[str]:
        if self.buf:
            yield self.buf
        self.buf = ""

    def _last_safe_cut(self) -> int:
        end = len(self.buf)
        while True:
            m = _SAFE_CUT.search(self.buf, 0, end)
            if m is None:
                return 0  # no safe place yet: keep buffering
            cut = m.start()
            if not any(self._inside(s, cut) for s in self.special_tokens):
                return cut
            end = cut - 1

    def _inside(self, special: str, cut: int) -> bool:
        """Does an occurrence of `special` straddle position `cut`?"""
        start = self.buf.find(special, max(0, cut - len(special) + 1), cut + len(special) - 1)
        return 0 <= start < cut


# ----------------------------------------------------------------------------------------------
# Small pure helpers: GPT-2's byte <-> printable-character table, and token bytes in vocab files.


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """OpenAI's table that shows each byte as a printable character in encoder.json/vocab.bpe.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, ...) are shifted
    to U+0100 and up, in byte order. So b" " is shown as "Ġ" (U+0120) and b"\\n" as "Ċ".
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    shifted = (b for b in range(256) if b not in table)
    for n, b in enumerate(shifted):
        table[b] = chr(256 + n)
    return table


def token_to_text(token: bytes) -> str:
    """Token bytes as a JSON string for the vocab file: readable text where the bytes are UTF-8,
    and `\\udcXX` escapes (Python's surrogateescape) for bytes that are not."""
    s = token.decode("utf-8", "surrogateescape")
    # A lone surrogate cannot be written as UTF-8, so such tokens are written all-ASCII.
    ascii_only = any("\udc80" <= ch <= "\udcff" for ch in s)
    return json.dumps(s, ensure_ascii=ascii_only)


def text_to_token(s: str) -> bytes:
    """Inverse of token_to_text, after json decoding: exact for every byte string."""
    return s.encode("utf-8", "surrogateescape")


# ----------------------------------------------------------------------------------------------
# Encoding one pre-token: tiktoken's rule, lowest-ranked adjacent pair first, leftmost on ties.


def _merge_short(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Merge the bytes of one piece into tokens. O(n^2) in C-level list scans; fast for short n.

    >>> _merge_short(b"abc", {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"ab": 4})
    [0, 3]
    """
    parts = [piece[i : i + 1] for i in range(len(piece))]
    pair_ranks = [ranks.get(parts[i] + parts[i + 1], _NO_MERGE) for i in range(len(parts) - 1)]
    while pair_ranks:
        best = min(pair_ranks)
        if best == _NO_MERGE:
            break
        i = pair_ranks.index(best)  # leftmost of the lowest rank
        parts[i] += parts[i + 1]
        del parts[i + 1], pair_ranks[i]
        # Only the two pairs that touch the merged part change.
        if i > 0:
            pair_ranks[i - 1] = ranks.get(parts[i - 1] + parts[i], _NO_MERGE)
        if i < len(pair_ranks):
            pair_ranks[i] = ranks.get(parts[i] + parts[i + 1], _NO_MERGE)
    return [ranks[p] for p in parts]


def _merge_long(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Same result as _merge_short in O(n log n): a heap of (rank, position) over a linked list.

    Positions are the start offsets of parts, so "leftmost on ties" is the heap's own order.
    Stale heap entries (a neighbour has merged since) are recognised and skipped.
    """
    n = len(piece)
    parts = [piece[i : i + 1] for i in range(n)]  # parts[i] is the part starting at i, or None
    nxt = list(range(1, n + 1))  # start of the following part (n: none)
    prv = list(range(-1, n - 1))  # start of the preceding part (-1: none)
    heap = [(r, i) for i in range(n - 1) if (r := ranks.get(parts[i] + parts[i + 1])) is not None]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = nxt[i]
        if parts[i] is None or j >= n or ranks.get(parts[i] + parts[j]) != rank:
            continue  # stale
        parts[i] += parts[j]
        parts[j] = None
        nxt[i] = nxt[j]
        if nxt[i] < n:
            prv[nxt[i]] = i
        for left, right in ((prv[i], i), (i, nxt[i])):
            if left >= 0 and right < n:
                r = ranks.get(parts[left] + parts[right])
                if r is not None:
                    heapq.heappush(heap, (r, left))
    return [ranks[p] for p in parts if p is not None]


def _gpt2_findall(text: str) -> list[str]:
    r"""GPT-2's pre-tokenization, fast: ASCII blocks go to `re`, the others to `regex`.

    Why cutting into blocks is exact: at a whitespace character w followed by a non-space
    character, every alternative of the pattern ends a piece before w (none holds a non-space
    followed by a space), and the piece before w is the same whether w or the end of the text
    follows it (`\s+(?!\S)` keeps the last space of a run for the next piece, which is w).
    """
    if text.isascii():
        return _GPT2_ASCII.findall(text)
    slow, fast, cut = _GPT2_FULL.findall, _GPT2_ASCII.findall, _GPT2_CUT.search
    pieces: list[str] = []
    start = 0
    while start < len(text):
        m = cut(text, start + _BLOCK)
        end = m.start() if m else len(text)
        block = text[start:end]
        pieces += fast(block) if block.isascii() else slow(block)
        start = end
    return pieces


def _compile_findall(pattern: str):
    """The pre-tokenizer for a pattern: the fast path for GPT-2's, `regex` for any other."""
    if pattern == GPT2_PATTERN:
        return _gpt2_findall
    try:
        return regex.compile(pattern).findall
    except regex.error as e:
        raise TokenizerError(f"invalid pre-tokenization pattern: {e}") from None


class _PieceCache(dict):
    """pre-token str -> token ids; a miss runs BPE on the piece and remembers the answer."""

    def __init__(self, ranks: dict[bytes, int]):
        super().__init__()
        self.ranks = ranks
        self.seed()

    def seed(self) -> None:
        # A piece that is itself a token encodes to that token (tiktoken's rule too), so every
        # token that is whole UTF-8 text starts out in the cache: a fresh tokenizer is warm for them.
        for token, rank in self.ranks.items():
            try:
                self[token.decode("utf-8")] = [rank]
            except UnicodeDecodeError:
                pass

    def __missing__(self, piece: str) -> list[int]:
        data = piece.encode("utf-8", "surrogatepass")  # lone surrogates too: every str encodes
        merge = _merge_short if len(data) <= _LONG_PIECE else _merge_long
        ids = merge(data, self.ranks)
        if len(piece) <= _CACHE_MAX_PIECE:
            if len(self) >= _CACHE_LIMIT:
                self.clear()
                self.seed()
            self[piece] = ids
        return ids


# ----------------------------------------------------------------------------------------------
# Training: count pre-tokens once, then merge with incremental pair counts.


def recommended_vocab_size(num_bytes: int) -> int:
    """Vocab size for a corpus of `num_bytes` bytes when the user names none.

    The rule: the power of two nearest to 2*sqrt(num_bytes), kept within [512, 32768].
    A small corpus gets a small vocab, so each token is seen often enough to be learned
    (1 MB -> 2048, 20 MB -> 8192, 1 GB -> 32768); 32768 keeps ids in uint16.
    """
    if num_bytes <= 0:
        return 512
    exponent = round(math.log2(2 * math.sqrt(num_bytes)))
    return min(max(2**exponent, 512), 32768)


def count_pretokens(
    chunks: Iterable[str], pattern: str, special_tokens: Collection[str] = (), workers: int = 1
) -> Counter:
    """How often each pre-token occurs. Special tokens are cut out first, never counted.

    With workers > 1, chunks are counted by that many processes (the regex work is what takes
    the time) and their counts summed here. The counts do not depend on how the chunks were
    shared out (only the order of the Counter's keys does, which training ignores), so neither
    do the merges.
    """
    special_tokens = tuple(special_tokens)
    if workers > 1:
        return _count_in_processes(chunks, pattern, special_tokens, workers)
    counts: Counter = Counter()
    for chunk in chunks:
        _count_into(counts, chunk, pattern, special_tokens)
    return counts


def _count_into(counts: Counter, chunk: str, pattern: str, special_tokens: tuple[str, ...]) -> None:
    findall = _compile_findall(pattern)
    if special_tokens and any(s in chunk for s in special_tokens):
        for part in _special_splitter(special_tokens)(chunk):
            counts.update(findall(part))
    else:
        counts.update(findall(chunk))  # Counter.update of a list counts in C


def train_merges(
    words: list[str], counts: list[int], token_bytes: list[bytes], num_tokens: int, progress: bool = False
) -> dict[int, tuple[int, int]]:
    """Merge until there are `num_tokens` tokens or no pair occurs any more; return {new id: pair}.

    Each distinct pre-token is a "word" with its count. A word is held as a str with one character
    per token, chr(id), so merging a pair everywhere in it is one str.replace, done in C, and a
    pair is a 2-character string (which sorts like (left id, right id)). `words` are merged in
    place; `token_bytes` (id -> bytes) grows as tokens are made.
    Each step merges the most frequent adjacent pair. Tie-break rule: among pairs with the same
    count, the one with the smallest (left id, right id) wins, so training is deterministic.
    A merge whose bytes already form a token (reached earlier by another pair) reuses that id.

    Rather than recount every pair after each merge, we keep:
      pair_count[p]  how often pair p occurs, weighted by word counts
      where[p]       the words that may hold p (a superset: stale entries are skipped)
      heap           (-count, pair) entries; an entry is trusted only if it matches a positive pair_count
    and after merging (a, b) we update only the words that held it: around an occurrence with
    left neighbour x and right neighbour y, (x, a) and (b, y) lose the word's count, (x, new)
    and (new, y) gain it.
    """
    from tqdm import tqdm

    pair_count, where = _count_pairs(words, counts)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)
    token_id = {b: i for i, b in enumerate(token_bytes)}
    parents: dict[int, tuple[int, int]] = {}
    # Closed by the `with` however the loop ends (Ctrl-C included), rather than later by the bar's __del__.
    with tqdm(total=num_tokens - len(token_bytes), desc="merges", unit="token", delay=1.0, disable=not progress,
              file=sys.stderr) as bar:
        while len(token_bytes) < num_tokens:
            pair = _most_frequent_pair(heap, pair_count)
            if pair is None:
                break
            merged = token_bytes[ord(pair[0])] + token_bytes[ord(pair[1])]
            new = token_id.get(merged)
            if new is None:  # else the bytes are a token already, reached earlier by another pair
                new = token_id[merged] = len(token_bytes)
                token_bytes.append(merged)
                parents[new] = (ord(pair[0]), ord(pair[1]))
                bar.update(1)
            _merge_everywhere(pair, chr(new), words, counts, pair_count, where, heap)
    return parents


def _count_pairs(words: list[str], counts: list[int]) -> tuple[dict[str, int], dict[str, set[int]]]:
    """(pair_count, where) of train_merges at the start: each adjacent pair's count, weighted by the
    counts of the words that hold it, and the indices of those words."""
    pair_count: dict[str, int] = {}
    where: dict[str, set[int]] = {}
    for wi, word in enumerate(words):
        c = counts[wi]
        for pair in map(operator.add, word, word[1:]):  # its adjacent pairs, as 2-character strings
            pair_count[pair] = pair_count.get(pair, 0) + c
            if pair in where:
                where[pair].add(wi)
            else:
                where[pair] = {wi}
    return pair_count, where


def _most_frequent_pair(heap: list[tuple[int, str]], pair_count: dict[str, int]) -> str | None:
    """Pop the heap's most frequent pair that still occurs; None when no pair does. Stale entries met
    on the way are dropped (the pair is gone) or pushed back with the pair's true count."""
    while heap:
        neg, pair = heapq.heappop(heap)
        c = pair_count.get(pair, 0)
        if c <= 0:  # the pair no longer occurs (merges around it took every occurrence away)
            continue
        if c != -neg:  # stale entry: put the pair back with its true count
            heapq.heappush(heap, (-c, pair))
            continue
        return pair
    return None


def _merge_everywhere(pair: str, new: str, words: list[str], counts: list[int], pair_count: dict[str, int],
                      where: dict[str, set[int]], heap: list[tuple[int, str]]) -> None:
    """Replace `pair` by the token `new` in every word that holds it, update the counts around each
    replacement, and push the pairs whose counts grew onto the heap."""
    a, b = pair
    grown: set[str] = set()  # pairs with the new token, whose counts grew
    for wi in where.pop(pair):
        if pair in words[wi]:  # else a stale entry: an earlier merge took the pair away
            words[wi] = _merge_in_word(words[wi], a, b, new, counts[wi], pair_count, grown, where, wi)
    del pair_count[pair]
    for p in grown:
        # A pair can be gained at one site and lost at the next ("aaaa": (new, a) nets 0).
        if pair_count[p] > 0:
            heapq.heappush(heap, (-pair_count[p], p))


_SITE = chr(0x10FFFF)  # marks merge sites inside a word; never a token (ids stay far below)


def _merge_in_word(word: str, a: str, b: str, new: str, weight: int, pair_count: dict, grown: set,
                   where: dict, wi: int) -> str:
    """Replace each (a, b) in word `wi`, left to right, by `new`; update the counts of the pairs
    around each replacement (only those change) and note word `wi` under the pairs it gains.
    The count of (a, b) itself is dropped by the caller.

    Neighbours are taken as they are after the merges to their left: a site right after another
    has x = new, and a site followed by another has y = a (that (b, a) is lost, and the (new, a)
    gained there is taken back by the next site, which gains (new, new) instead).
    """
    marked = word.replace(a + b, _SITE)  # non-overlapping, left to right: BPE's own rule
    last = len(marked) - 1
    i = marked.find(_SITE)
    while i >= 0:
        gained = []
        if i > 0:
            x = marked[i - 1]
            x = new if x == _SITE else x
            pair_count[x + a] -= weight
            gained.append(x + new)
        if i < last:
            y = marked[i + 1]
            y = a if y == _SITE else y
            pair_count[b + y] -= weight
            gained.append(new + y)
        for p in gained:
            pair_count[p] = pair_count.get(p, 0) + weight
            grown.add(p)
            if p in where:
                where[p].add(wi)
            else:
                where[p] = {wi}
        i = marked.find(_SITE, i + 1)
    return marked.replace(_SITE, new)


def _special_splitter(special_tokens: Collection[str], keep: bool = False):
    """A function that splits text at special-token strings (keeping them if `keep`)."""
    if not special_tokens:
        return None
    alternatives = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
    return regex.compile(f"({alternatives})" if keep else alternatives).split


# ----------------------------------------------------------------------------------------------
# Work shared among processes, chunk by chunk, in bounded memory. Reading stays in the main
# process and never runs more than a few chunks ahead of the workers, so memory does not grow with
# the size of the input (multiprocessing's Pool.imap would read the whole input into its queue).


def _mp_context():
    import multiprocessing

    # fork where there is one (fast, and works from a notebook or stdin); spawn elsewhere.
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def _ignore_ctrl_c() -> None:
    import signal

    # Ctrl-C reaches every process of the terminal; only the main one should handle it (it then
    # stops the workers), or each worker would print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _leave_inherited_objects_alone() -> None:
    """In a forked worker: keep the garbage collector off the objects inherited from the parent.
    Its passes write to every object they visit, so each would copy the parent's pages into the
    worker, one by one (a parent that has imported torch holds hundreds of MB of them)."""
    gc.freeze()


def imap_bounded(fn, items: Iterable, workers: int, initializer=None, initargs: tuple = (), ahead: int | None = None) -> Iterator:
    """fn(item) for each item, computed by `workers` processes, yielded in the items' order.

    At most `ahead` items (default: 2 per worker) are taken from `items` before their results
    are yielded. initializer(*initargs) runs once in each worker, before its first item.
    """
    from concurrent.futures import ProcessPoolExecutor

    ahead = ahead or 2 * workers
    pool = ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_init_worker,
                               initargs=(initializer, initargs))
    try:
        pending: deque = deque()  # futures of the items taken, oldest first
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # also when the consumer stops early: drop the work not begun
        pool.shutdown(cancel_futures=True)


def _init_worker(initializer, initargs: tuple) -> None:
    _ignore_ctrl_c()
    _leave_inherited_objects_alone()
    if initializer is not None:
        initializer(*initargs)


_worker_tokenizer: "BPE | None" = None  # in an encoding worker process: the tokenizer it uses


def _set_worker_tokenizer(tokenizer: "BPE") -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_chunk_job(job: tuple) -> array:
    return _worker_tokenizer._encode_chunk(*job)


def _count_in_processes(chunks: Iterable[str], pattern: str, special_tokens: tuple[str, ...], workers: int) -> Counter:
    """count_pretokens with workers: each worker counts the chunks it takes from a queue into a
    Counter of its own and sends that back once, at the end. (A Counter sent back per chunk, as
    imap_bounded would do, would have the main process receive and add one Counter per chunk, on
    the cores that the workers need.)"""
    ctx = _mp_context()
    tasks = ctx.Queue(maxsize=2 * workers)  # put() waits while it is full: memory stays bounded
    results = ctx.SimpleQueue()
    procs = [ctx.Process(target=_count_worker, args=(tasks, results, pattern, special_tokens), daemon=True)
             for _ in range(workers)]
    for proc in procs:
        proc.start()
    try:
        for chunk in chunks:
            tasks.put(chunk)
        for _ in procs:
            tasks.put(None)  # "no more chunks", once for each worker
        counts: Counter = Counter()
        for _ in procs:
            part = results.get()
            if isinstance(part, BaseException):
                raise part
            counts.update(part)
        return counts
    finally:
        tasks.cancel_join_thread()  # on an error, do not wait to send chunks that no one will take
        for proc in procs:
            proc.terminate()  # they are done, or no longer needed
            proc.join()


def _count_worker(tasks, results, pattern: str, special_tokens: tuple[str, ...]) -> None:
    _ignore_ctrl_c()
    _leave_inherited_objects_alone()
    counts: Counter = Counter()
    try:
        for chunk in iter(tasks.get, None):
            _count_into(counts, chunk, pattern, special_tokens)
    except Exception as e:
        results.put(e)
        for _ in iter(tasks.get, None):
            pass  # keep emptying the queue, so that the main process never waits on it
        return
    results.put(counts)


# ----------------------------------------------------------------------------------------------
# The tokenizer


def token_typecode(vocab_size: int) -> str:
    """The array typecode that holds the ids of a vocabulary: "H" (2 bytes) while every id fits
    in 16 bits, "I" (4 bytes) above. numpy reads the same codes (np.dtype("H") is uint16)."""
    return "H" if vocab_size <= 1 << 16 else "I"  # "I" is 4 bytes wherever CPython runs


class BPE:
    """A byte-level BPE tokenizer: pattern + tokens (id -> bytes) + special tokens.

    Build one with `BPE.train`, `BPE.load` or `BPE.from_gpt2`. Ordinary tokens are ranked by id
    (a lower id merges first); special tokens have ids of their own and are never merged.
    """

    def __init__(
        self,
        tokens: list[bytes],
        special_tokens: dict[str, int] | None = None,
        pattern: str = "gpt2",
        merges: dict[int, tuple[int, int]] | None = None,
    ):
        """tokens[i] is the bytes of ordinary token i (None where i is a special token's id);
        merges maps a merged token's id to the pair of ids it was made from (for the file)."""
        special_tokens = dict(special_tokens or {})
        self.pattern = PATTERNS.get(pattern, pattern)
        self.special_tokens = special_tokens
        self._parents = dict(merges or {})
        # What the tokenizer was learned from ({"text": names, "bytes": size, "sha256": text_digest}),
        # recorded by train and kept in the file; not part of the hash (it changes no encoding).
        self.trained_on: dict | None = None
        n = max(len(tokens), max(special_tokens.values(), default=-1) + 1)
        decoder: list[bytes | None] = list(tokens) + [None] * (n - len(tokens))
        for s, i in special_tokens.items():
            if decoder[i] is not None:
                raise TokenizerError(f"special token {s!r} has id {i}, which an ordinary token already has")
            decoder[i] = s.encode("utf-8")
        if None in decoder:
            raise TokenizerError(f"token ids must run from 0 to {n - 1} without gaps; id {decoder.index(None)} is missing")
        self._decoder: list[bytes] = decoder
        specials = set(special_tokens.values())
        self._ranks = {b: i for i, b in enumerate(tokens) if i not in specials and b is not None}
        if len(self._ranks) != len(tokens) - sum(1 for i in specials if i < len(tokens)):
            # The dict kept the last id of each bytes value, so the first duplicate maps elsewhere.
            i = next(i for i, b in enumerate(tokens) if i not in specials and b is not None and self._ranks[b] != i)
            raise TokenizerError(f"ordinary tokens {i} and {self._ranks[tokens[i]]} have the same bytes "
                                 f"{token_to_text(tokens[i])}")
        missing = [b for b in range(256) if bytes([b]) not in self._ranks]
        if missing:
            raise TokenizerError(f"the vocabulary lacks the single byte 0x{missing[0]:02x}; every byte must be a token")
        self._findall = _compile_findall(self.pattern)
        self._cache = _PieceCache(self._ranks)
        self._hash: str | None = None

    # ---- properties ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of token ids (ordinary + special): the size the model's embedding needs."""
        return len(self._decoder)

    @property
    def merges(self) -> list[tuple[int, int]]:
        """The (left id, right id) pair each merged token was made from, in id order."""
        return [self._parents[i] for i in sorted(self._parents)]

    @property
    def hash(self) -> str:
        """SHA-256 of what decides behaviour: pattern, special tokens and every token's bytes.

        It ignores the file's layout and the recorded merge parents (encoding uses ranks only),
        so two files that encode and decode identically have the same hash.
        """
        if self._hash is None:
            h = hashlib.sha256()
            h.update(b"bpe\0" + self.pattern.encode("utf-8") + b"\0")
            specials = set(self.special_tokens.values())
            for i, token in enumerate(self._decoder):
                h.update((b"S" if i in specials else b"T") + len(token).to_bytes(4, "big") + token)
            self._hash = h.hexdigest()
        return self._hash

    def __repr__(self) -> str:
        return f"BPE(vocab_size={self.vocab_size}, special_tokens={self.special_tokens}, hash={self.hash[:12]})"

    # ---- encoding -----------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token strings as ordinary characters."""
        # reduce(iadd) extends one fresh list with each piece's cached ids, all in C.
        lookup = self._cache.__getitem__
        ids: list[int] = []
        for chunk in iter_str_chunks(text):  # slices of a long text bound the list of pieces
            functools.reduce(operator.iadd, map(lookup, self._findall(chunk)), ids)
        return ids

    def encode(
        self,
        text: str,
        allowed_special: Literal["all"] | Collection[str] = (),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Encode text. Special-token strings are refused unless allowed (tiktoken's safe policy).

        allowed_special: specials to encode as their single id ("all" for every one).
        disallowed_special: specials whose presence raises an error ("all": every one not allowed);
            pass () to encode the others as ordinary text instead.

        >>> bpe = BPE.train("hello world", vocab_size=300)
        >>> bpe.encode("hi<|endoftext|>", allowed_special="all")[-1] == bpe.special_tokens["<|endoftext|>"]
        True
        """
        allowed = self._special_set(allowed_special)
        disallowed = self._special_set(disallowed_special, default=set(self.special_tokens) - allowed)
        for s in self.special_tokens:  # in id order, so the first one named is always the same
            if s in disallowed and s in text:
                raise SpecialTokenError(
                    f"the text contains the special token {s!r}; pass allowed_special={{{s!r}}} (or 'all') "
                    f"to encode it as one token, or disallowed_special=() to encode it as plain text", s
                )
        present = [s for s in allowed if s in text]
        if not present:
            return self.encode_ordinary(text)
        ids: list[int] = []
        # With a capturing group, split() returns text, special, text, special, ..., text.
        pieces = _special_splitter(present, keep=True)(text)
        for k, piece in enumerate(pieces):
            if k % 2:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def iter_encode_file(
        self,
        path: str | os.PathLike | Iterable[str | os.PathLike],
        allowed_special: Literal["all"] | Collection[str] = (),
        workers: int | None = None,
        progress: bool = False,
        chunk_bytes: int | None = None,
    ) -> Iterator[array]:
        """Encode a file, or several, chunk by chunk (about 1 MB each), yielding each chunk's ids
        in order as a compact array (typecode "H": 2 bytes an id, or "I": 4 for a vocabulary
        of more than 65,536 ids; see token_typecode).

        path: anything text_files takes. Several files are joined with <|endoftext|> between
            documents (empty files are skipped): the ids are those of their texts concatenated
            that way, encoded with that special token allowed between them.
        workers: processes that encode (default: one per core for inputs over 8 MB). The ids are
            the same whatever the number; at most 2 chunks per worker are read ahead of the
            results, so memory does not grow with the size of the input.
        progress: show a bar in bytes on stderr.
        chunk_bytes: the size of the pieces read (default 1 MB, or 512 KB with several workers:
            smaller pieces share the work out more evenly at the end).
        """
        files = text_files(path)
        allowed = self._special_set(allowed_special)
        if len(files) > 1 and ENDOFTEXT not in self.special_tokens:
            raise TokenizerError(f"several files are joined with {ENDOFTEXT} between documents, "
                                 f"but this tokenizer has no such special token")
        num_bytes = sum(file.stat().st_size for file in files)
        if workers_problem(workers):
            raise TokenizerError(workers_problem(workers))
        workers = default_workers(num_bytes) if workers is None else workers
        chunk_bytes = chunk_bytes or (_CHUNK_BYTES if workers <= 1 else _CHUNK_BYTES // 2)
        with _byte_bar(num_bytes, "encoding", progress) as bar:
            jobs = self._encode_jobs(files, allowed, chunk_bytes, bar)
            if workers <= 1:
                yield from (self._encode_chunk(*job) for job in jobs)
            else:
                # Each worker gets the tokenizer once, when it starts (with fork, without copying).
                yield from imap_bounded(_encode_chunk_job, jobs, workers, _set_worker_tokenizer, (self,))

    def _encode_jobs(self, files: list[Path], allowed: set[str], chunk_bytes: int, bar) -> Iterator[tuple]:
        """(text, allowed specials, whether <|endoftext|> goes first) for each chunk of the files."""
        seen_text = False
        for file in files:
            new_document = seen_text  # every file after one with text starts with the separator
            for chunk in iter_text_chunks(file, self.special_tokens, chunk_bytes):
                yield chunk, allowed, new_document
                new_document, seen_text = False, True
                bar.update(_utf8_size(chunk))

    def _encode_chunk(self, text: str, allowed: set[str], new_document: bool) -> array:
        ids = array(token_typecode(self.vocab_size))
        if new_document:
            ids.append(self.special_tokens[ENDOFTEXT])
        ids.extend(self.encode(text, allowed_special=allowed))
        return ids

    def encode_file(
        self,
        path: str | os.PathLike | Iterable[str | os.PathLike],
        allowed_special: Literal["all"] | Collection[str] = (),
        workers: int | None = None,
    ) -> list[int]:
        """Encode a file, or several (see iter_encode_file), streamed: the text is never held in
        memory all at once, though the list of ids is."""
        ids: list[int] = []
        for chunk_ids in self.iter_encode_file(path, allowed_special, workers):
            ids.extend(chunk_ids)
        return ids

    def _special_set(self, spec, default: set[str] | None = None) -> set[str]:
        if spec == "all":
            return set(self.special_tokens) if default is None else default
        unknown = set(spec) - set(self.special_tokens)
        if unknown:
            raise TokenizerError(f"not a special token of this tokenizer: {sorted(unknown)[0]!r}")
        return set(spec)

    # ---- decoding -----------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes of a list of ids (a character may be split between two tokens)."""
        ids = ids if isinstance(ids, list) else list(ids)
        if ids and (min(ids) < 0 or max(ids) >= len(self._decoder)):
            bad = next(i for i in ids if not 0 <= i < len(self._decoder))
            raise TokenizerError(f"token id {bad} is out of range: the vocabulary has ids 0 to {len(self._decoder) - 1}")
        return b"".join(map(self._decoder.__getitem__, ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a list of ids; bytes that do not form UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors=_REPLACE)

    def token_pieces(self, ids: Iterable[int]) -> list[str]:
        """Each id's own text (U+FFFD for a partial character), to see how text was cut."""
        return [self.decode_bytes([i]).decode("utf-8", errors=_REPLACE) for i in ids]

    # ---- training -----------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text_or_path: str | os.PathLike | Iterable[str | os.PathLike],
        vocab_size: int | None = None,
        pattern: str = "gpt2",
        special_tokens: Collection[str] = (ENDOFTEXT,),
        progress: bool = False,
        workers: int | None = None,
    ) -> "BPE":
        """Learn a tokenizer from a text (a str) or from UTF-8 files: a Path, a str naming a file
        or a folder, or a list of them (see text_files).

        vocab_size counts everything: 256 bytes + merges + special tokens. None picks
        `recommended_vocab_size` for the corpus. Training may stop short of vocab_size on a
        corpus too small to offer that many merges. Several files train as their texts joined
        with <|endoftext|> would: no pre-token spans two files. workers: processes that
        pre-tokenize and count (default: see default_workers); the merges are the same whatever
        the number.
        """
        pattern = PATTERNS.get(pattern, pattern)
        special_tokens = list(dict.fromkeys(special_tokens))
        if _names_path(text_or_path):
            files = text_files(text_or_path)
            num_bytes = sum(file.stat().st_size for file in files)
            # Chunks end where files end, which is all that a separator between them would do.
            chunks = (chunk for file in files for chunk in iter_text_chunks(file, special_tokens))
        else:
            text = str(text_or_path)
            num_bytes = len(text.encode("utf-8", "surrogatepass"))
            chunks = iter_str_chunks(text, special_tokens)
        if vocab_size is None:
            vocab_size = recommended_vocab_size(num_bytes)
        if vocab_size >= 0x10FFFF:  # training writes each token as one character (see train_merges)
            raise TokenizerError(f"vocab size {vocab_size} is too large: it must be below {0x10FFFF:,}")
        if vocab_size < 256 + len(special_tokens):
            raise TokenizerError(f"vocab size {vocab_size} is too small: it must be at least 256 + {len(special_tokens)} special tokens")
        _compile_findall(pattern)  # a bad pattern fails here, before any reading

        if workers_problem(workers):
            raise TokenizerError(workers_problem(workers))
        if workers is None:
            workers = default_workers(num_bytes)
        counts = count_pretokens(_progress_chunks(chunks, num_bytes, progress), pattern, special_tokens, workers)
        # Each word as a str of one character per byte (latin-1 maps byte k to chr(k)); see train_merges.
        words = [piece.encode("utf-8", "surrogatepass").decode("latin-1") for piece in counts]
        token_bytes = [bytes([b]) for b in range(256)]
        parents = train_merges(words, list(counts.values()), token_bytes, vocab_size - len(special_tokens), progress)
        specials = {s: len(token_bytes) + k for k, s in enumerate(special_tokens)}
        tokenizer = cls(token_bytes, specials, pattern, parents)
        if _names_path(text_or_path):
            tokenizer.trained_on = {"text": files_name(files), "bytes": num_bytes, "sha256": text_digest(files)}
        else:
            digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            tokenizer.trained_on = {"text": "a str", "bytes": num_bytes, "sha256": digest}
        return tokenizer

    # ---- files --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocab file (UTF-8, atomically: a reader never sees half a file)."""
        with atomic_write(path, "w") as f:
            f.write(self.to_text())

    def to_text(self) -> str:
        """The vocab file's content (checkpoints embed it, so a model carries its tokenizer).

        Layout, one item a line:
            bpe-vocab 1                       format name and version
            pattern "<regex as JSON>"
            trained_on {"text": ..., "bytes": ..., "sha256": ...}   what it was learned from (optional)
            special <id> "<text as JSON>"     one line per special token
            tokens <count>                    then one line per ordinary token, in id order:
            <id> "<bytes as JSON>" [<left id> <right id>]   (the pair it was merged from)
        Token bytes are JSON strings of their UTF-8 text; bytes that are not UTF-8 appear as
        \\udc80-\\udcff escapes (see token_to_text).
        """
        specials = set(self.special_tokens.values())
        lines = [f"{FORMAT_NAME} {FORMAT_VERSION}", f"pattern {json.dumps(self.pattern)}"]
        if self.trained_on is not None:
            lines.append(f"trained_on {json.dumps(self.trained_on, ensure_ascii=False)}")
        lines += [f"special {i} {json.dumps(s)}" for s, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1])]
        lines.append(f"tokens {len(self._ranks)}")
        for i, token in enumerate(self._decoder):
            if i in specials:
                continue
            line = f"{i} {token_to_text(token)}"
            if i in self._parents:
                line += " %d %d" % self._parents[i]
            lines.append(line)
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str, name: str = "<vocab text>") -> "BPE":
        """Inverse of to_text."""
        return cls._parse(text.split("\n"), name)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BPE":
        """Read a vocab file written by `save`, or a folder holding GPT-2's encoder.json and
        vocab.bpe (see from_gpt2). Any defect raises TokenizerError, naming file and line."""
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "encoder.json")):
            return cls.from_gpt2(os.path.join(path, "encoder.json"), os.path.join(path, "vocab.bpe"))
        try:
            with open(path, encoding="utf-8", newline="") as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            raise TokenizerError(f"vocab file not found: {path}") from None
        except IsADirectoryError:
            raise TokenizerError(f"vocab file is a directory: {path}") from None
        except UnicodeDecodeError as e:
            raise TokenizerError(f"{path} is not a vocab file: not UTF-8 text (byte offset {e.start})") from None
        except OSError as e:
            raise TokenizerError(f"cannot read vocab file {path}: {e.strerror}") from None
        return cls._parse(lines, str(path))

    @classmethod
    def _parse(cls, lines: list[str], name: str) -> "BPE":
        """A tokenizer from a vocab file's lines (see to_text); any defect raises TokenizerError
        naming `name` and, where there is one, the line."""
        # A file saved with Windows line ends (CRLF) reads as well: a CR inside a token or pattern is
        # written as the JSON escape \r, so a raw CR can only end a line.
        lines = [line.removesuffix("\r") for line in lines]
        _check_vocab_header(lines, name)
        vocab = _read_vocab_lines(lines, name)
        by_id = _place_vocab_tokens(vocab, name)
        ordinary = by_id[: max(i for i, _, _ in vocab.tokens) + 1] if vocab.tokens else []
        tokenizer = cls(ordinary, vocab.specials, vocab.pattern, vocab.parents)
        tokenizer.trained_on = vocab.trained_on
        return tokenizer

    @classmethod
    def from_gpt2(cls, encoder_json_path: str | os.PathLike, vocab_bpe_path: str | os.PathLike) -> "BPE":
        """OpenAI's GPT-2 tokenizer from its own two files; ids equal theirs (and tiktoken's).

        encoder.json maps each token, written with gpt2_bytes_to_unicode's characters, to its id;
        vocab.bpe lists the 50,000 merges in rank order (the merged token of line k has id 256+k).
        """
        char_to_byte = {ch: b for b, ch in gpt2_bytes_to_unicode().items()}
        try:
            with open(encoder_json_path, encoding="utf-8") as f:
                encoder = json.load(f)
            with open(vocab_bpe_path, encoding="utf-8") as f:
                merge_lines = f.read().split("\n")
        except (OSError, ValueError) as e:
            raise TokenizerError(f"cannot read GPT-2 vocabulary files: {e}") from None

        def to_bytes(token: str) -> bytes:
            try:
                return bytes(char_to_byte[ch] for ch in token)
            except KeyError:
                raise TokenizerError(f"{encoder_json_path}: token {token!r} is not in GPT-2's byte alphabet") from None

        specials = {s: i for s, i in encoder.items() if s == ENDOFTEXT}
        tokens: list[bytes | None] = [None] * len(encoder)
        for s, i in encoder.items():
            if s not in specials:
                tokens[i] = to_bytes(s)
        ordinary = tokens[: max(i for s, i in encoder.items() if s not in specials) + 1]
        parents = {}
        for line in merge_lines[1:]:  # the first line is "#version: 0.2"
            if line:
                left, right = line.split(" ")
                parents[encoder[left + right]] = (encoder[left], encoder[right])
        return cls(ordinary, specials, GPT2_PATTERN, parents)


@dataclasses.dataclass
class _VocabLines:
    """What a vocab file's lines say, read one at a time, before the checks that need them all."""

    pattern: str | None = None
    trained_on: dict | None = None
    specials: dict[str, int] = dataclasses.field(default_factory=dict)  # text -> id
    expected_tokens: int | None = None  # the `tokens` header's count; token lines follow it
    tokens: list[tuple[int, bytes, int]] = dataclasses.field(default_factory=list)  # (id, bytes, line number)
    parents: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)  # id -> the pair merged


_raw_json = json.JSONDecoder().raw_decode  # (value, where it ends): a token line's JSON, then its pair


def _vocab_error(name: str, lineno: int, why: str) -> TokenizerError:
    return TokenizerError(f"{name}:{lineno}: {why}")


def _check_vocab_header(lines: list[str], name: str) -> None:
    """The first line names the format and its version."""
    if not lines or lines[0] != f"{FORMAT_NAME} {FORMAT_VERSION}":
        if lines and lines[0].startswith(FORMAT_NAME + " "):
            raise _vocab_error(name, 1, f"vocab format {lines[0].split()[1]!r} is not supported "
                                        f"(this version reads {FORMAT_VERSION})")
        raise _vocab_error(name, 1, f"not a vocab file (it should start with '{FORMAT_NAME} {FORMAT_VERSION}')")


def _read_vocab_lines(lines: list[str], name: str) -> _VocabLines:
    """Every line after the first, each checked alone; then that the headers and the count are there."""
    vocab = _VocabLines()
    for lineno, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        try:
            _read_vocab_line(vocab, line, lineno, name)
        except (ValueError, TypeError) as e:
            if isinstance(e, TokenizerError):
                raise
            raise _vocab_error(name, lineno, f"malformed line {line[:40]!r}") from None
    if vocab.pattern is None or vocab.expected_tokens is None:
        raise _vocab_error(name, len(lines), "missing 'pattern' or 'tokens' header line")
    if len(vocab.tokens) != vocab.expected_tokens:
        raise _vocab_error(name, len(lines), f"the header promises {vocab.expected_tokens} tokens but the file "
                                             f"has {len(vocab.tokens)}")
    return vocab


def _read_vocab_line(vocab: _VocabLines, line: str, lineno: int, name: str) -> None:
    """One header line (pattern, trained_on, special, tokens) or, after `tokens`, one token line."""
    key, _, rest = line.partition(" ")
    if vocab.expected_tokens is not None:
        text, end = _raw_json(rest)
        vocab.tokens.append((int(key), text_to_token(text), lineno))
        pair = rest[end:].split()
        if pair:
            if len(pair) != 2:
                raise _vocab_error(name, lineno, "expected: id, token, and optionally the two ids it merges")
            vocab.parents[int(key)] = (int(pair[0]), int(pair[1]))
    elif key == "pattern":
        vocab.pattern = json.loads(rest)
    elif key == "trained_on":
        vocab.trained_on = json.loads(rest)
        if not isinstance(vocab.trained_on, dict):
            raise _vocab_error(name, lineno, "trained_on must be a JSON object")
    elif key == "special":
        sid, _, text = rest.partition(" ")
        vocab.specials[json.loads(text)] = int(sid)
    elif key == "tokens":
        vocab.expected_tokens = int(rest)
    else:
        raise _vocab_error(name, lineno, f"unexpected line {line[:40]!r}")


def _place_vocab_tokens(vocab: _VocabLines, name: str) -> list[bytes | None]:
    """Each ordinary token's bytes at its id (None at special tokens' ids), once the ids are checked
    to be distinct and in range, the bytes distinct, and each merge pair to join to its token."""
    n = len(vocab.tokens) + len(vocab.specials)
    by_id: list[bytes | None] = [None] * n
    line_of: dict[int, int] = {}  # token id -> its line, for the checks below
    first_with: dict[bytes, int] = {}  # token bytes -> the first id that has them
    for i, token, lineno in vocab.tokens:
        if not 0 <= i < n or by_id[i] is not None:
            raise _vocab_error(name, lineno, f"token id {i} is out of range or repeated")
        if token in first_with:  # __init__ would refuse it too, but could not say where
            raise _vocab_error(name, lineno, f"tokens {first_with[token]} and {i} have the same bytes "
                                             f"{token_to_text(token)}")
        by_id[i], line_of[i], first_with[token] = token, lineno, i
    for s, i in vocab.specials.items():
        if not 0 <= i < n or by_id[i] is not None:
            raise TokenizerError(f"{name}: special token id {i} is out of range or taken")
    for i, pair in vocab.parents.items():
        # Encoding never reads these columns, so a hand edit that breaks them would go unnoticed
        # until another tool (or a reader) trusted them.
        problem = _merge_problem(i, pair, by_id)
        if problem:
            raise _vocab_error(name, line_of[i], problem)
    return by_id


def _merge_problem(i: int, pair: tuple[int, int], by_id: list[bytes | None]) -> str | None:
    """What is wrong with a vocab line's claim that token i was merged from `pair`, or None.
    by_id holds each ordinary token's bytes (None at special tokens' ids)."""
    for part in pair:
        if not 0 <= part < len(by_id) or by_id[part] is None:
            return f"token {i} is said to be merged from id {part}, which is not an ordinary token"
    left, right = by_id[pair[0]], by_id[pair[1]]
    if left + right != by_id[i]:
        return (f"token {i} is {token_to_text(by_id[i])}, but the tokens it is said to be merged from "
                f"({pair[0]} {pair[1]}) join to {token_to_text(left + right)}")
    return None


def _names_path(text_or_path) -> bool:
    """Is this a name of files rather than text? A Path or a list is; a str is when it is a
    single line naming an existing file or folder."""
    if isinstance(text_or_path, os.PathLike) or not isinstance(text_or_path, str):
        return True
    return len(text_or_path) < 4096 and "\n" not in text_or_path and os.path.exists(text_or_path)


def _byte_bar(total: int, desc: str, progress: bool):
    """A progress bar in bytes on stderr, shown when the work takes over a second."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, delay=1.0, disable=not progress, file=sys.stderr)


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _progress_chunks(chunks: Iterable[str], num_bytes: int, progress: bool) -> Iterator[str]:
    """Pass chunks through, counting their bytes on a progress bar."""
    with _byte_bar(num_bytes, "pre-tokenizing", progress) as bar:
        for chunk in chunks:
            yield chunk
            bar.update(_utf8_size(chunk))
