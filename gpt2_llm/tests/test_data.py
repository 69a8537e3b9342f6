"""Tests of gpt2_llm/data.py: the token-file cache, the split, and reproducible, resumable batches."""

from pathlib import Path

import numpy as np
import pytest
import torch

from bpe import BPE
from gpt2_llm.data import (Batches, DataError, eval_windows, load_tokens, split_tokens, token_dtype, token_file_path,
                           validation_windows)


@pytest.fixture(scope="module")
def tokenizer():
    return BPE.train("the quick brown fox jumps over the lazy dog " * 20, vocab_size=300)


def test_tokens_are_cached_and_keyed_by_text_and_vocab(tmp_path, tokenizer):
    text = tmp_path / "t.txt"
    text.write_text("hello world, the fox<|endoftext|>and the dog\n" * 100, encoding="utf-8")
    tokens = load_tokens(text, tokenizer)
    path = token_file_path(text, tokenizer)
    assert path.parent == tmp_path and path.exists()
    assert tokens.dtype == np.uint16
    assert tokens.tolist() == tokenizer.encode(text.read_text(encoding="utf-8"), allowed_special="all")
    assert tokenizer.special_tokens["<|endoftext|>"] in tokens.tolist()
    stamp = path.stat().st_mtime_ns
    load_tokens(text, tokenizer)
    assert path.stat().st_mtime_ns == stamp  # not encoded again
    text.write_text("changed text " * 100, encoding="utf-8")
    assert token_file_path(text, tokenizer) != path  # a changed text has another key
    other = BPE.train("something else entirely " * 20, vocab_size=280)
    assert token_file_path(text, other) != token_file_path(text, tokenizer)


def test_read_only_folder_uses_the_cache_dir(tmp_path, tokenizer, monkeypatch):
    (tmp_path / "t.txt").write_text("a b c " * 50, encoding="utf-8")
    monkeypatch.setenv("GPT2_TOOLKIT_CACHE", str(tmp_path / "cache"))
    # As root every folder is writable, so pretend the text's folder is not.
    monkeypatch.setattr("gpt2_llm.data.os.access", lambda path, mode: False)
    tokens = load_tokens(tmp_path / "t.txt", tokenizer)
    assert token_file_path(tmp_path / "t.txt", tokenizer).parent == tmp_path / "cache"
    assert tokens.tolist() == tokenizer.encode("a b c " * 50)


@pytest.mark.slow
def test_encoding_a_1gb_text_takes_under_1_5gb_of_memory(monkeypatch):
    """Memory does not grow with the corpus: measured as `benchmarks/bench_scale.py --memory` does
    (a 1 GB text, load_tokens in a child process, its memory and its workers' added up)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_scale

    report = bench_scale.measure_memory(1 << 30)
    assert report["bytes"] > 1e9 and report["tokens"] > 2e8
    assert report["peak_rss"] < 1.5e9, f"peak RSS {report['peak_rss'] / 1e9:.2f} GB"


def test_token_dtype():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


@pytest.mark.parametrize("content,message", [(None, "not found"), ("", "is empty")])
def test_bad_training_files(tmp_path, tokenizer, content, message):
    path = tmp_path / "x.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_tokens(path, tokenizer)


def test_bad_training_folders_and_globs(tmp_path, tokenizer):
    (tmp_path / "notes.md").write_text("not a .txt file")
    with pytest.raises(DataError, match="no .txt files"):
        load_tokens(tmp_path, tokenizer)
    with pytest.raises(DataError, match="no file matches"):
        load_tokens(str(tmp_path / "*.txt"), tokenizer)
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_tokens(tmp_path, tokenizer)


def write_corpus(folder, texts: dict) -> None:
    for name, text in texts.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")


def test_a_folder_is_cached_beside_it_and_keyed_by_every_file(tmp_path, tokenizer):
    folder = tmp_path / "books"
    texts = {"a.txt": "the quick brown fox\n" * 50, "b.txt": "", "more/c.txt": "the lazy dog" * 40}
    write_corpus(folder, texts)
    tokens = load_tokens(folder, tokenizer)
    path = token_file_path(folder, tokenizer)
    assert path.parent == tmp_path and path.name.startswith("books.") and path.exists()
    joined = texts["a.txt"] + "<|endoftext|>" + texts["more/c.txt"]  # the empty file adds nothing
    assert tokens.tolist() == tokenizer.encode(joined, allowed_special="all")
    assert token_file_path(str(folder / "**" / "*.txt"), tokenizer) == path  # the same files: the same cache
    assert token_file_path([folder / "more" / "c.txt", folder / "a.txt"], tokenizer) != path  # another order
    stamp = path.stat().st_mtime_ns
    load_tokens(folder, tokenizer)
    assert path.stat().st_mtime_ns == stamp  # not encoded again
    (folder / "more" / "c.txt").write_text("changed", encoding="utf-8")
    assert token_file_path(folder, tokenizer) != path


def test_parallel_encoding_writes_the_same_tokens(tmp_path, tokenizer):
    texts = {f"{k}.txt": f"document {k}: the quick brown fox<|endoftext|>jumps\n" * (100 + k) for k in range(6)}
    write_corpus(tmp_path / "one", texts)
    write_corpus(tmp_path / "two", texts)
    one = load_tokens(tmp_path / "one", tokenizer, workers=1)
    two = load_tokens(tmp_path / "two", tokenizer, workers=2)
    assert token_file_path(tmp_path / "one", tokenizer) != token_file_path(tmp_path / "two", tokenizer)
    assert two.tolist() == one.tolist() == tokenizer.encode("<|endoftext|>".join(texts.values()), allowed_special="all")


def test_read_only_folder_of_several_files_uses_the_cache_dir(tmp_path, tokenizer, monkeypatch):
    write_corpus(tmp_path / "books", {"a.txt": "a b c " * 50, "b.txt": "d e f " * 50})
    monkeypatch.setenv("GPT2_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("gpt2_llm.data.os.access", lambda path, mode: False)
    tokens = load_tokens(tmp_path / "books", tokenizer)
    assert token_file_path(tmp_path / "books", tokenizer).parent == tmp_path / "cache"
    assert tokens.tolist() == tokenizer.encode("a b c " * 50 + "<|endoftext|>" + "d e f " * 50, allowed_special="all")


def test_split_takes_the_last_part_for_validation():
    tokens = np.arange(1000, dtype=np.uint16)
    train, val = split_tokens(tokens, 0.1, 16)
    assert train.tolist() == list(range(900)) and val.tolist() == list(range(900, 1000))
    with pytest.raises(DataError, match="too short.*--context 200"):
        split_tokens(tokens, 0.1, 200)


def test_random_batches_are_shifted_windows_and_reproducible():
    tokens = np.arange(500, dtype=np.uint16)
    a = Batches(tokens, 4, 8, seed=3)
    x, y = next(a)
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)  # the targets are the inputs shifted by one
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)
    b = Batches(tokens, 4, 8, seed=3)
    assert torch.equal(next(b)[0], x)
    assert not torch.equal(next(Batches(tokens, 4, 8, seed=4))[0], x)
    assert int(x.max()) + 1 <= 499  # every window fits


def test_epoch_mode_visits_every_window_once_per_epoch():
    tokens = np.arange(101, dtype=np.uint16)
    batches = Batches(tokens, 5, 10, seed=0, mode="epoch", stride=10)  # windows start at 0, 10, ..., 90
    starts = [int(row[0]) for _ in range(2) for row in next(batches)[0]]
    assert sorted(starts) == list(range(0, 100, 10))
    assert batches.epochs_done == 1.0
    more = [int(row[0]) for _ in range(2) for row in next(batches)[0]]
    assert sorted(more) == list(range(0, 100, 10)) and more != starts


@pytest.mark.parametrize("mode", ["random", "epoch"])
def test_batches_resume_from_state(mode):
    tokens = np.arange(300, dtype=np.uint16)
    a = Batches(tokens, 3, 8, seed=1, mode=mode)
    for _ in range(7):
        next(a)
    state = a.state_dict()
    expected = [next(a)[0] for _ in range(5)]
    b = Batches(tokens, 3, 8, seed=99, mode=mode)
    b.load_state_dict(state)
    assert all(torch.equal(next(b)[0], e) for e in expected)


def test_eval_windows_cover_the_tokens_in_order():
    tokens = np.arange(35, dtype=np.uint16)
    w = eval_windows(tokens, 8)
    assert w.shape == (4, 9)
    assert w[:, 1:].flatten().tolist() == list(range(1, 33))  # every target once
    assert eval_windows(tokens, 8, max_tokens=16).shape == (2, 9)


def test_bits_per_byte_count_the_text_and_not_the_separators(tokenizer):
    eot = tokenizer.special_tokens["<|endoftext|>"]
    first, second = tokenizer.encode("To be, or not"), tokenizer.encode(" to be")
    tokens = np.array(first + [eot] + second, dtype=np.uint16)
    windows, num_bytes = validation_windows(tokens, len(tokens) - 1, tokenizer)
    # The predicted tokens are all but the first: their text, without the 13 bytes of the separator.
    assert windows.tolist() == [tokens.tolist()]
    assert num_bytes == len("To be, or not to be".encode()) - len(tokenizer.decode_bytes(first[:1]))
