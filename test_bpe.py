"""Tests of bpe.py: exact worked examples, round trips, and parity with tiktoken and HF tokenizers."""

import multiprocessing
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bpe
from bpe import BPE, ENDOFTEXT, TokenizerError
from gpt2_llm.tests.conftest import some_text

HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that stresses pre-tokenization: spaces and newlines in runs, apostrophes, digits,
# non-ASCII letters, non-ASCII spaces (NBSP, U+2028, U+3000), combining marks, emoji, controls.
TRICKY = st.text(
    alphabet=st.sampled_from(list(" \n\r\t\x0b\x0c\x00\x1c'sdmtlvrea1Z9.,!-_\u00a0\u2028\u3000\u0085éß日本\u0301😀\ufeff")),
    max_size=80,
)
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=60)  # surrogates too


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gpt2(data_dir):
    return BPE.from_gpt2(data_dir / "gpt2" / "encoder.json", data_dir / "gpt2" / "vocab.bpe")


@pytest.fixture(scope="session")
def tiktoken_gpt2(data_dir):
    """tiktoken's Encoding built offline from the same two files."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    ranks = data_gym_to_mergeable_bpe_ranks(str(data_dir / "gpt2" / "vocab.bpe"), str(data_dir / "gpt2" / "encoder.json"))
    return tiktoken.Encoding("gpt2-offline", pat_str=bpe.GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: 50256})


@pytest.fixture(scope="session")
def shakespeare(data_dir) -> str:
    return (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def trained() -> BPE:
    return BPE.train(some_text(200_000), vocab_size=1024)


def read(path: Path, start: int = 0, size: int | None = None) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    return text[start : None if size is None else start + size]


# ---- the worked example and training rules ---------------------------------------------------


def test_worked_example():
    tok = BPE.train("aaabdaaabac", vocab_size=259, pattern=r".+", special_tokens=())
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]  # "aa", "ab", then "aa"+"ab"
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"
    assert tok.vocab_size == 259


def test_tie_break_smallest_pair_wins():
    # "ab" and "cd" both occur twice; (97, 98) < (99, 100), so "ab" is merged first.
    tok = BPE.train("cd ab cd ab", vocab_size=257, pattern=r"\S+", special_tokens=())
    assert tok.merges == [(97, 98)]


def test_training_counts_pairs_across_word_counts():
    # " the" appears 3 times, "xy" once: the merges are inside " the". (" ", "t"), ("t", "h") and
    # ("h", "e") tie at 3; the smallest pair (32, 116) wins, then (104, 101) beats (256, 104).
    tok = BPE.train("xy the the the", vocab_size=259, special_tokens=())
    first = [tok.decode_bytes([256 + k]) for k in range(3)]
    assert first == [b" t", b"he", b" the"]


def test_merges_never_cross_pretokens():
    tok = BPE.train("ab ab ab ab ab", vocab_size=300, special_tokens=())
    for i in range(256, tok.vocab_size):
        piece = tok.decode_bytes([i])
        assert regex.fullmatch(bpe.GPT2_PATTERN, piece.decode()), piece


def test_duplicate_merge_reuses_the_token():
    # "a"+"bc" and "ab"+"c" both make "abc"; the second merge must not add a second "abc".
    tok = BPE.train("abc " * 3 + "xab xab xab xbc xbc xbc", vocab_size=400, special_tokens=(), pattern=r"\S+")
    tokens = [tok.decode_bytes([i]) for i in range(tok.vocab_size)]
    assert len(tokens) == len(set(tokens))


def test_training_stops_when_no_pair_occurs():
    # "aaaa" -> "aa"+"aa" -> "aaaa": then the word is one token and no pair is left to merge.
    tok = BPE.train("aaaa", vocab_size=300, pattern=r".+", special_tokens=())
    assert tok.merges == [(97, 97), (256, 256)]
    assert tok.vocab_size == 258


def reference_train(text: str, vocab_size: int, pattern: str) -> tuple[list[bytes], dict[int, tuple[int, int]]]:
    """BPE training the slow, obvious way: recount every pair each round, merge the most frequent
    (smallest (left id, right id) on ties), stop when no pair occurs. As train_merges' docstring
    says, a merge whose bytes already form a token reuses that id instead of adding one."""
    words = Counter(tuple(piece.encode("utf-8")) for piece in regex.findall(pattern, text))
    tokens = [bytes([b]) for b in range(256)]
    parents: dict[int, tuple[int, int]] = {}
    while len(tokens) < vocab_size:
        pairs: Counter = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = tokens[best[0]] + tokens[best[1]]
        if merged in tokens:
            new = tokens.index(merged)
        else:
            new = len(tokens)
            tokens.append(merged)
            parents[new] = best
        merged_words: Counter = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] += count
        words = merged_words
    return tokens, parents


@settings(HYPOTHESIS, max_examples=150)
@given(text=st.text(alphabet=st.sampled_from(list("ab \né")), max_size=60),
       vocab_size=st.integers(256, 280), pattern=st.sampled_from([r".+", bpe.GPT2_PATTERN]))
def test_training_equals_reference_trainer(text, vocab_size, pattern):
    tok = BPE.train(text, vocab_size=vocab_size, pattern=pattern, special_tokens=())
    tokens, parents = reference_train(text, vocab_size, pattern)
    assert [tok.decode_bytes([i]) for i in range(tok.vocab_size)] == tokens
    assert tok.merges == [parents[i] for i in sorted(parents)]


def test_training_is_deterministic_and_path_equals_text(tmp_path):
    text = some_text(100_000)
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    a = BPE.train(text, vocab_size=700)
    b = BPE.train(path, vocab_size=700)
    c = BPE.train(str(path), vocab_size=700)
    assert a.hash == b.hash == c.hash
    assert a.merges == b.merges
    a.save(tmp_path / "a.txt")
    b.save(tmp_path / "b.txt")
    # The files differ only in the record of the text: the same SHA-256, named as a str or a path.
    assert a.trained_on["sha256"] == b.trained_on["sha256"] and a.trained_on["text"] != b.trained_on["text"]
    body = [line for line in (tmp_path / "a.txt").read_text().splitlines() if not line.startswith("trained_on")]
    assert body == [line for line in (tmp_path / "b.txt").read_text().splitlines() if not line.startswith("trained_on")]


def test_special_tokens_are_cut_out_of_training():
    text = ("hello<|endoftext|>world" * 50)
    tok = BPE.train(text, vocab_size=300)
    assert tok.special_tokens == {ENDOFTEXT: tok.vocab_size - 1}
    learned = [tok.decode_bytes([i]) for i in range(256, tok.vocab_size - 1)]
    assert b"hello" in learned and b"world" in learned
    assert not any(b"|" in t or b"endoftext" in t for t in learned)


def test_vocab_size_too_small():
    with pytest.raises(TokenizerError, match="at least 256"):
        BPE.train("hello", vocab_size=200)


def test_recommended_vocab_size_rule():
    assert [bpe.recommended_vocab_size(n) for n in (0, 10_000, 1_115_394, 20_000_000, 10**9, 10**12)] == [
        512, 512, 2048, 8192, 32768, 32768]


def test_train_hits_the_vocab_size():
    tok = BPE.train(some_text(300_000), vocab_size=2000)
    assert tok.vocab_size == 2000
    assert len(tok.merges) == 2000 - 256 - 1


def test_bytes_per_token_matches_hf_tokenizers(shakespeare):
    """Same corpus, same vocab size: compression within 0.5% of Hugging Face's BpeTrainer."""
    tokenizers = pytest.importorskip("tokenizers")
    for vocab_size in (1024, 4096):
        ours = BPE.train(shakespeare, vocab_size=vocab_size)
        hf = tokenizers.Tokenizer(tokenizers.models.BPE())
        hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[ENDOFTEXT], show_progress=False,
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator([shakespeare], trainer)
        n_bytes = len(shakespeare.encode())
        ours_bpt = n_bytes / len(ours.encode_ordinary(shakespeare))
        hf_bpt = n_bytes / len(hf.encode(shakespeare).ids)
        assert abs(ours_bpt / hf_bpt - 1) < 0.005, (vocab_size, ours_bpt, hf_bpt)


# ---- lossless round trips ---------------------------------------------------------------------

EDGE_CASES = ["", " ", "  ", "\n", "\r\n", "a\r\nb\r\n", "\t\tx", "x   ", "   y", "hello  world", "\x00\x01\x7f",
              "😀👍🏽", "e\u0301", "日本語のテキスト", "\u00a0\u2028\u3000", "it's I'LL we've", "<|endoftext", "\ud800", "a\udfffb"]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_round_trip_edge_cases(text, trained, gpt2):
    for tok in (trained, gpt2):
        assert tok.decode(tok.encode(text)) == text


@HYPOTHESIS
@given(text=ANY_TEXT)
def test_round_trip_any_text(trained, gpt2, text):
    for tok in (trained, gpt2):
        ids = tok.encode_ordinary(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)


@HYPOTHESIS
@given(text=TRICKY)
def test_round_trip_tricky_text_gpt4_pattern(text):
    tok = _gpt4_tokenizer()
    assert tok.decode(tok.encode_ordinary(text)) == text


_GPT4 = []


def _gpt4_tokenizer():
    if not _GPT4:
        _GPT4.append(BPE.train("Hello there, it's 12345 words.\n\n  And    more  ünïcödé text 日本 " * 20, 400, pattern="gpt4"))
    return _GPT4[0]


def test_decode_broken_utf8_replaces_and_decode_bytes_is_exact(gpt2):
    ids = gpt2.encode("é")  # one token, b"\xc3\xa9"
    raw = gpt2.decode_bytes(ids)
    assert raw == "é".encode()
    byte_c3 = gpt2._ranks[b"\xc3"]
    assert gpt2.decode([byte_c3]) == "\ufffd"
    assert gpt2.decode_bytes([byte_c3]) == b"\xc3"
    assert gpt2.decode([byte_c3, gpt2.encode("a")[0]]) == "\ufffda"


@pytest.mark.parametrize("bad", [[-1], [50257], [0, 1, 10**9]])
def test_out_of_range_ids(gpt2, bad):
    with pytest.raises(TokenizerError, match=r"out of range.*0 to 50256"):
        gpt2.decode(bad)


# ---- GPT-2 parity with tiktoken ---------------------------------------------------------------


@pytest.mark.parametrize("name,start,size", [
    ("tinyshakespeare.txt", 0, None),
    ("multilingual.txt", 0, None),
    ("gutenberg_en.txt", 0, 1_000_000),
    ("gutenberg_en.txt", 10_000_000, 1_000_000),
])
def test_gpt2_parity_with_tiktoken(gpt2, tiktoken_gpt2, data_dir, name, start, size):
    text = read(data_dir / name, start, size)
    fresh = BPE.from_gpt2(data_dir / "gpt2" / "encoder.json", data_dir / "gpt2" / "vocab.bpe")  # cold cache
    expected = tiktoken_gpt2.encode_ordinary(text)
    assert fresh.encode_ordinary(text) == expected
    assert fresh.encode_ordinary(text) == expected  # warm cache
    assert fresh.decode(expected) == text


@HYPOTHESIS
@given(text=TRICKY)
def test_gpt2_parity_with_tiktoken_tricky_text(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


def test_gpt2_special_token_parity(gpt2, tiktoken_gpt2):
    text = "Hello<|endoftext|> world<|endoftext|><|endoftext|>\n"
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.encode(text, allowed_special={ENDOFTEXT}).count(50256) == 3
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    assert 50256 not in gpt2.encode_ordinary(text)
    assert gpt2.encode(text, disallowed_special=()) == gpt2.encode_ordinary(text)


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50257
    assert gpt2.special_tokens == {ENDOFTEXT: 50256}


def test_very_long_piece_equals_tiktoken_and_takes_the_heap_merge(monkeypatch, gpt2, tiktoken_gpt2):
    """One pre-token of 100,000 letters (no spaces), and one of 20,000 digits. Pieces that long
    must go to _merge_long (O(n log n)), never to the quadratic _merge_short; how long they take
    is measured by benchmarks/bench_bpe.py (bench_long_piece), not here."""
    short = bpe._merge_short

    def short_only(piece, ranks):
        assert len(piece) <= bpe._LONG_PIECE, f"a piece of {len(piece)} bytes went to the quadratic merge"
        return short(piece, ranks)

    monkeypatch.setattr(bpe, "_merge_short", short_only)
    for text in ("abcdefghij" * 10_000, "1234567890" * 2000):
        assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


@HYPOTHESIS
@given(piece=st.binary(min_size=1, max_size=300))
def test_heap_merge_equals_scan_merge(gpt2, piece):
    assert bpe._merge_long(piece, gpt2._ranks) == bpe._merge_short(piece, gpt2._ranks)


# ---- pre-tokenization fast path and chunking ----------------------------------------------------

ASCII_TRICKY = st.text(alphabet=st.sampled_from(list(" \n\r\t\x0b\x0c\x1c\x1f\x00'sdmtlvreaZ09.,!-_~")), max_size=200)


@HYPOTHESIS
@given(text=ASCII_TRICKY)
def test_ascii_fast_pattern_equals_gpt2_pattern(text):
    assert bpe._GPT2_ASCII.findall(text) == bpe._GPT2_FULL.findall(text)


@HYPOTHESIS
@given(text=st.lists(TRICKY | ASCII_TRICKY, max_size=8).map("".join))
def test_block_cutting_equals_whole_text(monkeypatch, text):
    monkeypatch.setattr(bpe, "_BLOCK", 3)  # cut as often as possible
    assert bpe._gpt2_findall(text) == bpe._GPT2_FULL.findall(text)


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
@HYPOTHESIS
@given(text=st.lists(TRICKY, max_size=12).map("".join))
def test_safe_cuts_do_not_change_pretokens(pattern, text):
    findall = regex.compile(bpe.PATTERNS[pattern]).findall
    chunker = bpe._SafeChunker([ENDOFTEXT], min_size=1)
    pieces = []
    for k in range(0, len(text), 5):
        for chunk in chunker.feed(text[k : k + 5]):
            pieces += findall(chunk)
    for chunk in chunker.finish():
        pieces += findall(chunk)
    assert pieces == findall(text)


def test_file_chunks_rejoin_exactly(tmp_path):
    text = "first line\r\nsecond — ünïcödé 日本語 line\n\n  indented\nlast" * 50
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    chunks = list(bpe.iter_text_chunks(path, chunk_bytes=7))  # reads that split characters
    assert "".join(chunks) == text
    assert len(chunks) > 10


@pytest.mark.parametrize("prefix", [b"", b"x" * 6, b"x" * 7, b"\xc3\xa9" * 3 + b"y"])
def test_invalid_utf8_offset(tmp_path, prefix):
    path = tmp_path / "bad.txt"
    path.write_bytes(prefix + b"\xe6\x97" + b"!" + b"tail" * 10)  # a 3-byte character cut short
    with pytest.raises(TokenizerError, match=f"byte offset {len(prefix)}$"):
        list(bpe.iter_text_chunks(path, chunk_bytes=7))


def test_encode_file_equals_encode(tmp_path, data_dir, gpt2, trained):
    text = read(data_dir / "multilingual.txt", 0, 300_000) + "\r\nEnd<|endoftext|>"
    path = tmp_path / "m.txt"
    path.write_bytes(text.encode())
    for tok in (gpt2, trained):
        assert tok.encode_file(path, allowed_special="all") == tok.encode(text, allowed_special="all")
    with pytest.raises(TokenizerError, match="allowed_special"):
        gpt2.encode_file(path)


def test_token_width_follows_the_vocab_size(tmp_path):
    assert bpe.token_typecode(1 << 16) == "H"  # ids 0..65535 fit in 2 bytes
    assert bpe.token_typecode((1 << 16) + 1) == "I"
    path = tmp_path / "t.txt"
    path.write_text("hello world")
    small = BPE.train("hello world", vocab_size=300)
    big = BPE([bytes([b]) for b in range(256)] + [b"%d" % k for k in range(1000, 1000 + (1 << 16))])
    for tok, width in ((small, 2), (big, 4)):
        (ids,) = tok.iter_encode_file(path)
        assert ids.typecode == bpe.token_typecode(tok.vocab_size) and ids.itemsize == width


def test_long_text_is_encoded_in_slices(gpt2, data_dir, tiktoken_gpt2):
    text = read(data_dir / "gutenberg_en.txt", 0, 3_000_000)  # longer than one slice
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


# ---- special tokens ----------------------------------------------------------------------------


def test_special_token_policy(trained):
    text = "a <|endoftext|> b"
    with pytest.raises(bpe.SpecialTokenError, match=r"allowed_special=\{'<\|endoftext\|>'\}") as refused:
        trained.encode(text)
    assert refused.value.token == ENDOFTEXT and isinstance(refused.value, TokenizerError)
    eot = trained.special_tokens[ENDOFTEXT]
    ids = trained.encode(text, allowed_special="all")
    assert ids.count(eot) == 1
    assert trained.decode(ids) == text
    plain = trained.encode_ordinary(text)
    assert eot not in plain and trained.decode(plain) == text
    with pytest.raises(TokenizerError, match="not a special token"):
        trained.encode(text, allowed_special={"<|nope|>"})


# ---- vocab files -------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, trained, gpt2, shakespeare):
    sample = shakespeare[:20_000] + " ünïcödé 😀"
    for tok in (trained, gpt2):
        path = tmp_path / "v.txt"
        tok.save(path)
        again = BPE.load(path)
        assert again.hash == tok.hash
        assert again.merges == tok.merges
        assert again.special_tokens == tok.special_tokens
        assert again.pattern == tok.pattern
        assert again.encode(sample) == tok.encode(sample)
        again.save(tmp_path / "v2.txt")
        assert (tmp_path / "v2.txt").read_bytes() == path.read_bytes()


def test_vocab_file_is_readable_text(tmp_path, gpt2):
    gpt2.save(tmp_path / "v.txt")
    lines = (tmp_path / "v.txt").read_text(encoding="utf-8").split("\n")
    assert lines[0] == "bpe-vocab 1"
    assert lines[2] == 'special 50256 "<|endoftext|>"'
    assert '220 " "' in lines  # GPT-2's space token, shown as a space
    assert '995 " world" 220 6894' in lines or any(line.startswith('995 " world" ') for line in lines)


def test_hash_changes_iff_behaviour_changes(trained):
    tokens = [trained.decode_bytes([i]) for i in range(trained.vocab_size - 1)]
    same = BPE(tokens, dict(trained.special_tokens), trained.pattern)  # no merge parents recorded
    assert same.hash == trained.hash
    swapped = tokens[:]
    swapped[300], swapped[301] = swapped[301], swapped[300]
    assert BPE(swapped, dict(trained.special_tokens), trained.pattern).hash != trained.hash
    assert BPE(tokens, dict(trained.special_tokens), "gpt4").hash != trained.hash
    assert BPE(tokens, {"<|other|>": len(tokens)}, trained.pattern).hash != trained.hash


def test_vocab_file_written_as_utf8_whatever_the_locale(tmp_path, gpt2):
    code = (
        "import bpe, sys; t = bpe.BPE.load(sys.argv[1]); t.save(sys.argv[2]); "
        "print(bpe.BPE.load(sys.argv[2]).hash == t.hash)"
    )
    gpt2.save(tmp_path / "in.txt")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0", PYTHONIOENCODING="ascii")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in.txt"), str(tmp_path / "out.txt")],
                         cwd=Path(__file__).parent, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr
    assert (tmp_path / "out.txt").read_bytes() == (tmp_path / "in.txt").read_bytes()


@pytest.mark.parametrize("content,message", [
    ("", "not a vocab file"),
    ("hello\n", "not a vocab file"),
    ("bpe-vocab 9\n", "format '9' is not supported"),
    ('bpe-vocab 1\npattern "x"\ntokens 300\n0 "\\u0000"\n', "promises 300 tokens but the file has 1"),
    ('bpe-vocab 1\npattern "x"\ntokens 1\n0 oops\n', ":4: malformed line"),
    ('bpe-vocab 1\ntokens 1\n0 "a"\n', "missing 'pattern'"),
])
def test_malformed_vocab_files(tmp_path, content, message):
    path = tmp_path / "v.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError, match=message):
        BPE.load(path)


def test_vocab_missing_byte_or_duplicate(tmp_path, trained):
    trained.save(tmp_path / "v.txt")
    lines = (tmp_path / "v.txt").read_text(encoding="utf-8").split("\n")
    dup = [line if not line.startswith("65 ") else '65 "B"' for line in lines]
    (tmp_path / "dup.txt").write_text("\n".join(dup), encoding="utf-8")
    with pytest.raises(TokenizerError, match="same bytes"):
        BPE.load(tmp_path / "dup.txt")
    missing = lines[:1] + [line for line in lines[1:] if not line.startswith("5 ")]
    (tmp_path / "gap.txt").write_text("\n".join(missing), encoding="utf-8")
    with pytest.raises(TokenizerError):
        BPE.load(tmp_path / "gap.txt")


def test_vocab_file_with_windows_line_ends_loads(tmp_path, trained):
    trained.save(tmp_path / "v.txt")
    (tmp_path / "crlf.txt").write_bytes((tmp_path / "v.txt").read_bytes().replace(b"\n", b"\r\n"))
    assert BPE.load(tmp_path / "crlf.txt").hash == trained.hash


def edited_vocab(tmp_path: Path, tokenizer: BPE, edit: dict[str, str]) -> tuple[Path, dict[str, int]]:
    """The tokenizer's vocab file with the line starting "<id> " replaced, for each id in `edit`;
    and the line number of each replaced line."""
    lines = tokenizer.to_text().split("\n")
    numbers = {}
    for n, line in enumerate(lines):
        key = line.split(" ")[0]
        if key in edit:
            lines[n], numbers[key] = edit[key], n + 1
    path = tmp_path / "edited.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, numbers


@pytest.mark.parametrize("line,message", [
    ('256 "ot" 5000 116', "token 256 is said to be merged from id 5000, which is not an ordinary token"),
    ('256 "ot" 111 257', "token 256 is said to be merged from id 257, which is not an ordinary token"),  # <|endoftext|>
    ('256 "xyz" 111 116', 'token 256 is "xyz", but the tokens it is said to be merged from (111 116) join to "ot"'),
])
def test_merge_columns_that_disagree_with_the_bytes_are_refused(tmp_path, line, message):
    tokenizer = BPE([bytes([b]) for b in range(256)] + [b"ot"], {ENDOFTEXT: 257}, merges={256: (111, 116)})
    path, numbers = edited_vocab(tmp_path, tokenizer, {"256": line})
    with pytest.raises(TokenizerError) as e:
        BPE.load(path)
    assert str(e.value) == f"{path}:{numbers['256']}: {message}"


def test_duplicate_token_names_its_line_and_both_ids(tmp_path, trained):
    path, numbers = edited_vocab(tmp_path, trained, {"66": '66 "A"'})
    with pytest.raises(TokenizerError) as e:
        BPE.load(path)
    assert str(e.value) == f'{path}:{numbers["66"]}: tokens 65 and 66 have the same bytes "A"'
    with pytest.raises(TokenizerError, match='ordinary tokens 65 and 66 have the same bytes "A"'):
        BPE([bytes([b]) for b in range(256)][:66] + [b"A"] + [bytes([b]) for b in range(67, 256)])


def test_load_gpt2_folder(data_dir, gpt2):
    assert BPE.load(data_dir / "gpt2").hash == gpt2.hash


def test_importing_bpe_imports_no_reference_library():
    code = "import sys, bpe; bad = {'tiktoken', 'tokenizers', 'transformers', 'torch'} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


# ---- several files, several processes --------------------------------------------------------


def test_parallel_counting_gives_the_same_tokenizer(data_dir, tmp_path):
    path = tmp_path / "g.txt"
    path.write_text(read(data_dir / "gutenberg_en.txt", 0, 3_000_000) + ENDOFTEXT + "tail", encoding="utf-8")
    one = BPE.train(path, vocab_size=600, workers=1)
    two = BPE.train(path, vocab_size=600, workers=2)
    assert one.hash == two.hash and one.merges == two.merges


@pytest.mark.parametrize("pattern", [bpe.GPT2_PATTERN, bpe.GPT4_PATTERN])
def test_parallel_counting_gives_the_same_counts(data_dir, pattern):
    path = data_dir / "multilingual.txt"
    chunks = list(bpe.iter_text_chunks(path, [ENDOFTEXT], chunk_bytes=40_000))
    assert len(chunks) > 20
    one = bpe.count_pretokens(chunks, pattern, [ENDOFTEXT], workers=1)
    assert bpe.count_pretokens(iter(chunks), pattern, [ENDOFTEXT], workers=3) == one
    assert one == Counter(regex.findall(pattern, read(path)))


@pytest.mark.parametrize("name", ["tinyshakespeare.txt", "multilingual.txt"])
def test_parallel_encoding_gives_the_same_ids(data_dir, gpt2, trained, name):
    path = data_dir / name
    text = read(path)
    for tok in (gpt2, trained):
        chunks = list(tok.iter_encode_file(path, workers=2, chunk_bytes=100_000))
        assert len(chunks) > 4
        assert [i for ids in chunks for i in ids] == tok.encode(text)


def test_parallel_encoding_passes_errors_on(tmp_path, trained):
    path = tmp_path / "t.txt"
    path.write_text("plain text\n" * 20_000 + ENDOFTEXT + "\nmore", encoding="utf-8")
    with pytest.raises(bpe.SpecialTokenError, match="allowed_special") as refused:
        list(trained.iter_encode_file(path, workers=2, chunk_bytes=10_000))
    assert refused.value.token == ENDOFTEXT  # the error crossed from a worker process whole


def test_parallel_work_stops_at_invalid_utf8(tmp_path, trained):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text\n" * 300_000 + b"\xff" + b"more\n")  # chunks go to the workers first
    with pytest.raises(TokenizerError, match="byte offset 3000000$"):
        BPE.train(path, vocab_size=300, workers=2)
    with pytest.raises(TokenizerError, match="byte offset 3000000$"):
        list(trained.iter_encode_file(path, workers=2, chunk_bytes=100_000))


def test_spawned_workers_give_the_same_results(monkeypatch, tmp_path, data_dir, trained):
    """Where there is no fork (Windows, and macOS by choice), workers start afresh: the tokenizer
    and the worker functions travel by pickle."""
    path = tmp_path / "t.txt"
    path.write_text(read(data_dir / "multilingual.txt", 0, 200_000), encoding="utf-8")
    expected_ids = trained.encode_file(path, workers=1)
    expected_vocab = BPE.train(path, vocab_size=400, workers=1)
    monkeypatch.setattr(bpe, "_mp_context", lambda: multiprocessing.get_context("spawn"))
    assert [i for ids in trained.iter_encode_file(path, workers=2, chunk_bytes=20_000) for i in ids] == expected_ids
    assert BPE.train(path, vocab_size=400, workers=2).hash == expected_vocab.hash


def test_imap_bounded_reads_only_a_few_items_ahead():
    """Pool.imap would read all 40 items at once (a thread of its own reads them); a file's
    chunks read that way would all be in memory together."""
    taken = 0

    def items():
        nonlocal taken
        for i in range(40):
            taken += 1
            yield -i

    consumed = 0
    for result in bpe.imap_bounded(abs, items(), workers=2):
        assert result == consumed  # in order
        consumed += 1
        if consumed == 1:
            time.sleep(0.3)  # time for a reading thread, if there were one, to take every item
        assert taken <= consumed + 2 * 2  # at most 2 items per worker ahead
    assert consumed == 40


def test_text_files_takes_a_file_folder_glob_or_list(tmp_path):
    for name in ["b.txt", "a.txt", "sub/c.txt", "sub/deeper/d.txt", "notes.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name, encoding="utf-8")
    a, b, c, d = (tmp_path / n for n in ["a.txt", "b.txt", "sub/c.txt", "sub/deeper/d.txt"])
    assert bpe.text_files(a) == [a]
    assert bpe.text_files(tmp_path) == [a, b, c, d]  # .txt only, subfolders too, sorted
    assert bpe.text_files(str(tmp_path / "*.txt")) == [a, b]
    assert bpe.text_files(str(tmp_path / "**" / "?.txt")) == [a, b, c, d]
    assert bpe.text_files([b, tmp_path / "sub"]) == [b, c, d]  # a list keeps its order
    (tmp_path / "empty").mkdir()
    for spec, message in [(tmp_path / "nope.txt", "file not found"), (tmp_path / "empty", "no .txt files"),
                          (str(tmp_path / "*.csv"), "no file matches"), ([], "no text files")]:
        with pytest.raises(TokenizerError, match=message):
            bpe.text_files(spec)


def test_text_files_leaves_out_the_toolkits_own_outputs(tmp_path, trained):
    (tmp_path / "a.txt").write_text("text", encoding="utf-8")
    trained.save(tmp_path / "vocab.txt")  # known by its first line, not its name
    (tmp_path / "a.txt.0123456789abcdef.tokens.bin").write_bytes(b"\x01\x00")
    (tmp_path / "model.metrics.jsonl").write_text('{"step": 1}\n', encoding="utf-8")
    a = tmp_path / "a.txt"
    assert bpe.text_files(tmp_path) == [a]
    assert bpe.text_files(str(tmp_path / "*")) == [a]
    assert bpe.text_files([tmp_path, str(tmp_path / "*")]) == [a, a]
    for name, what in [("vocab.txt", "a vocab file"), ("a.txt.0123456789abcdef.tokens.bin", "a token cache"),
                       ("model.metrics.jsonl", "a metrics log")]:
        for spec in [tmp_path / name, [a, tmp_path / name]]:  # named on its own, alone or in a list
            with pytest.raises(TokenizerError, match=f"is {what}, not text$"):
                bpe.text_files(spec)
    a.unlink()
    only_outputs = r"\(only the toolkit's own outputs, such as "
    with pytest.raises(TokenizerError, match=r"no \.txt files in it " + only_outputs + r"vocab.txt, which is a vocab file"):
        bpe.text_files(tmp_path)
    with pytest.raises(TokenizerError, match=r"no file matches .* " + only_outputs + "a.txt.0123"):
        bpe.text_files(str(tmp_path / "*"))


@pytest.fixture
def corpus(tmp_path, shakespeare) -> tuple[Path, list[str]]:
    """A folder of four documents, one of them empty, and their texts in sorted path order."""
    docs = {"1.txt": shakespeare[:30_000], "2.txt": "no newline at the end", "3.txt": "",
            "sub/4.txt": "a special" + ENDOFTEXT + "inside\n" + shakespeare[30_000:50_000]}
    folder = tmp_path / "corpus"
    for name, text in docs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    return folder, list(docs.values())


def test_several_files_encode_as_their_joined_text(corpus, trained):
    folder, texts = corpus
    expected = trained.encode(ENDOFTEXT.join(texts[:2] + texts[3:]), allowed_special="all")  # empty: skipped
    assert trained.encode_file(folder, allowed_special="all") == expected
    assert trained.encode_file(folder, allowed_special="all", workers=2) == expected
    assert trained.encode_file(sorted(folder.rglob("*.txt")), allowed_special="all") == expected
    top_level = trained.encode(ENDOFTEXT.join(texts[:2]), allowed_special="all")
    assert trained.encode_file(str(folder / "*.txt")) == top_level  # the separator needs no allowing
    with pytest.raises(TokenizerError, match="allowed_special"):  # but a file's own special token does
        trained.encode_file(folder)
    no_special = BPE.train("some text", vocab_size=260, special_tokens=())
    with pytest.raises(TokenizerError, match="no such special token"):
        no_special.encode_file(folder)


def test_several_files_train_as_their_joined_text(corpus):
    folder, texts = corpus
    expected = BPE.train(ENDOFTEXT.join(texts), vocab_size=500)
    assert BPE.train(folder, vocab_size=500).hash == expected.hash
    assert BPE.train(str(folder), vocab_size=500, workers=2).hash == expected.hash
    assert BPE.train(sorted(folder.rglob("*.txt")), vocab_size=500).hash == expected.hash


def test_a_trained_tokenizer_records_its_text_outside_the_hash(tmp_path):
    (tmp_path / "a.txt").write_text("the quick brown fox " * 40)
    tok = BPE.train(tmp_path / "a.txt", vocab_size=270)
    assert tok.trained_on == {"text": str(tmp_path / "a.txt"), "bytes": 800,
                              "sha256": bpe.file_sha256(tmp_path / "a.txt")}
    tok.save(tmp_path / "v.txt")
    again = BPE.load(tmp_path / "v.txt")
    assert again.trained_on == tok.trained_on and again.hash == tok.hash
    unrecorded = BPE.from_text("\n".join(line for line in tok.to_text().split("\n") if not line.startswith("trained_on")))
    assert unrecorded.trained_on is None and unrecorded.hash == tok.hash  # files written before it still load
