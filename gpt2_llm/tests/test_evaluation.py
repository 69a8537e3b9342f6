"""Tests of gpt2_llm/evaluation.py: a model scored on a text, by name."""

import math
from dataclasses import asdict

import pytest
import torch

import bpe
from basics import UserError
from gpt2_llm import GPT2, GPT2Config, save_checkpoint
from gpt2_llm.data import load_tokens, validation_windows
from gpt2_llm.evaluation import evaluate_text
from gpt2_llm.trainer import evaluate

TEXT = "all the world's a stage, and all the men and women merely players. " * 40


@pytest.fixture
def model_file(tmp_path):
    tokenizer = bpe.BPE.train(TEXT, vocab_size=270)
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=270, n_layer=1, n_head=2, n_embd=16, block_size=32))
    save_checkpoint(tmp_path / "m.pt", {"model_config": asdict(model.config), "model": model.state_dict(),
                                        "tokenizer": {"text": tokenizer.to_text(), "hash": tokenizer.hash}})
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path / "m.pt", model.eval(), tokenizer


def test_the_figures_are_evaluate_s_on_the_texts_windows(model_file, tmp_path):
    path, model, tokenizer = model_file
    r = evaluate_text(str(tmp_path / "t.txt"), str(path), batch_size=3, device="cpu", dtype="float32")
    windows, num_bytes = validation_windows(load_tokens([tmp_path / "t.txt"], tokenizer), 32, tokenizer)
    expected = evaluate(model, windows, num_bytes, 3)
    assert r["val_loss"] == pytest.approx(expected["val_loss"], abs=1e-6)
    assert r["val_bpb"] == pytest.approx(expected["val_bpb"], abs=1e-6)
    assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-6)
    assert r["scored"] == f"{windows[:, 1:].numel():,} tokens"
    assert r["val_loss"] == pytest.approx(math.log(270), abs=0.1)  # an untrained model: about uniform


def test_bad_settings_and_texts_are_one_line(model_file, tmp_path, monkeypatch):
    path, _, _ = model_file
    monkeypatch.chdir(tmp_path)  # where no gpt2_model.pt is
    with pytest.raises(UserError, match="--batch-size must be at least 1, got 0"):
        evaluate_text(str(tmp_path / "t.txt"), str(path), batch_size=0)
    (tmp_path / "one.txt").write_text("a", encoding="utf-8")
    with pytest.raises(UserError, match="one.txt is too short to evaluate: it encodes to 1 token"):
        evaluate_text(str(tmp_path / "one.txt"), str(path), device="cpu")
    with pytest.raises(UserError, match=r"^model not found: gpt2_model.pt \(train one with"):
        evaluate_text(str(tmp_path / "t.txt"))
