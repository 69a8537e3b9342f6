"""Tests of gpt2_llm/data.py: the token-file cache, the split, and reproducible, resumable batches;
instruction records: how they are recognised, read and refused, held out, encoded and batched."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bpe import BPE
from gpt2_llm.data import (Batches, DataError, Examples, InstructionBatches, encode_examples, eval_windows,
                           instruction_eval_set, is_instruction_input, load_tokens, read_records, split_records,
                           split_tokens, token_dtype, token_file_path, validation_windows)
from gpt2_llm.instruct import IGNORE_INDEX, TEMPLATES


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
    train, val, test = split_tokens(tokens, 0.1, 16)
    assert train.tolist() == list(range(900)) and val.tolist() == list(range(900, 1000)) and test.tolist() == []
    with pytest.raises(DataError, match="too short.*--context 200"):
        split_tokens(tokens, 0.1, 200)


def test_split_with_a_test_part_takes_it_from_the_end_and_validation_just_before():
    tokens = np.arange(1000, dtype=np.uint16)
    train, val, test = split_tokens(tokens, 0.1, 16, test_fraction=0.15)
    assert train.tolist() == list(range(750)) and val.tolist() == list(range(750, 850))
    assert test.tolist() == list(range(850, 1000))
    with pytest.raises(DataError, match="150 for the test part.*--context 199"):
        split_tokens(tokens, 0.1, 199, test_fraction=0.15)


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


# ---- instruction records ---------------------------------------------------------------------------


def write_lines(path: Path, *lines) -> Path:
    """A JSON-lines file: dicts are dumped, strings written as they are."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines), encoding="utf-8")
    return path


ALPACA_RECORD = {"instruction": "Add.", "input": "2 + 3", "output": "5"}
CHAT_RECORD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def test_records_are_recognised_by_their_content(tmp_path):
    named = write_lines(tmp_path / "a.jsonl", ALPACA_RECORD)
    unnamed = write_lines(tmp_path / "b.txt", "", CHAT_RECORD)  # a blank first line is skipped
    text = tmp_path / "c.txt"
    text.write_text('{"a": 1} is JSON, but not a record\n', encoding="utf-8")
    other = write_lines(tmp_path / "d.json", {"a": 1})
    assert is_instruction_input([named]) and is_instruction_input([unnamed])
    assert not is_instruction_input([text]) and not is_instruction_input([other])
    assert is_instruction_input([write_lines(tmp_path / "e.jsonl", "not JSON")])  # .jsonl: records, or an error
    with pytest.raises(DataError, match=f"{unnamed} holds instruction records and {text} text"):
        is_instruction_input([unnamed, text])


def test_records_are_read_in_order_and_pick_their_template(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", ALPACA_RECORD, "", {"instruction": "Hi.", "output": "Hello."})
    template, conversations = read_records([path])
    assert template is TEMPLATES["alpaca"] and len(conversations) == 2
    assert conversations[1] == [{"role": "user", "content": "Hi.", "input": ""}, {"role": "assistant", "content": "Hello."}]
    template, _ = read_records([write_lines(tmp_path / "b.jsonl", CHAT_RECORD)])
    assert template is TEMPLATES["chat"]


@pytest.mark.parametrize("lines,message", [
    ([ALPACA_RECORD, "{\"instruction\": "], ":2: not a JSON line (Expecting value)"),
    ([ALPACA_RECORD, "", CHAT_RECORD], (":3: a chat (messages) record, but the records before it are Alpaca "
                                        "(instruction, input, output) (from {path}:1): one run trains on one kind")),
    ([{"instruction": "Add.", "input": "2 + 3"}], ":1: an Alpaca record needs 'output'; this one has 'instruction', 'input'"),
    ([{"messages": [{"role": "robot", "content": "x"}]}], ":1: message 1 has the role 'robot'; the roles are system, user, assistant"),
    ([{"messages": [{"role": "user", "content": "Hi"}]}], ":1: a chat record needs at least one assistant turn (the loss is on those)"),
    ([CHAT_RECORD, "[1, 2]"], ":2: a record is a JSON object, this is a JSON array"),
    (["", "  "], ": no records (one JSON object a line)"),
])  # fmt: skip
def test_each_bad_record_is_one_line_naming_file_and_line(tmp_path, lines, message):
    path = write_lines(tmp_path / "bad.jsonl", *lines)
    with pytest.raises(DataError) as error:
        read_records([path])
    assert str(error.value) == f"{path}" + message.format(path=path)


def test_records_that_are_not_utf8_name_the_byte(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl is not UTF-8 text: invalid byte 0xe9 at byte offset 20"):
        read_records([path])


def test_every_tenth_record_is_held_out():
    train, val = split_records(list(range(25)), 0.1)
    assert val == [9, 19] and train == [i for i in range(25) if i not in (9, 19)]
    assert split_records(list(range(4)), 0.0) == (list(range(4)), [])
    with pytest.raises(DataError, match="too few records: 3 give 3 for training and 0 for validation"):
        split_records(list(range(3)), 0.1)


def examples_of_lengths(*lengths) -> Examples:
    """Examples whose inputs are 1, 2, ... and targets 10 times those (so rows are easy to read)."""
    x = np.concatenate([np.arange(1, n + 1) for n in lengths])
    return Examples(x, 10 * x, np.cumsum([0, *lengths]))


def test_a_batch_is_right_padded_and_its_padding_is_never_a_target():
    x, y = examples_of_lengths(3, 1, 2).batch(np.array([0, 1, 2]), pad_id=0)
    assert x.tolist() == [[1, 2, 3], [1, 0, 0], [1, 2, 0]]
    assert y.tolist() == [[10, 20, 30], [10, -100, -100], [10, 20, -100]]


def test_encoded_examples_keep_each_record_whole(tokenizer):
    conversations = [[{"role": "user", "content": "the fox"}, {"role": "assistant", "content": "jumps"}],
                     [{"role": "user", "content": "the dog " * 10}, {"role": "assistant", "content": "over"}]]
    examples, cut = encode_examples(conversations, TEMPLATES["chat"], tokenizer, block_size=40)  # 32 and 50 tokens
    assert len(examples) == 2 and cut == 1 and examples.lengths.tolist() == [31, 40]
    _, y = examples.batch(np.array([0]), pad_id=0)
    assert tokenizer.decode([t for t in y[0].tolist() if t != IGNORE_INDEX]) == "jumps<|endoftext|>"


@pytest.mark.parametrize("pool", [1, 64])
def test_instruction_batches_visit_every_example_once_an_epoch(pool, monkeypatch):
    monkeypatch.setattr(InstructionBatches, "POOL", pool)
    lengths = [1 + (7 * k) % 20 for k in range(40)]  # each length from 1 to 20 twice
    batches = InstructionBatches(examples_of_lengths(*lengths), batch_size=4, seed=0, pad_id=0)
    seen, spreads = [], []
    for _ in range(10):
        x, y = next(batches)
        n = (y != IGNORE_INDEX).sum(dim=1).tolist()  # each row's length
        seen += n
        spreads.append(max(n) - min(n))
        assert x.shape[1] == max(n)  # padded to the longest of the batch, no further
    assert sorted(seen) == sorted(lengths) and batches.epochs_done == 1.0
    assert batches.round_tokens == 4 * x.shape[1]
    if pool == 64:  # one pool holds all 40, sorted by length: a batch holds lengths k, k, k+1, k+1
        assert max(spreads) == 1
    else:  # random batches of every length
        assert max(spreads) > 5


def test_instruction_batches_are_reproducible_resumable_and_split_among_streams():
    examples = examples_of_lengths(*[1 + k % 9 for k in range(50)])

    def draws(batches, n):
        return [next(batches)[0].tolist() for _ in range(n)]

    a = InstructionBatches(examples, 3, seed=5, pad_id=0)
    first = draws(a, 40)  # more than the 17 batches of an epoch
    assert first == draws(InstructionBatches(examples, 3, seed=5, pad_id=0), 40)
    assert first != draws(InstructionBatches(examples, 3, seed=6, pad_id=0), 40)
    b = InstructionBatches(examples, 3, seed=5, pad_id=0)
    draws(b, 23)
    state = b.state_dict()
    c = InstructionBatches(examples, 3, seed=99, pad_id=0)
    c.load_state_dict(state)
    assert draws(c, 17) == first[23:]
    # One process with two streams draws what two processes with one stream each draw together.
    both = InstructionBatches(examples, 3, seed=5, pad_id=0, num_streams=2)
    one, two = (InstructionBatches(examples, 3, seed=5, pad_id=0, num_streams=2, mine=[k]) for k in (0, 1))
    assert draws(both, 8) == [row for pair in zip(draws(one, 4), draws(two, 4)) for row in pair]
    assert draws(both, 8) == first[8:16]  # and the batches are the one stream's, in the same order


def test_checkpoints_of_text_and_of_records_do_not_mix():
    text_state = Batches(np.arange(100, dtype=np.uint16), 2, 8, seed=0).state_dict()
    records = InstructionBatches(examples_of_lengths(3, 4), 1, seed=0, pad_id=0)
    with pytest.raises(DataError, match="trained on text, not on instruction records"):
        records.load_state_dict(text_state)
    with pytest.raises(DataError, match="trained on instruction records, not on text"):
        Batches(np.arange(100, dtype=np.uint16), 2, 8, seed=0).load_state_dict(records.state_dict())


def test_the_validation_set_counts_the_bytes_of_the_answers(tokenizer):
    conversations = [[{"role": "user", "content": "the fox"}, {"role": "assistant", "content": "jumps over"}],
                     [{"role": "user", "content": "the"}, {"role": "assistant", "content": "dog"}]]
    examples, _ = encode_examples(conversations, TEMPLATES["chat"], tokenizer, block_size=64)
    (x, y), num_bytes = instruction_eval_set(examples, tokenizer, pad_id=0)
    assert num_bytes == len("jumps over") + len("dog")  # the end of turn is not text
    assert x.shape == (2, examples.lengths.max()) and (y != IGNORE_INDEX).sum() == num_bytes_tokens(tokenizer)
    assert (y[0] != IGNORE_INDEX).sum() < (y[1] != IGNORE_INDEX).sum()  # the shorter record first
    (small, _), _ = instruction_eval_set(examples, tokenizer, pad_id=0, max_tokens=int(examples.lengths.min()))
    assert len(small) == 1


def num_bytes_tokens(tokenizer) -> int:
    return len(tokenizer.encode_ordinary("jumps over")) + len(tokenizer.encode_ordinary("dog")) + 2
