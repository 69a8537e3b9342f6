"""Tests of gpt2_llm/vocab.py: the tokenizer commands as functions (tokenize, encode, decode)."""

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

import bpe
from basics import UserError
from gpt2_llm import GPT2, GPT2Config, save_checkpoint
from gpt2_llm.vocab import decode, encode, load_vocab, text_inputs, tokenize

TEXT = "the quick brown fox jumps over the lazy dog, and the dog sleeps on. " * 40
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def text_file(tmp_path) -> Path:
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path / "text.txt"


def test_tokenize_learns_writes_and_round_trips(text_file, tmp_path, capsys):
    tokenizer, made = tokenize(str(text_file), output=str(tmp_path / "v.txt"), vocab_size=270)
    assert made.startswith("trained in ") and made.endswith(" s")
    assert tokenizer.vocab_size == 270 and load_vocab(str(tmp_path / "v.txt")).hash == tokenizer.hash
    assert tokenizer.hash == bpe.BPE.train(TEXT, vocab_size=270).hash  # the same tokenizer bpe learns
    ids = encode("the lazy fox", str(tmp_path / "v.txt"))
    assert ids == tokenizer.encode("the lazy fox") and decode(ids, tokenizer) == "the lazy fox"
    assert "".join(decode(ids, tokenizer, pieces=True)) == "the lazy fox"
    assert capsys.readouterr().out == ""  # a size given: no recommendation printed


def test_tokenize_recommends_a_size_when_none_is_given(text_file, tmp_path, capsys):
    tokenizer, _ = tokenize(str(text_file), output=str(tmp_path / "v.txt"))
    wanted = bpe.recommended_vocab_size(len(TEXT.encode()))
    assert f"vocab size {wanted}: recommended for {len(TEXT.encode()):,} bytes" in capsys.readouterr().out
    assert tokenizer.hash == bpe.BPE.train(TEXT, vocab_size=wanted).hash


def test_tokenize_keeps_an_existing_output_unless_told(text_file, tmp_path):
    (tmp_path / "v.txt").write_text("my old vocab")
    with pytest.raises(UserError, match="already exists: pass --overwrite"):
        tokenize(str(text_file), output=str(tmp_path / "v.txt"), vocab_size=260)
    assert (tmp_path / "v.txt").read_text() == "my old vocab"
    tokenize(str(text_file), output=str(tmp_path / "v.txt"), vocab_size=260, overwrite=True)
    assert load_vocab(str(tmp_path / "v.txt")).vocab_size == 260


def test_tokenize_takes_a_text_or_a_checkpoint_with_settings_that_fit(text_file, tmp_path):
    with pytest.raises(UserError, match="exactly one of them"):
        tokenize(output=str(tmp_path / "v.txt"))
    with pytest.raises(UserError, match="exactly one of them"):
        tokenize(str(text_file), from_checkpoint="m.pt", output=str(tmp_path / "v.txt"))
    with pytest.raises(UserError, match="^--pattern is for learning from a text"):
        tokenize(from_checkpoint="m.pt", pattern="gpt4", output=str(tmp_path / "v.txt"))
    assert not (tmp_path / "v.txt").exists()


def test_tokenize_from_a_checkpoint_writes_its_tokenizer(tmp_path):
    stored = bpe.BPE.train(TEXT, vocab_size=275)
    model = GPT2(GPT2Config(vocab_size=275, n_layer=1, n_head=2, n_embd=16, block_size=8))
    save_checkpoint(tmp_path / "m.pt", {"model_config": asdict(model.config), "model": model.state_dict(),
                                        "tokenizer": {"text": stored.to_text(), "hash": stored.hash}})
    tokenizer, made = tokenize(from_checkpoint=str(tmp_path / "m.pt"), output=str(tmp_path / "v.txt"))
    assert made == f"the tokenizer of {tmp_path / 'm.pt'}" and tokenizer.hash == stored.hash
    assert load_vocab(str(tmp_path / "v.txt")).to_text() == stored.to_text()
    save_checkpoint(tmp_path / "w.pt", {"model_config": asdict(model.config), "model": model.state_dict()})
    with pytest.raises(UserError, match=r"holds model weights only, no tokenizer \(it was saved by GPT2.save\)"):
        tokenize(from_checkpoint=str(tmp_path / "w.pt"), output=str(tmp_path / "w.txt"))


def test_the_default_vocab_missing_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^vocab file not found: vocab.txt \(make one with: python main.py tokenize"):
        encode("hello")
    with pytest.raises(UserError, match=r"^vocab file not found: other.txt$"):
        decode([1], "other.txt")


def test_a_special_token_is_encoded_only_when_allowed(text_file, tmp_path):
    tokenizer, _ = tokenize(str(text_file), output=str(tmp_path / "v.txt"), vocab_size=260)
    with pytest.raises(UserError, match="add --allow-special to encode it as one token"):
        encode("a<|endoftext|>b", tokenizer)
    eot = tokenizer.special_tokens[bpe.ENDOFTEXT]
    assert encode("a<|endoftext|>b", tokenizer, allow_special=True) == [*tokenizer.encode("a"), eot,
                                                                         *tokenizer.encode("b")]


def test_an_empty_text_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty.txt is empty: there is no text to evaluate on"):
        text_inputs(str(tmp_path / "empty.txt"), "evaluate on")


def test_importing_the_tokenizer_commands_imports_no_torch():
    code = "import sys, gpt2_llm.vocab; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60, check=False)
    assert result.stdout == "False\n", result.stderr
