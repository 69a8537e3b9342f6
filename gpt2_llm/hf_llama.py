"""Llama's shape in transformers' folders: LlamaForCausalLM's config.json and weight names, to and from ours.

A model with RMSNorm, a SwiGLU MLP, rotary positions and no biases (any number of key/value heads,
its head tied to the embedding or not) is Llama's shape. Its weights map one to one (export.py
calls these functions; it chooses between GPT-2's class and this one):

    ours (decoder.h.N.*)                 transformers' Llama (model.layers.N.*)
    ln_1, ln_2                           input_layernorm, post_attention_layernorm
    attn.c_attn   rows [q | k | v]       self_attn.q_proj, k_proj, v_proj: its three row blocks
    attn.c_proj                          self_attn.o_proj
    mlp.c_fc, c_fc2, c_proj              mlp.gate_proj, up_proj, down_proj
    wte, ln_f, lm_head                   model.embed_tokens, model.norm, lm_head   (without our padding rows;
                                                                                    no lm_head when tied)

The rotary layout needs no permutation: ours turns channel i with channel i + hs/2 ("rotate half"),
and so does transformers' Llama (rotate_half, with cos and sin repeated over both halves). Meta's
original checkpoints pair neighbouring channels instead, but transformers' conversion script
permutes their q and k rows into the rotate-half layout, so every transformers folder is in ours
already (tests: the logits agree, and the neighbouring-pairs layout gives other logits).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from basics import UserError

from .config import ConfigError, GPT2Config

# Our names inside a block (decoder.h.N.) -> Llama's (model.layers.N.); c_attn is split apart (QKV).
BLOCK_NAMES = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.c_fc.weight": "mlp.gate_proj.weight",
    "mlp.c_fc2.weight": "mlp.up_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}
QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")  # c_attn's row blocks
OUTER_NAMES = {"wte.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight",
               "lm_head.weight": "lm_head.weight"}  # fmt: skip
TIED_BY_DEFAULT = False  # LlamaConfig's tie_word_embeddings, where a config.json leaves it out
_OURS_IN_BLOCK = {theirs: ours for ours, theirs in BLOCK_NAMES.items()}
_OURS_OUTSIDE = {theirs: ours for ours, theirs in OUTER_NAMES.items()}


def llama_departures(config: GPT2Config) -> list[str]:
    """What a model of this config has that Llama's shape has not (empty: it is Llama's shape)."""
    options = [("LayerNorm", config.norm != "rmsnorm"), (f"a {config.mlp} MLP", config.mlp != "swiglu"),
               ("learned positions", not config.rope), ("biases", config.bias), ("QK-norm", config.qk_norm)]
    return [name for name, taken in options if taken]


# ---- config.json --------------------------------------------------------------------------------


def llama_config_json(config: GPT2Config, eot: int | None, dtype: torch.dtype) -> dict:
    """config.json of a LlamaForCausalLM of our config's shape (eot: the bos and eos id).
    RoPE's base is written twice: transformers 5 reads rope_parameters, transformers 4 rope_theta.
    Llama drops out attention weights only (attention_dropout): a dropout on the embeddings and
    residual branches, a training setting that changes no weight, is not kept."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd, "intermediate_size": config.mlp_size, "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head, "num_key_value_heads": config.kv_heads, "head_dim": config.head_size,
        "max_position_embeddings": config.block_size, "hidden_act": "silu", "rms_norm_eps": config.layer_norm_eps,
        "rope_theta": config.rope_base, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": False, "mlp_bias": False, "attention_dropout": config.attn_dropout_prob,
        "tie_word_embeddings": config.tie_embeddings, "initializer_range": 0.02, "bos_token_id": eot,
        "eos_token_id": eot, "dtype": str(dtype).removeprefix("torch."),
    }  # fmt: skip


def llama_config_to_ours(hf: dict) -> GPT2Config:
    """The GPT2Config of a transformers Llama config.json; a ConfigError says what ours cannot be."""
    names = {"vocab_size": "vocab_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
             "n_embd": "hidden_size", "block_size": "max_position_embeddings", "n_inner": "intermediate_size"}
    bad = [theirs for theirs in names.values() if type(hf.get(theirs)) is not int]
    if bad:
        raise ConfigError(f"its config.json lacks an integer {', '.join(bad)}")
    shape = {ours: hf[theirs] for ours, theirs in names.items()}
    problem = _unrepresentable(hf, shape["n_embd"], shape["n_head"])
    if problem:
        raise ConfigError(problem)
    kv_heads = hf.get("num_key_value_heads") or shape["n_head"]
    config = GPT2Config(
        **shape, n_kv_head=None if kv_heads == shape["n_head"] else kv_heads, norm="rmsnorm", mlp="swiglu",
        rope=True, bias=False, rope_base=float(_rope_theta(hf)),
        layer_norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=hf.get("tie_word_embeddings", TIED_BY_DEFAULT),
        dropout=0.0, attn_dropout=hf.get("attention_dropout") or None,  # Llama drops attention weights only
    )  # fmt: skip
    # An MLP of the width ours picks by default keeps n_inner None, so an export reads back as the same config.
    plain = replace(config, n_inner=None)
    return plain if plain.mlp_size == config.n_inner else config


def _rope(hf: dict) -> dict:
    """The RoPE settings: rope_parameters (transformers 5), else rope_scaling (4), else none."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    return rope if isinstance(rope, dict) else {"rope_type": repr(rope)}


def _rope_theta(hf: dict):
    """RoPE's base: in the RoPE settings (transformers 5), else beside them (4), else Llama's default."""
    return _rope(hf).get("rope_theta", hf.get("rope_theta", 10000.0))


def _unrepresentable(hf: dict, width: int, heads: int) -> str | None:
    """Why a Llama config.json is no model this toolkit can build, in one line; None when it is one."""
    kinds = {"num_key_value_heads": (int, type(None)), "rms_norm_eps": (int, float),
             "attention_dropout": (int, float), "tie_word_embeddings": (bool,)}
    wrong = next((name for name, allowed in kinds.items() if name in hf and type(hf[name]) not in allowed), None)
    if wrong:
        return f"its config.json's {wrong} is {hf[wrong]!r}, not of the type Llama's config gives it"
    if type(_rope_theta(hf)) not in (int, float):
        return f"its rope_theta is {_rope_theta(hf)!r}, not a number"
    rope = _rope(hf)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if hf.get("hidden_act", "silu") != "silu":
        return f"its hidden_act is {hf['hidden_act']!r}; the SwiGLU MLP here gates with silu, as Llama's does"
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        return "it has biases (attention_bias or mlp_bias), and this toolkit's Llama shape has none"
    if hf.get("head_dim") not in (None, width // heads):
        return (f"its head_dim is {hf['head_dim']}, not hidden_size / num_attention_heads ({width // heads}), "
                f"the only head size this toolkit's attention has")
    if kind != "default":
        return f"its RoPE is scaled ({kind!r} in rope_parameters or rope_scaling), and this toolkit's RoPE is not"
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        return "its RoPE turns only part of each head (partial_rotary_factor), and this toolkit's turns all of it"
    if hf.get("sliding_window") is not None and hf.get("use_sliding_window", True):
        return (f"its attention sees a sliding window of {hf['sliding_window']} tokens, and this toolkit's "
                f"sees the whole context")
    return None


# ---- weights ------------------------------------------------------------------------------------


def ours_state_to_llama(state: dict, config: GPT2Config) -> dict:
    """Our state dict -> LlamaForCausalLM's names: c_attn split into q, k, v; no padding rows; no head when tied."""
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
            hf[prefix + BLOCK_NAMES[name]] = value.contiguous()
    return hf


def llama_state_to_ours(state: dict, tied: bool) -> dict:
    """LlamaForCausalLM's names -> ours (the inverse of ours_state_to_llama). A name it does not know
    keeps its own, so the loader reports it as unexpected, and the weight ours needs as missing."""
    ours, qkv = {}, {}
    for key, value in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a buffer older transformers saved; RoPE makes its own angles
        layer, _, name = key.removeprefix("model.layers.").partition(".")
        in_block = key.startswith("model.layers.") and layer.isdigit()
        if in_block and name in QKV:
            qkv.setdefault(layer, {})[name] = value
        elif in_block and name in _OURS_IN_BLOCK:
            ours[f"decoder.h.{layer}.{_OURS_IN_BLOCK[name]}"] = value
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
