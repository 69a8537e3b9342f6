"""End-to-end tests of the command line: the real main.py in a subprocess, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import main

ROOT = Path(__file__).resolve().parent


def run(*args, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], input=stdin,
                          capture_output=True, cwd=cwd or ROOT, timeout=120)


def one_line_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """Assert the user-error contract: exit code, no traceback, exactly one line on stderr."""
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory, data_dir) -> Path:
    path = tmp_path_factory.mktemp("cli") / "vocab.txt"
    result = run("tokenize", data_dir / "tinyshakespeare.txt", "--vocab-size", 1000, "-o", path)
    assert result.returncode == 0, result.stderr.decode()
    assert b"wrote" in result.stdout
    return path


def test_tokenize_encode_decode_round_trip(vocab):
    text = "To be, or not to be: that is the question.\r\n\tünïcödé 😀"
    enc = run("encode", text, vocab)
    assert enc.returncode == 0, enc.stderr
    ids = json.loads(enc.stdout)
    assert all(isinstance(i, int) for i in ids) and len(ids) < len(text.encode())
    dec = run("decode", json.dumps(ids), vocab)
    assert dec.returncode == 0
    assert dec.stdout.decode("utf-8") == text + "\n"


def test_stdin_and_pieces(vocab):
    text = "First Citizen:\nBefore we proceed"
    ids = json.loads(run("encode", "-", vocab, stdin=text.encode()).stdout)
    pieces = json.loads(run("decode", "--pieces", json.dumps(ids), vocab).stdout)
    assert "".join(pieces) == text and len(pieces) == len(ids)
    again = run("decode", "-", vocab, stdin=json.dumps(ids).encode())
    assert again.stdout.decode() == text + "\n"


def test_default_vocab_file_name(vocab, tmp_path):
    (tmp_path / "vocab.txt").write_bytes(vocab.read_bytes())
    ids = json.loads(run("encode", "hello", cwd=tmp_path).stdout)
    assert run("decode", json.dumps(ids), cwd=tmp_path).stdout == b"hello\n"
    assert main.DEFAULT_VOCAB == "vocab.txt"


def test_tokenize_default_output_and_recommended_size(tmp_path, data_dir):
    corpus = tmp_path / "small.txt"
    corpus.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:50_000], encoding="utf-8")
    result = run("tokenize", corpus, cwd=tmp_path)
    assert result.returncode == 0
    assert b"vocab size 512: recommended for 50,000 bytes" in result.stdout
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").startswith("bpe-vocab 1\n")


def test_gpt2_folder_as_vocab(data_dir):
    result = run("encode", "Hello world", data_dir / "gpt2")
    assert json.loads(result.stdout) == [15496, 995]


def test_special_tokens(vocab):
    refused = run("encode", "a<|endoftext|>b", vocab)
    assert "--allow-special" in one_line_error(refused)
    ids = json.loads(run("encode", "--allow-special", "a<|endoftext|>b", vocab).stdout)
    assert 999 in ids  # the special token's id: the last of the 1000


def test_main_can_be_called_directly(vocab, capsys):
    assert main.main(["encode", "hi there", str(vocab)]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert main.main(["decode", json.dumps(ids), str(vocab)]) == 0
    assert capsys.readouterr().out == "hi there\n"


@pytest.mark.parametrize("command", ["tokenize", "encode", "decode"])
def test_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and b"usage:" in result.stdout


# ---- every bad input: one clear line, exit 1 (2 for usage) ----------------------------------------


def test_missing_file(tmp_path):
    assert "file not found" in one_line_error(run("tokenize", tmp_path / "nope.txt"))


def test_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    assert "is empty" in one_line_error(run("tokenize", tmp_path / "empty.txt"))


def test_directory_instead_of_file(tmp_path):
    assert "is a directory" in one_line_error(run("tokenize", tmp_path))


def test_non_utf8_file_names_the_offset(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("naïve café".encode("latin-1"))
    assert "invalid byte 0xef at byte offset 2" in one_line_error(run("tokenize", tmp_path / "latin1.txt", cwd=tmp_path))
    assert not (tmp_path / "vocab.txt").exists()


def test_missing_vocab_file(tmp_path):
    line = one_line_error(run("encode", "hello", cwd=tmp_path))
    assert "vocab file not found: vocab.txt" in line and "tokenize" in line


def test_malformed_vocab_file(tmp_path):
    (tmp_path / "vocab.txt").write_text("not a vocab\n", encoding="utf-8")
    assert "not a vocab file" in one_line_error(run("decode", "[1]", cwd=tmp_path))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in one_line_error(run("decode", "[1]", tmp_path / "binary.txt"))


@pytest.mark.parametrize("ids,message", [
    ("[1, 2", "invalid JSON ids"),
    ("hello", "invalid JSON ids"),
    ('{"a": 1}', "list of integers"),
    ("[1.5]", "list of integers"),
    ("[true]", "list of integers"),
    ("[1000]", "token id 1000 is out of range: the vocabulary has ids 0 to 999"),
    ("[-3]", "token id -3 is out of range"),
])
def test_bad_ids(vocab, ids, message):
    assert message in one_line_error(run("decode", ids, vocab))


def test_non_utf8_stdin(vocab):
    assert "standard input is not UTF-8" in one_line_error(run("encode", "-", vocab, stdin=b"ok\xff"))


def test_usage_errors_exit_2():
    result = run("encode")
    assert result.returncode == 2 and b"usage:" in result.stderr and b"Traceback" not in result.stderr
    assert run("frobnicate").returncode == 2
    assert run("tokenize", "x.txt", "--vocab-size", "many").returncode == 2


def test_vocab_size_too_small(data_dir):
    line = one_line_error(run("tokenize", data_dir / "tinyshakespeare.txt", "--vocab-size", 100, "-o", "/dev/null"))
    assert "at least 256" in line
