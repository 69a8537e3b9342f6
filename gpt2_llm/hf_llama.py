"""The Llama family in transformers' folders: three classes' config.json and weight names, to and from ours.

A model with RMSNorm, rotary positions and no biases (any number of key/value heads, its head tied
to the embedding or not) is one of three classes, by its MLP and QK-norm (FAMILIES; export.py
calls these functions and chooses between GPT-2's class and these):

    ours                       Llama (llama)       Qwen3 (qwen3)       Apertus (apertus)
    --mlp swiglu               yes                 yes                 no
    --mlp relu2                no                  no                  yes (hidden_act relu2)
    --qk-norm                  no                  yes                 yes

A classifier's class is LlamaForSequenceClassification or Qwen3ForSequenceClassification
(Family.hf_classifier; transformers has no Apertus one): the same weights but the head, plus score.weight.

Their weights map one to one:

    ours (decoder.h.N.*)                 transformers' (model.layers.N.*)
    ln_1, ln_2                           input_layernorm, post_attention_layernorm (Llama, Qwen3)
                                         attention_layernorm, feedforward_layernorm (Apertus)
    attn.c_attn   rows [q | k | v]       self_attn.q_proj, k_proj, v_proj: its three row blocks
    attn.c_proj                          self_attn.o_proj
    attn.q_norm, attn.k_norm             self_attn.q_norm, k_norm (Qwen3, Apertus: RMSNorm over a head)
    mlp.c_fc, c_fc2, c_proj              mlp.gate_proj, up_proj, down_proj   (SwiGLU: Llama, Qwen3)
    mlp.c_fc, c_proj                     mlp.up_proj, down_proj              (ReLU²: Apertus)
    wte, ln_f, lm_head                   model.embed_tokens, model.norm, lm_head   (without our padding rows;
                                                                                    no lm_head when tied)

One epsilon serves every norm, ours (layer_norm_eps: the block norms, the final norm, QK-norm) and
theirs (rms_norm_eps), and all three normalise queries and keys before RoPE, as ours does.

The rotary layout needs no permutation: ours turns channel i with channel i + hs/2 ("rotate half"),
and so does transformers' Llama (rotate_half, with cos and sin repeated over both halves). Meta's
original checkpoints pair neighbouring channels instead, but transformers' conversion script
permutes their q and k rows into the rotate-half layout, so every transformers folder is in ours
already (tests: the logits agree, and the neighbouring-pairs layout gives other logits).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from basics import UserError

from .config import ConfigError, GPT2Config


@dataclass(frozen=True)
class Family:
    """One class of the Llama family: what of ours it holds, its names, and what its config class
    assumes where a config.json says nothing (read back exactly as transformers reads it)."""

    name: str  # in messages: "Llama"
    model_type: str  # config.json's model_type
    hf_class: str  # its ...ForCausalLM
    hf_classifier: str | None  # its ...ForSequenceClassification; None: transformers has none
    mlp: str  # our MLP it holds: swiglu or relu2
    hidden_act: str  # the activation its config.json names for that MLP (transformers' ACT2FN)
    qk_norm: bool
    block_names: dict  # ours (in decoder.h.N.) -> theirs (in model.layers.N.); c_attn is split apart (QKV)
    defaults: dict  # its config class's rms_norm_eps, hidden_act, head_dim, rope_theta and RoPE settings
    extra: dict  # what its config.json says besides the settings all three share

    @property
    def ours_in_block(self) -> dict:
        return {theirs: ours for ours, theirs in self.block_names.items()}


_NORMS = {"ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight"}
_ATTENTION = {"attn.c_proj.weight": "self_attn.o_proj.weight"}
_QK_NORM = {"attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight"}
_SWIGLU = {"mlp.c_fc.weight": "mlp.gate_proj.weight", "mlp.c_fc2.weight": "mlp.up_proj.weight",
           "mlp.c_proj.weight": "mlp.down_proj.weight"}  # fmt: skip
_DEFAULT_ROPE = {"rope_type": "default"}
LLAMA = Family(
    name="Llama", model_type="llama", hf_class="LlamaForCausalLM", hf_classifier="LlamaForSequenceClassification",
    mlp="swiglu", hidden_act="silu", qk_norm=False,
    block_names=_NORMS | _ATTENTION | _SWIGLU,
    defaults={"rms_norm_eps": 1e-6, "hidden_act": "silu", "head_dim": None, "rope_theta": 10000.0,
              "rope": _DEFAULT_ROPE},
    extra={"mlp_bias": False},
)  # fmt: skip
# Qwen3Config's head_dim is 128 whatever the width, and its sliding window is off unless switched on.
QWEN3 = Family(
    name="Qwen3", model_type="qwen3", hf_class="Qwen3ForCausalLM", hf_classifier="Qwen3ForSequenceClassification",
    mlp="swiglu", hidden_act="silu", qk_norm=True,
    block_names=_NORMS | _ATTENTION | _QK_NORM | _SWIGLU,
    defaults={"rms_norm_eps": 1e-6, "hidden_act": "silu", "head_dim": 128, "rope_theta": 10000.0, "rope": _DEFAULT_ROPE,
              "use_sliding_window": False},
    extra={"use_sliding_window": False, "sliding_window": None},
)  # fmt: skip
# ApertusConfig's RoPE is llama3-scaled (base 12e6) and its activation xielu unless config.json says otherwise.
APERTUS = Family(
    name="Apertus", model_type="apertus", hf_class="ApertusForCausalLM", hf_classifier=None,
    mlp="relu2", hidden_act="relu2", qk_norm=True,
    block_names={"ln_1.weight": "attention_layernorm.weight", "ln_2.weight": "feedforward_layernorm.weight"}
    | _ATTENTION | _QK_NORM | {"mlp.c_fc.weight": "mlp.up_proj.weight", "mlp.c_proj.weight": "mlp.down_proj.weight"},
    defaults={"rms_norm_eps": 1e-5, "hidden_act": "xielu", "head_dim": None, "rope_theta": 12e6,
              "rope": {"rope_type": "llama3", "factor": 8.0}},
    extra={},
)  # fmt: skip
FAMILIES = {family.model_type: family for family in (LLAMA, QWEN3, APERTUS)}
QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")  # c_attn's row blocks
OUTER_NAMES = {"wte.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight",
               "lm_head.weight": "lm_head.weight"}  # fmt: skip
TIED_BY_DEFAULT = False  # tie_word_embeddings of all three config classes, where a config.json leaves it out
_OURS_OUTSIDE = {theirs: ours for ours, theirs in OUTER_NAMES.items()}
MLP_TEXT = {"swiglu": "a SwiGLU MLP, which gates with silu", "relu2": "a ReLU² MLP: relu(x)², ACT2FN's relu2"}


def departures(config: GPT2Config, family: Family) -> list[str]:
    """What a model of this config has that the family's shape has not (empty: it is that shape)."""
    options = [("LayerNorm", config.norm != "rmsnorm"), (f"a {config.mlp} MLP", config.mlp != family.mlp),
               ("learned positions", not config.rope), ("biases", config.bias),
               ("QK-norm" if config.qk_norm else "no QK-norm", config.qk_norm != family.qk_norm)]
    return [name for name, taken in options if taken]


def family_of(config: GPT2Config) -> Family | None:
    """The class of the family that holds a model of this config; None: none does."""
    return next((family for family in FAMILIES.values() if not departures(config, family)), None)


# ---- config.json --------------------------------------------------------------------------------


def config_json(config: GPT2Config, family: Family, eot: int | None, dtype: torch.dtype) -> dict:
    """config.json of the family's class of our config's shape (eot: the bos and eos id).
    RoPE's base is written twice: transformers 5 reads rope_parameters, transformers 4 rope_theta; a
    class whose config scales RoPE by default (Apertus) is told "default" in rope_scaling too, where
    transformers 4 looked. The family drops out attention weights only (attention_dropout): a dropout
    on the embeddings and residual branches, a training setting that changes no weight, is not kept."""
    rope = {"rope_type": "default", "rope_theta": config.rope_base}
    scaled = {"rope_scaling": dict(rope)} if family.defaults["rope"]["rope_type"] != "default" else {}
    return {
        "architectures": [family.hf_class], "model_type": family.model_type, "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd, "intermediate_size": config.mlp_size, "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head, "num_key_value_heads": config.kv_heads, "head_dim": config.head_size,
        "max_position_embeddings": config.block_size, "hidden_act": family.hidden_act,
        "rms_norm_eps": config.layer_norm_eps, "rope_theta": config.rope_base, "rope_parameters": rope, **scaled,
        "attention_bias": False, **family.extra, "attention_dropout": config.attn_dropout_prob,
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": 0.02, "bos_token_id": eot,
        "eos_token_id": eot, "pad_token_id": None, "dtype": str(dtype).removeprefix("torch."),
    }  # fmt: skip


def config_to_ours(hf: dict, family: Family) -> GPT2Config:
    """The GPT2Config of a config.json of the family's class; a ConfigError says what ours cannot be."""
    names = {"vocab_size": "vocab_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
             "n_embd": "hidden_size", "block_size": "max_position_embeddings", "n_inner": "intermediate_size"}
    bad = [theirs for theirs in names.values() if type(hf.get(theirs)) is not int]
    if bad:
        raise ConfigError(f"its config.json lacks an integer {', '.join(bad)}")
    shape = {ours: hf[theirs] for ours, theirs in names.items()}
    problem = _unrepresentable(hf, family, shape["n_embd"], shape["n_head"])
    if problem:
        raise ConfigError(problem)
    kv_heads = hf.get("num_key_value_heads") or shape["n_head"]
    config = GPT2Config(
        **shape, n_kv_head=None if kv_heads == shape["n_head"] else kv_heads, norm="rmsnorm", mlp=family.mlp,
        qk_norm=family.qk_norm, rope=True, bias=False, rope_base=float(_rope_theta(hf, family)),
        layer_norm_eps=hf.get("rms_norm_eps", family.defaults["rms_norm_eps"]),
        tie_embeddings=hf.get("tie_word_embeddings", TIED_BY_DEFAULT),
        dropout=0.0, attn_dropout=hf.get("attention_dropout") or None,  # attention weights are all it drops
    )  # fmt: skip
    # An MLP of the width ours picks by default keeps n_inner None, so an export reads back as the same config.
    plain = replace(config, n_inner=None)
    return plain if plain.mlp_size == config.n_inner else config


def _rope(hf: dict, family: Family) -> dict:
    """The RoPE settings: rope_scaling (transformers 4's name, which 5 still lets replace the others),
    else rope_parameters (5), else the class's own."""
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or family.defaults["rope"]
    return rope if isinstance(rope, dict) else {"rope_type": repr(rope)}


def _rope_theta(hf: dict, family: Family):
    """RoPE's base: in the RoPE settings (transformers 5), else beside them (4), else the class's default."""
    return _rope(hf, family).get("rope_theta", hf.get("rope_theta", family.defaults["rope_theta"]))


def _unrepresentable(hf: dict, family: Family, width: int, heads: int) -> str | None:
    """Why a config.json of the family's class is no model this toolkit can build, in one line; None when it is one."""
    kinds = {"num_key_value_heads": (int, type(None)), "rms_norm_eps": (int, float),
             "attention_dropout": (int, float), "tie_word_embeddings": (bool,)}
    wrong = next((name for name, allowed in kinds.items() if name in hf and type(hf[name]) not in allowed), None)
    if wrong:
        return f"its config.json's {wrong} is {hf[wrong]!r}, not of the type {family.name}'s config gives it"
    theta = _rope_theta(hf, family)
    if type(theta) not in (int, float):
        return f"its rope_theta is {theta!r}, not a number"
    rope, act, head_dim = _rope(hf, family), hf.get("hidden_act", family.defaults["hidden_act"]), \
        hf.get("head_dim", family.defaults["head_dim"])  # fmt: skip
    kind = rope.get("rope_type", rope.get("type", "default"))
    if act != family.hidden_act:
        return f"its hidden_act is {act!r}, and this toolkit's {family.name} shape has {MLP_TEXT[family.mlp]}"
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        return f"it has biases (attention_bias or mlp_bias), and this toolkit's {family.name} shape has none"
    if head_dim not in (None, width // heads):
        return (f"its head_dim is {head_dim}, not hidden_size / num_attention_heads ({width // heads}), "
                f"the only head size this toolkit's attention has")
    if kind != "default":
        return f"its RoPE is scaled ({kind!r} in rope_parameters or rope_scaling), and this toolkit's RoPE is not"
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        return "its RoPE turns only part of each head (partial_rotary_factor), and this toolkit's turns all of it"
    # A sliding_window counts unless use_sliding_window says it is off (Qwen3's default; Llama's and
    # Apertus's configs have no such switch, and a window they are given is taken as meant).
    sliding = hf.get("use_sliding_window", family.defaults.get("use_sliding_window", True))
    if hf.get("sliding_window") is not None and sliding:
        return (f"its attention sees a sliding window of {hf['sliding_window']} tokens, and this toolkit's "
                f"sees the whole context")
    return None


# ---- weights ------------------------------------------------------------------------------------


def state_to_theirs(state: dict, config: GPT2Config, family: Family) -> dict:
    """Our state dict -> the family's names: c_attn split into q, k, v; no padding rows; no head when tied."""
    hs, kv_rows = config.head_size, config.kv_heads * config.head_size
    hf = {}
    for key, value in state.items():
        if key == "lm_head.weight" and config.tie_embeddings:
            continue  # the same tensor as wte; transformers ties it again on load
        if key in ("wte.weight", "lm_head.weight"):
            value = value[: config.vocab_size]
        if key in OUTER_NAMES:
            hf[OUTER_NAMES[key]] = value.contiguous()
            continue
        layer, _, name = key.removeprefix("decoder.h.").partition(".")
        prefix = f"model.layers.{layer}."
        if name == "attn.c_attn.weight":
            # clone: safetensors refuses tensors that share memory, as slices of one matrix do
            blocks = value.split((config.n_head * hs, kv_rows, kv_rows))
            hf.update((prefix + part, block.clone()) for part, block in zip(QKV, blocks))
        else:
            hf[prefix + family.block_names[name]] = value.contiguous()
    return hf


def state_to_ours(state: dict, family: Family, tied: bool) -> dict:
    """The family's names -> ours (the inverse of state_to_theirs). A name it does not know keeps its
    own, so the loader reports it as unexpected, and the weight ours needs as missing."""
    ours, qkv, in_block_names = {}, {}, family.ours_in_block
    for key, value in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a buffer older transformers saved; RoPE makes its own angles
        layer, _, name = key.removeprefix("model.layers.").partition(".")
        in_block = key.startswith("model.layers.") and layer.isdigit()
        if in_block and name in QKV:
            qkv.setdefault(layer, {})[name] = value
        elif in_block and name in in_block_names:
            ours[f"decoder.h.{layer}.{in_block_names[name]}"] = value
        else:
            ours[_OURS_OUTSIDE.get(key, key)] = value
    for layer, parts in qkv.items():
        if len(parts) == 3 and len({t.shape[1:] for t in parts.values()}) == 1:
            ours[f"decoder.h.{layer}.attn.c_attn.weight"] = torch.cat([parts[name] for name in QKV])  # [q | k | v]
        else:
            ours.update((f"model.layers.{layer}.{name}", t) for name, t in parts.items())
    if tied:
        head, embedding = ours.pop("lm_head.weight", None), ours.get("wte.weight")
        if head is not None and embedding is not None and not torch.equal(head, embedding):
            raise UserError("its lm_head.weight is not its token embedding, though its config.json ties them "
                            "(tie_word_embeddings)")
        if embedding is not None:
            ours["lm_head.weight"] = embedding
    return ours
