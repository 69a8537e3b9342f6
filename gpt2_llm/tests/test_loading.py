"""Tests of gpt2_llm/loading.py: the one loader, and every way a checkpoint can fail to fit."""

from dataclasses import asdict

import pytest
import torch

from bpe import BPE
from gpt2_llm import GPT2, CheckpointError, GPT2Config, load, save_checkpoint, save_model


@pytest.fixture(scope="module")
def tokenizer():
    return BPE.train("the quick brown fox jumps over the lazy dog " * 20, vocab_size=280)


def tiny(vocab_size=280, **changes) -> GPT2:
    torch.manual_seed(0)
    return GPT2(GPT2Config(vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=16, **changes))


def write(path, model: GPT2, tokenizer: BPE | None = None, config: dict | None = None, weights=None, **extra) -> None:
    checkpoint = {"model_config": asdict(model.config) if config is None else config,
                  "model": model.state_dict() if weights is None else weights, **extra}
    if tokenizer is not None:
        checkpoint["tokenizer"] = {"text": tokenizer.to_text(), "hash": tokenizer.hash}
    save_checkpoint(path, checkpoint)


def one_line(path, match: str) -> None:
    with pytest.raises(CheckpointError, match=match) as info:
        load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_a_checkpoint_gives_the_model_its_tokenizer_and_the_rest(tmp_path, tokenizer):
    model = tiny()
    write(tmp_path / "m.pt", model, tokenizer, state={"step": 3})
    loaded = load(tmp_path / "m.pt")
    assert loaded.model.config == model.config and not loaded.model.training
    ids = torch.randint(0, 280, (2, 10))
    assert torch.equal(loaded.model(ids)[0], model.eval()(ids)[0])
    assert loaded.tokenizer.hash == tokenizer.hash
    assert loaded.checkpoint["state"] == {"step": 3} and not loaded.can_resume  # no optimizer, rng, ...


def test_gpt2_save_and_load_go_through_the_one_loader(tmp_path):
    model = tiny()
    save_model(model, tmp_path / "w.pt")
    assert load(tmp_path / "w.pt").tokenizer is None  # GPT2.save stores weights only
    again = load(tmp_path / "w.pt").model
    ids = torch.randint(0, 280, (2, 10))
    assert torch.equal(again(ids)[0], model.eval()(ids)[0])
    torch.save({"format_version": 1, "model_config": {"vocab_size": 280}, "model": {}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="lacks n_layer"):
        load(tmp_path / "bad.pt").model


def test_a_checkpoint_written_before_later_fields_existed_still_loads(tmp_path):
    model = tiny()
    shape_only = {name: getattr(model.config, name) for name in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size")}
    unpadded = {**model.state_dict(), "wte.weight": model.wte.weight[:280].detach().clone()}
    unpadded["lm_head.weight"] = unpadded["wte.weight"]  # before the embedding was padded to 64 rows
    write(tmp_path / "old.pt", model, config=shape_only, weights=unpadded)
    loaded = load(tmp_path / "old.pt")
    assert loaded.model.config == model.config
    assert torch.equal(loaded.model.wte.weight, model.wte.weight)


def test_a_checkpoint_with_the_removed_options_switched_off_loads_as_the_same_model(tmp_path):
    # Written by a version that had token shift and the copying cache: both fields stored, both off.
    model = tiny()
    write(tmp_path / "old.pt", model, config={**asdict(model.config), "token_shift": False, "copy_weight": 0.0,
                                              "copy_sharpness": 10.0})  # fmt: skip
    loaded = load(tmp_path / "old.pt")
    assert loaded.model.config == model.config
    ids = torch.randint(0, 280, (2, 10))
    assert torch.equal(loaded.model(ids)[0], model.eval()(ids)[0])
    assert torch.equal(load(tmp_path / "old.pt").model.generate(ids, 5, greedy=True), model.generate(ids, 5, greedy=True))


@pytest.mark.parametrize("used,flag", [
    ({"token_shift": True}, "--token-shift (RWKV's token shift)"),
    ({"copy_weight": 0.1, "copy_sharpness": 10.0}, "--copy 0.1 (a copying cache)"),
])  # fmt: skip
def test_a_checkpoint_that_used_a_removed_option_is_refused_naming_it(tmp_path, used, flag):
    model = tiny()
    write(tmp_path / "m.pt", model, config={**asdict(model.config), **used})
    with pytest.raises(CheckpointError) as info:
        load(tmp_path / "m.pt")
    assert str(info.value).startswith(f"{tmp_path / 'm.pt'}: the model was trained with {flag}, an experimental "
                                      f"option this version of the toolkit removed; retrain without it")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("change,message", [
    ({"n_experts": 4}, "model config has fields this version does not know"),
    ({"n_layer": "two"}, "n_layer is 'two', not a int"),
    ({"n_head": 3}, r"must be a positive multiple of n_head \(3\)"),
])  # fmt: skip
def test_a_bad_model_config_is_one_line(tmp_path, change, message):
    model = tiny()
    write(tmp_path / "m.pt", model, config={**asdict(model.config), **change})
    one_line(tmp_path / "m.pt", message)


def test_weights_that_do_not_fit_the_config_are_one_line(tmp_path):
    model = tiny()
    write(tmp_path / "deeper.pt", model, config={**asdict(model.config), "n_layer": 3})
    one_line(tmp_path / "deeper.pt", r"weights do not fit its model config: missing decoder\.h\.2\.ln_1\.weight, "
                                     r"decoder\.h\.2\.ln_1\.bias, decoder\.h\.2\.attn\.c_attn\.weight and 9 more")
    write(tmp_path / "wider.pt", model, config={**asdict(model.config), "n_embd": 64})
    one_line(tmp_path / "wider.pt", r"wte\.weight is 320x32, the config needs 320x64")
    weights = {**model.state_dict(), "extra.weight": torch.zeros(2)}
    write(tmp_path / "extra.pt", model, weights=weights)
    one_line(tmp_path / "extra.pt", "unexpected extra.weight")
    write(tmp_path / "numbers.pt", model, weights={"wte.weight": 3})
    one_line(tmp_path / "numbers.pt", "the weights are not a dict of tensors")


def test_a_stored_tokenizer_is_checked_against_its_hash_and_the_model(tmp_path, tokenizer):
    model = tiny()
    write(tmp_path / "m.pt", model)
    checkpoint = torch.load(tmp_path / "m.pt", weights_only=True)
    save_checkpoint(tmp_path / "hash.pt", {**checkpoint, "tokenizer": {"text": tokenizer.to_text(), "hash": "0" * 64}})
    one_line(tmp_path / "hash.pt", "does not match the hash recorded beside it")
    save_checkpoint(tmp_path / "text.pt", {**checkpoint, "tokenizer": {"text": "not a vocab", "hash": "0"}})
    one_line(tmp_path / "text.pt", r"\(its tokenizer\):1: not a vocab file")
    small = tiny(vocab_size=270)
    write(tmp_path / "small.pt", small, tokenizer)
    one_line(tmp_path / "small.pt", "its tokenizer has 280 tokens but the model's embedding only 270 rows")


def test_a_chat_template_stored_by_an_instruction_run_comes_with_the_model(tmp_path, tokenizer):
    template = {"name": "alpaca", "jinja": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    write(tmp_path / "chat.pt", tiny(), tokenizer, chat_template=template)
    loaded = load(tmp_path / "chat.pt")
    assert (loaded.chat_template, loaded.source, loaded.name) == (template, "checkpoint", str(tmp_path / "chat.pt"))
    write(tmp_path / "plain.pt", tiny(), tokenizer)
    assert load(tmp_path / "plain.pt").chat_template is None
    write(tmp_path / "bad.pt", tiny(), tokenizer, chat_template={"name": "alpaca"})
    one_line(tmp_path / "bad.pt", "its chat_template entry is not")


def test_a_missing_model_is_one_line_whatever_its_name_looks_like(tmp_path):
    one_line(tmp_path / "nope.pt", r"model not found: .*nope\.pt \(no such checkpoint file or model folder\)")
    one_line(tmp_path / "a" / "b" / "c", "model not found")  # a path, not a hub name


# ---- a model to use, with its tokenizer (load_with_tokenizer) and the one vocab check -------------


def test_a_vocab_is_checked_against_a_model_in_one_place(tokenizer):
    from gpt2_llm.loading import vocab_problem

    other = BPE.train("pack my box with five dozen liquor jugs " * 20, vocab_size=270)
    config = tiny().config  # 280 embedding rows
    assert vocab_problem(tokenizer, "v.txt", config, tokenizer, "m.pt") is None  # the model's own
    assert vocab_problem(other, "v.txt", config) is None  # a model without one takes any that fits
    assert vocab_problem(other, "o.txt", config, tokenizer, "m.pt") == (
        f"o.txt (hash {other.hash[:12]}, 270 tokens) is not the tokenizer m.pt was trained with "
        f"(hash {tokenizer.hash[:12]}, 280 tokens)")
    assert vocab_problem(tokenizer, "v.txt", tiny(vocab_size=270).config) == (
        "v.txt has 280 tokens but the model's embedding only 270 rows")


def test_load_with_tokenizer_takes_the_models_own_or_a_vocab_that_stands_in(tmp_path, tokenizer):
    from basics import UserError
    from gpt2_llm.loading import load_with_tokenizer

    tokenizer.save(tmp_path / "v.txt")
    other = BPE.train("pack my box with five dozen liquor jugs " * 20, vocab_size=270)
    other.save(tmp_path / "o.txt")
    write(tmp_path / "m.pt", tiny(), tokenizer)
    assert load_with_tokenizer(str(tmp_path / "m.pt"), "cpu").tokenizer.hash == tokenizer.hash
    assert load_with_tokenizer(str(tmp_path / "m.pt"), "cpu", str(tmp_path / "v.txt")).tokenizer.hash == tokenizer.hash
    with pytest.raises(UserError, match="o.txt .* is not the tokenizer .*m.pt was trained with"):
        load_with_tokenizer(str(tmp_path / "m.pt"), "cpu", str(tmp_path / "o.txt"))
    save_model(tiny(), tmp_path / "w.pt")  # weights only
    assert load_with_tokenizer(str(tmp_path / "w.pt"), "cpu", str(tmp_path / "o.txt")).tokenizer.hash == other.hash
    with pytest.raises(UserError, match=r"w.pt holds no tokenizer \(it was saved by GPT2.save\): give it so"):
        load_with_tokenizer(str(tmp_path / "w.pt"), "cpu", None, "give it so")


def test_a_model_name_that_names_nothing_is_refused_before_loading(tmp_path, monkeypatch):
    from basics import UserError
    from gpt2_llm.loading import check_model_name

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^model not found: gpt2_model.pt \(train one with: python main.py train"):
        check_model_name("gpt2_model.pt")
    with pytest.raises(CheckpointError, match=r"^model not found: x/y/z.pt \(no such checkpoint file or model folder\)"):
        check_model_name("x/y/z.pt")
    check_model_name("gpt2")  # a hub name: looked up when loaded
    (tmp_path / "gpt2_model.pt").write_bytes(b"")
    check_model_name("gpt2_model.pt")  # there: the loader says what it is
