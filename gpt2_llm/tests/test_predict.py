"""Tests of gpt2_llm/predict.py: text printed as it is made, prompts one or many, and chat."""

from dataclasses import asdict

import pytest
import torch

import bpe
from basics import UserError
from gpt2_llm import GPT2, GPT2Config, save_checkpoint
from gpt2_llm.instruct import TEMPLATES
from gpt2_llm.predict import predict, stream_tokens

TEXT = "to be or not to be, that is the question. " * 30


@pytest.fixture(scope="module")
def tokenizer() -> bpe.BPE:
    return bpe.BPE.train(TEXT, vocab_size=270)


def write_model(path, tokenizer: bpe.BPE, **extra):
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=16))
    save_checkpoint(path, {"model_config": asdict(model.config), "model": model.state_dict(),
                           "tokenizer": {"text": tokenizer.to_text(), "hash": tokenizer.hash}, **extra})
    return model.eval()


def test_a_prompt_is_printed_then_its_continuation_the_greedy_one(tmp_path, tokenizer, capsys):
    model = write_model(tmp_path / "m.pt", tokenizer)
    [made] = predict("to be", 12, str(tmp_path / "m.pt"), greedy=True, device="cpu")
    ids = tokenizer.encode("to be")
    expected = model.generate(ids, 12, greedy=True, stop_token=tokenizer.special_tokens[bpe.ENDOFTEXT])[len(ids):]
    eot = tokenizer.special_tokens[bpe.ENDOFTEXT]
    expected = expected[: expected.index(eot)] if eot in expected else expected
    assert made == tokenizer.decode(expected)
    assert capsys.readouterr().out == "to be" + made + "\n"


def test_the_same_seed_gives_the_same_text(tmp_path, tokenizer):
    write_model(tmp_path / "m.pt", tokenizer)
    runs = [predict("to", 10, str(tmp_path / "m.pt"), seed=seed, temperature=1.0, device="cpu") for seed in (3, 3, 4)]
    assert runs[0] == runs[1] != runs[2]


def test_prompts_from_a_stream_pass_over_empty_ones(tmp_path, tokenizer, capsys):
    write_model(tmp_path / "m.pt", tokenizer)
    made = predict(iter(["to", "", "be"]), 3, str(tmp_path / "m.pt"), greedy=True, device="cpu")
    assert len(made) == 2 and capsys.readouterr().out == "to" + made[0] + "\n" + "be" + made[1] + "\n"
    with pytest.raises(UserError, match="the prompt is empty"):
        predict("", 3, str(tmp_path / "m.pt"), device="cpu")


def test_sampling_settings_are_checked_before_the_model_is_read():
    with pytest.raises(UserError, match=r"top_p \(--top-p\) must be in \(0, 1\]"):
        predict("hi", 5, "no-such-model.pt", top_p=1.5)


class Tokens:
    """A stand-in model whose generation is a given list of token ids."""

    def __init__(self, ids):
        self.ids = ids

    def generate_stream(self, ids, num_tokens, stop_token=None, **sampling):
        yield from self.ids[:num_tokens]


def test_a_character_split_across_tokens_is_printed_whole(tokenizer, capsys):
    eot = tokenizer.special_tokens[bpe.ENDOFTEXT]
    e_acute = list("é".encode())  # two bytes: two base tokens of a byte-level tokenizer
    assert stream_tokens(Tokens([*e_acute, ord("!"), eot, ord("x")]), tokenizer, [1], 10, {}) == "é!"
    assert capsys.readouterr().out == "é!\n"
    assert stream_tokens(Tokens([e_acute[0]]), tokenizer, [1], 10, {}) == "\ufffd"  # cut short: U+FFFD, as decode


def test_chat_answers_in_the_models_template_and_needs_one(tmp_path, tokenizer, capsys):
    write_model(tmp_path / "m.pt", tokenizer)
    with pytest.raises(UserError, match="m.pt was not trained on instruction records, so it has no chat template"):
        predict("hello?", 5, str(tmp_path / "m.pt"), chat=True, device="cpu")
    write_model(tmp_path / "chat.pt", tokenizer, chat_template=TEMPLATES["chat"].to_checkpoint())
    answers = predict(iter(["hello?", " ", "and?"]), 4, str(tmp_path / "chat.pt"), chat=True, greedy=True, device="cpu")
    assert len(answers) == 2 and capsys.readouterr().out == answers[0] + "\n" + answers[1] + "\n"
    with pytest.raises(UserError, match="the question is empty"):
        predict(" ", 4, str(tmp_path / "chat.pt"), chat=True, device="cpu")
