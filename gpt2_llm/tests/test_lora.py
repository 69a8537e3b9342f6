"""LoRA (lora.py): adapters that start as no change, merge into the same logits, and are PEFT's own both ways."""

import json

import pytest
import torch

from basics import UserError
from gpt2_llm import GPT2, GPT2Config
from gpt2_llm.classifier import GPT2Classifier
from gpt2_llm.lora import (
    LoRALinear,
    add_lora,
    base_state,
    load_lora_state,
    lora_settings,
    lora_state,
    merge_lora,
    read_peft_adapter,
    rows_to_train,
    write_peft_adapter,
)
from gpt2_llm.tests.conftest import assert_close

TINY = {"vocab_size": 97, "n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 24}
# Llama's shape, with grouped-query attention (c_attn's q, k and v parts of different widths) and an untied head.
LLAMA = {"norm": "rmsnorm", "mlp": "swiglu", "rope": True, "bias": False, "n_kv_head": 2, "tie_embeddings": False,
         "layer_norm_eps": 1e-6}  # fmt: skip
SHAPES = {"gpt2": TINY, "llama": TINY | LLAMA}
PAD, CLASSES = 0, 3
IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18, 19, 20]])  # no PAD in them


def tiny(shape: str, classify: bool = False):
    torch.manual_seed(0)
    gpt = GPT2(GPT2Config(**SHAPES[shape]))
    return (GPT2Classifier(gpt, CLASSES, pad_id=PAD) if classify else gpt).eval()


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0]


@torch.no_grad()
def randomise(model, seed: int = 1) -> None:
    """Draw every adapter's A and B at random, so that each changes the logits visibly."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if ".lora_" in name:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_new_adapter_changes_nothing_and_a_trained_one_merges_into_the_same_logits(shape):
    model = tiny(shape)
    before = logits(model)
    add_lora(model, rank=4, alpha=8, targets="both")
    assert_close(logits(model), before, atol=0)  # B = 0: the update is exactly zero
    randomise(model)
    adapted = logits(model)
    assert (adapted - before).abs().max() > 0.1  # the adapters matter
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert model.state_dict().keys() == tiny(shape).state_dict().keys()
    assert_close(logits(model), adapted, atol=5e-5)  # float32 sums in another order, logits up to about 10


def test_dropout_acts_on_the_adapter_path_alone():
    model = add_lora(tiny("gpt2"), rank=4, dropout=0.5, targets="both").train()
    with torch.no_grad():
        plain = tiny("gpt2")(IDS)[0]
        assert_close(model(IDS)[0], plain, atol=0)  # B = 0: dropping inputs of a zero update changes nothing
        randomise(model)
        assert not torch.equal(model(IDS)[0], model(IDS)[0])  # two draws of the adapters' inputs


@pytest.mark.parametrize("classify", [False, True], ids=["lm", "classifier"])
@pytest.mark.parametrize("shape", SHAPES)
def test_lora_state_and_settings_rebuild_the_model(shape, classify):
    model = add_lora(tiny(shape, classify), rank=2, alpha=3.0, dropout=0.1, targets="mlp")
    randomise(model)
    if classify:
        torch.nn.init.normal_(model.score.weight)
    assert lora_settings(model) == {"rank": 2, "alpha": 3.0, "dropout": 0.1, "targets": "mlp", "tokens": None}
    again = add_lora(tiny(shape, classify), **lora_settings(model))
    load_lora_state(again, lora_state(model))
    assert_close(logits(again), logits(model), atol=0)
    plain = GPT2(model.config if not classify else model.gpt.config)
    plain.load_state_dict(base_state(model))
    assert_close(logits(plain), logits(tiny(shape).eval()), atol=0)


def test_token_rows_train_in_an_untied_language_model_alone_and_rebuild_with_the_settings():
    model = add_lora(tiny("llama"), rank=2, tokens=[9, 5, 7, 5])
    assert model.wte.ids.tolist() == [5, 7, 9] and model.lm_head.ids.tolist() == [5, 7, 9]
    assert_close(logits(model), logits(tiny("llama")), atol=0)  # the rows start as the base's own
    randomise(model)
    settings = lora_settings(model)
    assert settings["tokens"] == [5, 7, 9]
    rebuilt = add_lora(tiny("llama"), **settings)
    load_lora_state(rebuilt, lora_state(model))
    assert_close(logits(rebuilt), logits(model), atol=0)
    # Only rows 5, 7 and 9 of the merged embedding and head differ from the base's.
    merged, base = merge_lora(model), tiny("llama")
    for name in ("wte", "lm_head"):
        changed = (getattr(merged, name).weight != getattr(base, name).weight).any(dim=1).nonzero().flatten()
        assert changed.tolist() == [5, 7, 9]
    assert not hasattr(add_lora(tiny("gpt2"), rank=2, tokens=[5]).wte, "ids")  # tied: the head is the embedding
    assert not hasattr(add_lora(tiny("llama", classify=True), rank=2, tokens=[5]).gpt.wte, "ids")  # a classifier


def test_the_rows_to_train_are_the_datas_most_frequent_tokens_within_two_percent_of_the_weights():
    model = add_lora(tiny("llama"), rank=2)
    budget = int(0.02 * model.num_parameters() / (2 * 32))  # rows of the embedding and the head, 32 wide
    assert 0 < budget < 96
    assert rows_to_train([0] + list(range(1, 97)), model) == (list(range(97 - budget, 97)), 96)  # id i seen i times
    assert rows_to_train([0, 5, 0, 1, 0, 2], model) == ([1, 3, 5], 3)  # fewer than the budget: all of them


def test_an_adapter_of_another_shape_is_refused_in_one_line():
    state = lora_state(add_lora(tiny("gpt2"), rank=4))
    with pytest.raises(UserError, match=r"does not fit the model's adapters \(of another shape: decoder.h.0"):
        load_lora_state(add_lora(tiny("gpt2"), rank=2), state)
    with pytest.raises(UserError, match=r"missing: decoder.h.0.mlp.c_fc.lora_A.0"):
        load_lora_state(add_lora(tiny("gpt2"), rank=4, targets="both"), state)
    with pytest.raises(UserError, match="--lora .*; --lora-targets must be one of attention, mlp, both"):
        add_lora(tiny("gpt2"), rank=0, targets="everything")


def test_only_adapters_and_a_classifiers_score_train_and_their_count_is_the_hand_count():
    with torch.device("meta"):  # GPT-2 124M's shape without allocating it
        model = add_lora(GPT2(GPT2Config.from_preset("gpt2")), rank=8)
        classifier = add_lora(GPT2Classifier(GPT2(GPT2Config.from_preset("gpt2")), 2), rank=8)
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in name for name in trainable)
    # Per block: c_attn 8 x 768 (A) + 2304 x 8 (B), c_proj 8 x 768 + 768 x 8; 12 blocks.
    assert sum(trainable.values()) == 12 * (8 * 768 + 2304 * 8 + 8 * 768 + 768 * 8) == 442_368
    trainable = {name for name, p in classifier.named_parameters() if p.requires_grad}
    assert trainable == {"score.weight"} | {"gpt." + name for name in {n for n, p in model.named_parameters()
                                                                       if p.requires_grad}}  # fmt: skip
    assert classifier.num_parameters(trained=True) == 442_368 + 2 * 768


def test_llama_shapes_c_attn_has_an_adapter_for_each_of_q_k_and_v():
    model = add_lora(tiny("llama"), rank=4)
    c_attn = model.decoder.h[0].attn.c_attn
    assert [tuple(B.shape) for B in c_attn.lora_B] == [(32, 4), (16, 4), (16, 4)]  # 4 heads of 8; 2 key/value heads
    assert len(add_lora(tiny("gpt2"), rank=4).decoder.h[0].attn.c_attn.lora_B) == 1  # GPT-2's fused c_attn, as PEFT's


# ---- PEFT's format ----------------------------------------------------------------------------------


def transformers_model(base, shape: str, classify: bool):
    """transformers' model of an exported base: the causal LM, or the sequence classifier of its class
    (its score drawn at random: the adapter's modules_to_save brings ours)."""
    transformers = pytest.importorskip("transformers")
    if not classify:
        return transformers.AutoModelForCausalLM.from_pretrained(base).eval()
    cls = transformers.GPT2ForSequenceClassification if shape == "gpt2" else transformers.LlamaForSequenceClassification
    return cls.from_pretrained(base, num_labels=CLASSES, pad_token_id=PAD).eval()


def their_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("classify", [False, True], ids=["lm", "classifier"])
@pytest.mark.parametrize("shape", SHAPES)
def test_peft_loads_our_adapter_with_our_logits(shape, classify, tmp_path):
    peft = pytest.importorskip("peft")
    from gpt2_llm.export import write_model

    model = tiny(shape, classify)
    write_model(getattr(model, "gpt", model), tmp_path / "base")
    add_lora(model, rank=4, alpha=8, targets="both", tokens=[3, 11, 40])  # rows train in llama-lm alone (untied)
    randomise(model)
    write_peft_adapter(model, tmp_path / "adapter", base_name_or_path="base")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == ("SEQ_CLS" if classify else "CAUSAL_LM")
    assert config["modules_to_save"] == (["score"] if classify else None)
    rows = {"embed_tokens": [3, 11, 40], "lm_head": [3, 11, 40]} if shape == "llama" and not classify else None
    assert config["trainable_token_indices"] == rows
    theirs = peft.PeftModel.from_pretrained(transformers_model(tmp_path / "base", shape, classify), tmp_path / "adapter")
    assert_close(their_logits(theirs), logits(model), atol=1e-4)
    with theirs.disable_adapter():  # PEFT did apply the adapter
        assert (their_logits(theirs) - logits(model)).abs().max() > 0.1


PEFT_TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"],
                "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}  # fmt: skip


@pytest.mark.parametrize("classify", [False, True], ids=["lm", "classifier"])
@pytest.mark.parametrize("shape", SHAPES)
def test_an_adapter_peft_saved_gives_our_model_its_logits(shape, classify, tmp_path):
    peft = pytest.importorskip("peft")
    from gpt2_llm.export import write_model

    model = tiny(shape, classify)
    write_model(getattr(model, "gpt", model), tmp_path / "base")
    config = peft.LoraConfig(r=4, lora_alpha=6, target_modules=PEFT_TARGETS[shape], fan_in_fan_out=shape == "gpt2",
                             task_type="SEQ_CLS" if classify else "CAUSAL_LM")  # fmt: skip
    theirs = peft.get_peft_model(transformers_model(tmp_path / "base", shape, classify), config).eval()
    randomise(theirs)  # PEFT's B starts at zero as ours does
    theirs.save_pretrained(tmp_path / "adapter")
    settings, state = read_peft_adapter(tmp_path / "adapter", shape)
    assert settings == {"rank": 4, "alpha": 6, "dropout": 0.0, "targets": "both", "tokens": None}
    load_lora_state(add_lora(model, **settings), state)
    assert_close(logits(model), their_logits(theirs), atol=1e-4)


def test_trainable_tokens_peft_saved_give_our_model_their_logits(tmp_path):
    peft = pytest.importorskip("peft")
    from gpt2_llm.export import write_model

    model = tiny("llama")
    write_model(model, tmp_path / "base")
    rows = [2, 30, 31]
    config = peft.LoraConfig(r=4, lora_alpha=6, target_modules=PEFT_TARGETS["llama"][:4], task_type="CAUSAL_LM",
                             trainable_token_indices={"embed_tokens": rows, "lm_head": rows})  # fmt: skip
    theirs = peft.get_peft_model(transformers_model(tmp_path / "base", "llama", False), config).eval()
    randomise(theirs)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "trainable_tokens_delta" in name:
                p.normal_()
    theirs.save_pretrained(tmp_path / "adapter")
    settings, state = read_peft_adapter(tmp_path / "adapter", "llama")
    assert settings == {"rank": 4, "alpha": 6, "dropout": 0.0, "targets": "attention", "tokens": rows}
    load_lora_state(add_lora(model, **settings), state)
    assert_close(logits(model), their_logits(theirs), atol=1e-4)
    with theirs.disable_adapter():
        assert (their_logits(theirs) - logits(model)).abs().max() > 0.1
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "trainable_token_indices": rows}))
    with pytest.raises(UserError, match="must name the same tokens for embed_tokens and lm_head"):
        read_peft_adapter(tmp_path / "adapter", "llama")


def test_the_heads_rows_are_in_generation_and_merge_into_its_matrix():
    model = add_lora(tiny("llama"), rank=4, tokens=range(97))
    assert {"wte", "lm_head"} <= {name.split(".")[0] for name in lora_state(model)}
    randomise(model)
    prompt = IDS[0].tolist()
    adapted = model.generate(prompt, 8, greedy=True)
    plain = tiny("llama").generate(prompt, 8, greedy=True)
    assert adapted != plain  # the adapters, head and embedding included, change what it says
    assert merge_lora(model).generate(prompt, 8, greedy=True) == adapted


def test_a_folder_that_is_not_a_lora_adapter_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="is not a PEFT adapter folder: it has no adapter_config.json"):
        read_peft_adapter(tmp_path, "gpt2")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "use_dora": True}))
    with pytest.raises(UserError, match="this toolkit's LoRA does not do use_dora True"):
        read_peft_adapter(tmp_path, "gpt2")
