from dataclasses import asdict, fields

import pytest
import torch

from bpe import UserError
from gpt2_llm import GPT2, PRESETS, GPT2Config, TrainConfig
from gpt2_llm.config import ORIGINAL_ARGS, ConfigError, config_from_original_args

# OpenAI's published sizes, as transformers counts them (the tied head counted once).
PUBLISHED = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_gpt2_presets_have_the_published_parameter_counts(name):
    config = GPT2Config.from_preset(name)
    assert (config.vocab_size, config.block_size) == (50257, 1024)
    with torch.device("meta"):  # shapes only: gpt2-xl would need 6 GB of memory
        model = GPT2(config)
    assert model.num_parameters() == PUBLISHED[name]


def test_small_presets():
    tiny = GPT2Config.from_preset("tiny")
    assert GPT2(tiny).num_parameters() == 136_960  # "well under 1M" for fast tests
    small = GPT2Config.from_preset("small")
    assert (small.n_layer, small.n_embd, small.n_head, small.block_size) == (12, 480, 12, 256)


def test_from_preset_overrides_and_validates():
    config = GPT2Config.from_preset("gpt2", vocab_size=1000, block_size=128)
    assert (config.vocab_size, config.block_size, config.n_embd) == (1000, 128, 768)
    with pytest.raises(ValueError, match="--context"):
        GPT2Config.from_preset("tiny", block_size=0)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'huge' \(--preset\); choose one of: tiny, mini, small, gpt2,"):
        GPT2Config.from_preset("huge")
    assert list(PRESETS) == ["tiny", "mini", "small", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as info:
        GPT2Config(vocab_size=0, n_embd=100, n_head=3, block_size=-1, dropout=1.5)
    message = str(info.value)
    for part in ("vocab_size must be at least 1 (the tokenizer's --vocab-size), got 0",
                 "n_embd (100) must be a positive multiple of n_head (3)",
                 "block_size (--context) must be at least 1, got -1",
                 "dropout (--dropout) must be in [0, 1), got 1.5"):  # fmt: skip
        assert part in message
    assert "\n" not in message  # one line


def test_rope_needs_an_even_head_size():
    with pytest.raises(ValueError, match="rope needs an even head size, got n_embd / n_head = 3"):
        GPT2Config(n_embd=12, n_head=4, rope=True)
    GPT2Config(n_embd=12, n_head=4)  # fine with learned positions


def test_derived_sizes_and_plain_asdict():
    config = GPT2Config(n_embd=64, n_head=4)
    assert (config.head_size, config.mlp_size) == (16, 256)
    assert GPT2Config(n_embd=64, n_head=4, n_inner=100).mlp_size == 100
    # Stored in checkpoints as plain values, so weights_only loading reads them.
    assert all(v is None or type(v) in (int, float, bool, str) for v in asdict(config).values())
    assert GPT2Config(**asdict(config)) == config


def test_attention_dropout_can_differ_from_dropout():
    from gpt2_llm import GPT2

    model = GPT2(GPT2Config.from_preset("mini", vocab_size=300))
    assert all(block.attn.dropout == 0.0 and block.attn.resid_dropout.p == 0.1 for block in model.decoder.h)
    same = GPT2(GPT2Config.from_preset("tiny", dropout=0.2))
    assert all(block.attn.dropout == 0.2 for block in same.decoder.h)  # None: as dropout, like GPT-2
    with pytest.raises(ValueError, match="--attn-dropout"):
        GPT2Config(attn_dropout=1.5)


def test_original_arguments_name_config_fields():
    assert set(ORIGINAL_ARGS.values()) <= set(asdict(GPT2Config()))
    config = config_from_original_args(
        "GPT2Decoder", None, dict(num_layers=3, embedding_dim=32, num_heads=4, feedforward_dim=80, dropout=0.1,
                                  bias=False, use_rope=True, rope_max_seq_len=16, rope_base=500.0, layer_norm_eps=1e-3),
    )  # fmt: skip
    assert config == GPT2Config(n_layer=3, n_embd=32, n_head=4, n_inner=80, dropout=0.1, bias=False, rope=True,
                                block_size=16, rope_base=500.0, layer_norm_eps=1e-3)  # fmt: skip
    given = GPT2Config.from_preset("tiny")
    assert config_from_original_args("GPT2", given, {}) is given
    assert config_from_original_args("GPT2", None, {}) == GPT2Config()


def test_original_arguments_refuse_unknown_and_conflicting_names():
    with pytest.raises(TypeError, match=r"GPT2Decoder\(\) got unexpected arguments \['n_layer'\]; it takes \['bias', "):
        config_from_original_args("GPT2Decoder", None, dict(n_layer=2))
    with pytest.raises(TypeError, match="not both"):
        config_from_original_args("GPT2Decoder", GPT2Config(), dict(num_layers=2))
    with pytest.raises(TypeError, match="max_seq_len or rope_max_seq_len, not both"):
        config_from_original_args("GPT2Decoder", None, dict(max_seq_len=8, rope_max_seq_len=16))


# ---- a config read from a file -----------------------------------------------------------------


def test_a_stored_config_reads_back_exactly():
    config = GPT2Config(vocab_size=300, n_layer=3, n_head=2, n_embd=32, block_size=16, rope=True, dropout=0.1)
    assert GPT2Config.from_dict(asdict(config)) == config


def test_fields_added_later_take_the_defaults_that_give_the_old_model():
    # A config as the first version wrote it: the shape only. Every later field has a default
    # that reproduces the model of that time (learned positions, biases, GPT-2's LayerNorm eps).
    old = {"vocab_size": 300, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16}
    config = GPT2Config.from_dict(old)
    assert (config.rope, config.bias, config.n_inner, config.layer_norm_eps, config.attn_dropout) == (
        False, True, None, 1e-5, None)


@pytest.mark.parametrize("change,message", [
    ({"n_experts": 8}, r"fields this version does not know \(n_experts\): it was written by a newer version"),
    ({"n_layer": None}, "n_layer is None, not a int"),
    ({"n_embd": "768"}, "n_embd is '768', not a int"),
    ({"rope": 1}, "rope is 1, not a bool"),
    ({"dropout": True}, "dropout is True, not a float"),
    ({"n_head": 5}, r"n_embd \(32\) must be a positive multiple of n_head \(5\)"),
    ({"dropout": float("nan")}, r"dropout \(--dropout\) must be in \[0, 1\)"),
])  # fmt: skip
def test_a_stored_config_with_a_bad_field_is_one_clear_error(change, message):
    stored = {**asdict(GPT2Config(vocab_size=300, n_layer=2, n_head=2, n_embd=32, block_size=16)), **change}
    with pytest.raises(ConfigError, match=message) as info:
        GPT2Config.from_dict(stored)
    assert "\n" not in str(info.value)


def test_a_stored_config_must_have_the_shape():
    with pytest.raises(ConfigError, match="the model config lacks n_embd, block_size"):
        GPT2Config.from_dict({"vocab_size": 300, "n_layer": 2, "n_head": 2})
    with pytest.raises(ConfigError, match="the model config is a list, not a dict"):
        GPT2Config.from_dict([1, 2])


def test_user_errors_are_their_own_type_not_any_value_error():
    assert issubclass(ConfigError, UserError) and issubclass(UserError, ValueError)
    assert not issubclass(ValueError, UserError)  # a bug's ValueError keeps its traceback in main.py


# ---- how to train ------------------------------------------------------------------------------


def test_training_config_errors_name_every_flag_at_once():
    with pytest.raises(ConfigError, match="--batch-size must be at least 1.*--lr must be positive"):
        TrainConfig(batch_size=0, lr=-1)
    with pytest.raises(ConfigError, match="--dtype"):
        TrainConfig(dtype="float8")
    with pytest.raises(ConfigError, match=r"--val-fraction must be in \[0, 1\), got 1.5"):
        TrainConfig(val_fraction=1.5)
    with pytest.raises(ConfigError, match=r"--label-smoothing must be in \[0, 1\), got -0.1"):
        TrainConfig(label_smoothing=-0.1)
    with pytest.raises(ConfigError, match=r"--ema must be in \[0, 1\), got 1.0"):
        TrainConfig(ema=1.0)
    with pytest.raises(ConfigError, match="--device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"):
        TrainConfig(device="gpu")


@pytest.mark.parametrize("name", ["lr", "minutes", "epochs", "grad_clip", "min_lr_ratio", "val_fraction", "beta1", "ema"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_no_float_flag_takes_nan_or_infinity(name, value):
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be a finite number"):
        TrainConfig(**{name: value})


# ---- architecture options ------------------------------------------------------------------------


def test_a_stored_config_without_the_architecture_fields_loads_as_gpt2():
    # A config as written before the options existed: none of norm, mlp, n_kv_head, qk_norm, tie_embeddings.
    old = {"vocab_size": 300, "n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 16, "n_inner": None,
           "dropout": 0.0, "attn_dropout": None, "bias": True, "rope": False, "rope_base": 10000.0,
           "layer_norm_eps": 1e-5}  # fmt: skip
    config = GPT2Config.from_dict(old)
    assert (config.norm, config.mlp, config.n_kv_head, config.qk_norm, config.tie_embeddings) == (
        "layernorm", "gelu", None, False, True)
    assert config.gpt2_departures() == [] and config.kv_heads == 4 and config.mlp_size == 128
    model = GPT2(config)
    assert isinstance(model.ln_f, torch.nn.LayerNorm) and model.lm_head.weight is model.wte.weight
    assert model.decoder.h[0].attn.c_attn.weight.shape == (96, 32) and model.decoder.h[0].mlp.c_fc2 is None


@pytest.mark.parametrize("n_embd,width", [(32, 64), (64, 192), (384, 1024), (768, 2048), (1024, 2752), (1600, 4288)])
def test_swiglu_width_is_the_multiple_of_64_nearest_8_thirds_of_the_width(n_embd, width):
    config = GPT2Config(n_embd=n_embd, n_head=1, mlp="swiglu")
    assert config.mlp_size == width
    assert abs(width - 8 * n_embd / 3) <= 32  # so 3 x width x n_embd is GPT-2's 8 x n_embd^2 within 3 x 32 x n_embd
    assert GPT2Config(n_embd=n_embd, n_head=1, mlp="swiglu", n_inner=100).mlp_size == 100  # n_inner still rules
    assert GPT2Config(n_embd=n_embd, n_head=1, mlp="relu2").mlp_size == 4 * n_embd


def test_key_value_heads_default_to_one_per_head():
    assert GPT2Config(n_head=12).kv_heads == 12
    assert GPT2Config(n_head=12, n_kv_head=4).kv_heads == 4
    assert GPT2Config(n_head=12, n_kv_head=1).kv_heads == 1


def test_bad_architecture_options_name_their_flags_at_once():
    with pytest.raises(ConfigError) as info:
        GPT2Config(n_head=12, n_kv_head=5, norm="batchnorm", mlp="gelu2")
    message = str(info.value)
    for part in ("n_kv_head (--kv-heads) must divide n_head (12), got 5",
                 "norm (--norm) must be layernorm or rmsnorm, got 'batchnorm'",
                 "mlp (--mlp) must be gelu, swiglu or relu2, got 'gelu2'"):  # fmt: skip
        assert part in message
    with pytest.raises(ConfigError, match=r"n_kv_head \(--kv-heads\) must divide n_head \(12\), got 0"):
        GPT2Config(n_head=12, n_kv_head=0)
    with pytest.raises(ConfigError, match=r"n_kv_head \(--kv-heads\) must divide n_head \(12\), got 24"):
        GPT2Config(n_head=12, n_kv_head=24)
    with pytest.raises(ConfigError, match=r"n_layer \(--n-layer\) must be at least 1"):
        GPT2Config(n_layer=0)


def test_gpt2_departures_name_each_option_taken():
    config = GPT2Config(n_head=4, n_embd=32, norm="rmsnorm", mlp="swiglu", n_kv_head=1, qk_norm=True,
                        tie_embeddings=False, rope=True, bias=False)  # fmt: skip
    assert config.gpt2_departures() == ["RMSNorm", "swiglu MLP", "1 key/value head", "QK-norm", "untied head", "RoPE",
                                        "no bias"]
    assert GPT2Config(n_head=4, n_kv_head=4).gpt2_departures() == []  # as many key/value heads as heads: GPT-2


def test_optimizer_settings_are_checked():
    assert TrainConfig().optimizer == "adamw" and TrainConfig(optimizer="muon").muon_lr is None
    with pytest.raises(ConfigError, match="--optimizer must be adamw or muon, got 'sgd'"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ConfigError, match="--muon-lr is the learning rate of --optimizer muon, not of adamw"):
        TrainConfig(muon_lr=0.01)
    with pytest.raises(ConfigError, match="--muon-lr must be positive, got -0.01"):
        TrainConfig(optimizer="muon", muon_lr=-0.01)


def test_muon_on_a_torch_without_it_is_one_line(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(ConfigError) as info:
        TrainConfig(optimizer="muon")
    assert str(info.value) == (f"--optimizer muon needs torch.optim.Muon, in torch 2.9 or later; this torch is "
                               f"{torch.__version__}")
    TrainConfig()  # AdamW needs nothing more


def test_each_shape_flag_comes_from_its_field():
    from gpt2_llm.config import flag_fields, flag_of

    flags = {f.name: flag_of(f) for f in flag_fields(GPT2Config)}
    assert flags == {"n_layer": "--n-layer", "n_head": "--n-head", "n_embd": "--n-embd", "block_size": "--context",
                     "dropout": "--dropout", "attn_dropout": "--attn-dropout", "bias": "--no-bias", "rope": "--rope",
                     "norm": "--norm", "mlp": "--mlp", "n_kv_head": "--kv-heads", "qk_norm": "--qk-norm",
                     "tie_embeddings": "--untied"}  # fmt: skip
    assert {f.name: f.metadata.get("choices") for f in flag_fields(GPT2Config) if "choices" in f.metadata} == {
        "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu", "relu2")}
    train_flags = {flag_of(f) for f in flag_fields(TrainConfig)}
    assert "--lr" in train_flags and "--init-from" in train_flags and not train_flags & set(flags.values())
    assert len(flag_fields(TrainConfig)) == len(fields(TrainConfig))  # every training setting is a flag
