"""To and from transformers' folders: a model and its tokenizer, in the files save_pretrained writes.

Four shapes have a class in transformers: GPT-2's own (GPT2LMHeadModel, model_type gpt2), and the
Llama family's, RMSNorm, RoPE and no biases with (hf_llama.py maps them)
    a SwiGLU MLP                   LlamaForCausalLM (llama)
    a SwiGLU MLP and QK-norm       Qwen3ForCausalLM (qwen3)
    a ReLU² MLP and QK-norm        ApertusForCausalLM (apertus)
Any other shape is refused in one line (export_problem).

A classifier (classifier.py: the language model with a score layer, read at the last token that is
not the pad token) exports as the ...ForSequenceClassification class of its shape (GPT-2, Llama or
Qwen3: Apertus has none): the language model without its head, plus score.weight; config.json names
the classes (id2label, label2id) and the pad token (pad_token_id), which transformers pools at as we
do. Such a folder, ours or one transformers wrote, loads back as a classifier (classifier_part).

    read   config.json                                        -> GPT2Config      (read_config)
           model.safetensors | pytorch_model.bin               -> our state dict  (read_hf_weights)
           tokenizer.json | vocab.json + merges.txt | encoder.json + vocab.bpe -> BPE  (read_tokenizer)
           chat_template.jinja | tokenizer_config.json         -> chat template   (read_chat_template)
    write  export_folder(model, tokenizer, out_dir): config.json, model.safetensors, generation_config.json (not
           for a classifier),
           tokenizer.json, tokenizer_config.json, special_tokens_map.json (+ vocab.json, merges.txt)

Weights: transformers' GPT-2 has our parameter names (GPT-2's own), but its blocks are
transformer.h.N (ours decoder.h.N), its Conv1D layers store their matrices transposed, and its
embedding has no padding rows.

Tokenizers: transformers' byte-level BPE files show each token's bytes in GPT-2's byte-to-character
alphabet (bpe.gpt2_bytes_to_unicode) and list the merges in rank order. Ours ranks a token by its id,
so a tokenizer converts exactly when its merged tokens' ids follow the merge order; anything our BPE
cannot reproduce (a normalizer, a prefix space, added tokens that are not special, ...) is refused
in one line. All of it is plain JSON: neither transformers nor tokenizers is imported here.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import bpe
from basics import UserError
from bpe import BPE, ENDOFTEXT, GPT2_PATTERN, PATTERNS, TokenizerError

from . import hf_llama
from .checkpoint import CheckpointError
from .config import ConfigError, GPT2Config
from .gpt2 import GPT2

if TYPE_CHECKING:
    from .classifier import GPT2Classifier

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference
# What a folder's tokenizer may be made of, in order of preference: tokenizer.json carries the
# pre-tokenizer and the special tokens; the two older pairs imply GPT-2's pattern.
TOKENIZER_PAIRS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "chat_template.jinja")  # fmt: skip
# The class of each model_type this toolkit reads and writes.
HF_CLASSES = {"gpt2": "GPT2LMHeadModel"} | {kind: family.hf_class for kind, family in hf_llama.FAMILIES.items()}
# The ...ForSequenceClassification class of each model_type that has one (Apertus has none).
HF_CLASSIFIER_CLASSES = {"gpt2": "GPT2ForSequenceClassification"} | {
    kind: family.hf_classifier for kind, family in hf_llama.FAMILIES.items() if family.hf_classifier}
# The Conv1D layers of transformers' GPT-2: (in, out) matrices, where nn.Linear has (out, in).
HF_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


# ---- the model: config.json and the weights ---------------------------------------------------


def read_config(folder: Path) -> tuple[GPT2Config, dict]:
    """Our config of the model in a folder, and its config.json as read; a CheckpointError naming
    the folder says why it cannot be one of ours."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a model folder: it has no config.json")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({type(e).__name__})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path} is not a model config (a JSON object)")
    try:
        return hf_config_to_ours(hf), hf
    except ConfigError as e:
        raise CheckpointError(f"{folder}: {e}") from None


def hf_config_to_ours(hf: dict) -> GPT2Config:
    """The GPT2Config of a transformers GPT-2, Llama, Qwen3 or Apertus config.json; a ConfigError says
    what does not fit."""
    kind = hf.get("model_type", "gpt2")
    if kind in hf_llama.FAMILIES:
        return hf_llama.config_to_ours(hf, hf_llama.FAMILIES[kind])
    if kind != "gpt2":
        raise ConfigError(f"its config.json is of a {kind!r} model; this toolkit reads GPT-2, Llama, Qwen3 and "
                          f"Apertus (model_type 'gpt2', 'llama', 'qwen3' or 'apertus')")
    return gpt2_config_to_ours(hf)


def gpt2_config_to_ours(hf: dict) -> GPT2Config:
    """The GPT2Config of a transformers GPT-2 config.json; a ConfigError says what does not fit."""
    names = {"vocab_size": "vocab_size", "n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd",
             "block_size": "n_positions"}  # ours: theirs
    bad = [theirs for theirs in names.values() if type(hf.get(theirs)) is not int]
    if bad:
        raise ConfigError(f"its config.json lacks an integer {', '.join(bad)}")
    shape = {ours: hf[theirs] for ours, theirs in names.items()}
    if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ConfigError(f"its activation_function is {hf['activation_function']!r}; GPT-2's is gelu_new")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise ConfigError("its attention is scaled otherwise than by 1/sqrt(head size), GPT-2's only scaling")
    if hf.get("tie_word_embeddings", True) is not True:
        raise ConfigError("its output head is not tied to the token embedding (tie_word_embeddings), as GPT-2's is")
    numbers = {"n_inner": (int, type(None)), "resid_pdrop": (int, float), "attn_pdrop": (int, float),
               "layer_norm_epsilon": (int, float)}  # fmt: skip
    for name, kinds in numbers.items():
        if name in hf and (type(hf[name]) not in kinds):
            raise ConfigError(f"its config.json's {name} is {hf[name]!r}, not a number")
    return GPT2Config(**shape, n_inner=hf.get("n_inner"), dropout=hf.get("resid_pdrop", 0.0),
                      attn_dropout=hf.get("attn_pdrop"), layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def weights_file(folder: Path) -> Path | None:
    """The weights a folder holds: model.safetensors, else pytorch_model.bin (None: neither)."""
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def read_hf_weights(folder: Path, hf: dict) -> dict:
    """The state dict of a transformers folder whose config.json is `hf`, in our names (hf_state_to_ours
    for GPT-2, hf_llama.state_to_ours for the Llama family).
    pytorch_model.bin is read with weights_only=True: a pickle that would run code is refused."""
    path = weights_file(folder)
    if path is None:
        raise CheckpointError(f"{folder} has no weights: no model.safetensors or pytorch_model.bin in it")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds Python objects besides tensors (refused; nothing in it was run)") from None
    except Exception as e:  # noqa: BLE001 (damaged bytes fail in arbitrary ways, as in checkpoint.py)
        raise CheckpointError(f"{path} is not readable: truncated or corrupt ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path} is not a dict of tensors")
    try:
        family = hf_llama.FAMILIES.get(hf.get("model_type"))
        if family is not None:
            return hf_llama.state_to_ours(state, family, hf.get("tie_word_embeddings", hf_llama.TIED_BY_DEFAULT))
        return hf_state_to_ours({k.removeprefix("transformer."): v for k, v in state.items()})
    except UserError as e:
        raise CheckpointError(f"{path}: {e}") from None


def hf_state_to_ours(state: dict) -> dict:
    """transformers GPT-2 names (without "transformer.") -> ours: h.* lives in the decoder, Conv1D
    matrices are transposed, and the head is the token embedding (a head of its own is refused)."""
    ours = {}
    for key, value in state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old checkpoints; SDPA makes the mask itself
        if key.endswith(HF_CONV1D) and value.dim() == 2:
            value = value.t()
        ours["decoder." + key if key.startswith("h.") else key] = value
    head, embedding = ours.pop("lm_head.weight", None), ours.get("wte.weight")
    if head is not None and embedding is not None and not torch.equal(head, embedding):
        raise UserError("its lm_head.weight is not its token embedding (an untied head), which this GPT-2 cannot hold")
    if embedding is not None:
        ours["lm_head.weight"] = embedding  # tied: save_pretrained leaves the head out
    return ours


def ours_state_to_hf(state: dict, vocab_size: int) -> dict:
    """Our state dict -> transformers' names and layouts (the inverse of hf_state_to_ours)."""
    hf = {}
    for key, value in state.items():
        if key == "lm_head.weight":
            continue  # the same tensor as wte; transformers ties it again on load
        if key == "wte.weight":
            value = value[:vocab_size]  # without our padding rows
        if key.endswith(HF_CONV1D):
            value = value.t()
        hf["transformer." + key.removeprefix("decoder.")] = value.contiguous()
    return hf


def model_from_hf(source, config: GPT2Config | None = None) -> GPT2:
    """GPT2.from_hf: a folder (config.json and weights; GPT-2 or the Llama family) or a GPT2LMHeadModel
    state dict -> our model."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        read, hf = read_config(folder)
        config = config or read
        state = read_hf_weights(folder, hf)
    else:
        state = hf_state_to_ours({k.removeprefix("transformer."): v for k, v in source.items()})
        config = config or config_from_hf_shapes(state)
    model = GPT2(config)
    model.load_state_dict(state)
    return model.eval()


def config_from_hf_shapes(state: dict) -> GPT2Config:
    """The shape of a bare state dict (our names), taking the head size to be 64 as in every published GPT-2."""
    vocab_size, n_embd = state["wte.weight"].shape
    n_layer = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("decoder.h."))
    n_inner = state["decoder.h.0.mlp.c_fc.weight"].shape[0]  # (out, in) once transposed
    return GPT2Config(
        vocab_size=vocab_size, n_layer=n_layer, n_head=n_embd // 64, n_embd=n_embd,
        block_size=state["wpe.weight"].shape[0], n_inner=None if n_inner == 4 * n_embd else n_inner,
    )  # fmt: skip


def export_type(config: GPT2Config) -> str | None:
    """The model_type a model of this shape exports as: "gpt2" for GPT-2's own shape; for RMSNorm,
    RoPE and no biases (any key/value heads, tied or not) "llama" with SwiGLU, "qwen3" with SwiGLU
    and QK-norm, "apertus" with ReLU² and QK-norm; None: none of them."""
    if not config.gpt2_departures():
        return "gpt2"
    family = hf_llama.family_of(config)
    return None if family is None else family.model_type


def export_problem(config: GPT2Config, classifier: bool = False) -> str | None:
    """Why no transformers class this toolkit writes can hold a model (with classifier: a classifier)
    of this shape; None when one can."""
    kind = export_type(config)
    if kind is not None and classifier and kind not in HF_CLASSIFIER_CLASSES:
        name = hf_llama.FAMILIES[kind].name
        return (f"transformers has no classifier class for its shape ({name}'s: there is no "
                f"{name}ForSequenceClassification); a classifier exports in GPT-2's, Llama's or Qwen3's shape")
    if kind is not None:
        return None
    lacks = [("GPT-2", config.gpt2_departures())]
    lacks += [(family.name, hf_llama.departures(config, family)) for family in hf_llama.FAMILIES.values()]
    reasons = [f"{name}'s (it has {', '.join(has)})" for name, has in lacks]
    return f"transformers has no class for its shape: it is not {', '.join(reasons[:-1])} nor {reasons[-1]}"


def hf_config(config: GPT2Config, tokenizer: BPE | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """config.json of the class a model of our config's shape exports as (the tokenizer gives bos/eos ids)."""
    eot = tokenizer.special_tokens.get(ENDOFTEXT) if tokenizer is not None else None
    family = hf_llama.FAMILIES.get(export_type(config))
    if family is not None:
        return hf_llama.config_json(config, family, eot, dtype)
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": config.n_inner,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.attn_dropout_prob,
        "layer_norm_epsilon": config.layer_norm_eps, "initializer_range": 0.02, "scale_attn_weights": True,
        "tie_word_embeddings": True, "bos_token_id": eot, "eos_token_id": eot, "dtype": str(dtype).removeprefix("torch."),
    }  # fmt: skip


def classifier_config(hf: dict, names: list[str], pad_id: int) -> dict:
    """A language model's config.json made its ...ForSequenceClassification's: the classes by id, and
    the pad token (transformers reads each text's logits at its last token that is not the pad token,
    as GPT2Classifier does)."""
    return hf | {"architectures": [HF_CLASSIFIER_CLASSES[hf["model_type"]]], "num_labels": len(names),
                 "id2label": {str(i): name for i, name in enumerate(names)},
                 "label2id": {name: i for i, name in enumerate(names)}, "pad_token_id": pad_id}  # fmt: skip


def split_classifier(model: GPT2 | GPT2Classifier) -> tuple[GPT2, GPT2Classifier | None]:
    """(the language model, the classifier or None): a GPT2Classifier (classifier.py) holds its
    language model as .gpt, and its class names as .names."""
    return (model.gpt, model) if getattr(model, "names", None) is not None else (model, None)


def hf_class_names(model: GPT2 | GPT2Classifier) -> tuple[str, str]:
    """(the transformers class an export of the model (a GPT2 or a GPT2Classifier) is, the Auto class that loads it)."""
    gpt, classifier = split_classifier(model)
    kind = export_type(gpt.config)
    if classifier is not None:
        return HF_CLASSIFIER_CLASSES[kind], "AutoModelForSequenceClassification"
    return HF_CLASSES[kind], "AutoModelForCausalLM"


def hf_state(model: GPT2) -> dict:
    """The model's weights in the names and layouts of the transformers class of its shape."""
    family = hf_llama.FAMILIES.get(export_type(model.config))
    if family is not None:
        return hf_llama.state_to_theirs(model.state_dict(), model.config, family)
    return ours_state_to_hf(model.state_dict(), model.config.vocab_size)


def write_model(model: GPT2 | GPT2Classifier, folder: str | os.PathLike, tokenizer: BPE | None = None) -> None:
    """Write config.json, model.safetensors and generation_config.json into `folder` (GPT2.save_hf):
    a GPT2LMHeadModel for GPT-2's shape, else the Llama family's class of its shape (export_type).
    A GPT2Classifier is written as the ...ForSequenceClassification of its shape: the language model
    without its head, score.weight, and no generation_config.json (it generates nothing)."""
    from safetensors.torch import save_file

    gpt, classifier = split_classifier(model)
    problem = export_problem(gpt.config, classifier is not None)
    if problem:
        raise UserError(f"cannot export the model: {problem}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state, config = hf_state(gpt), hf_config(gpt.config, tokenizer, gpt.wte.weight.dtype)
    if classifier is not None:
        state.pop("lm_head.weight", None)  # an untied head: transformers' classifier has none
        state["score.weight"] = classifier.score.weight.detach().contiguous()
        config = classifier_config(config, classifier.names, classifier.pad_id)
    _write_json(folder / "config.json", config)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    if classifier is None:
        eot = tokenizer.special_tokens.get(ENDOFTEXT) if tokenizer is not None else None
        ids = {"bos_token_id": eot, "eos_token_id": eot} if eot is not None else {}
        _write_json(folder / "generation_config.json", ids)


def classifier_part(folder: Path, hf: dict, config: GPT2Config, state: dict) -> tuple[GPT2Config, dict | None]:
    """A ...ForSequenceClassification folder's classifier, as a checkpoint's "classifier" entry holds it
    ({"names": id2label's names by id, "pad_id": pad_token_id, "score": score.weight, taken out of
    `state`}), and the config to build its language model with; (config, None) for a language model."""
    architectures = hf.get("architectures")
    if not (isinstance(architectures, list) and any(str(a).endswith("ForSequenceClassification") for a in architectures)):
        return config, None
    score, pad_id = state.pop("score.weight", None), hf.get("pad_token_id")
    if score is None or score.dim() != 2 or score.shape[0] < 2:
        raise CheckpointError(f"{folder}: its config.json names {architectures[0]}, but its weights have no "
                              f"score.weight of two or more classes")  # fmt: skip
    if hf.get("problem_type") not in (None, "single_label_classification"):
        raise CheckpointError(f"{folder}: its problem_type is {hf['problem_type']!r}; this toolkit's classifier picks "
                              f"one class per text (single_label_classification)")
    if type(pad_id) is not int or not 0 <= pad_id < config.vocab_size:
        raise CheckpointError(f"{folder}: its config.json has no pad_token_id (a token id), which a classifier needs to "
                              f"find each text's last token: set it, e.g. to the id of {ENDOFTEXT}")
    names = _label_names(hf.get("id2label"), score.shape[0], folder)
    if "lm_head.weight" not in state and "wte.weight" in state and not config.tie_embeddings:
        # transformers' classifier has no language-model head, and our GPT2 needs one: tied to the
        # embedding, it costs no memory. Nothing a classifier computes reads it (the score reads the
        # hidden states), so its logits are the same whatever the head holds.
        config = replace(config, tie_embeddings=True)
        state["lm_head.weight"] = state["wte.weight"]
    return config, {"names": names, "pad_id": pad_id, "score": score}


def _label_names(id2label, count: int, folder: Path) -> list[str]:
    """The class names of a config.json's id2label ({"0": name, ...}), in id order; transformers'
    own names (LABEL_0, ...) when it has none."""
    if id2label is None:
        return [f"LABEL_{i}" for i in range(count)]
    try:
        pairs = sorted((int(i), str(name)) for i, name in id2label.items())
    except (AttributeError, TypeError, ValueError):
        raise CheckpointError(f"{folder}: its config.json's id2label is not an object of id -> class name") from None
    names = [name for _, name in pairs]
    if [i for i, _ in pairs] != list(range(count)) or len(set(names)) < count:
        raise CheckpointError(f"{folder}: its config.json's id2label does not name its {count} classes (the rows of "
                              f"score.weight) once each, by the ids 0 to {count - 1}")
    return names


# ---- tokenizers: reading ----------------------------------------------------------------------

_BYTE_TO_CHAR = bpe.gpt2_bytes_to_unicode()
_CHAR_TO_BYTE = {ch: b for b, ch in _BYTE_TO_CHAR.items()}


def _shown(token: bytes) -> str:
    """Token bytes as transformers' byte-level files show them (b" the" -> "Ġthe")."""
    return "".join(_BYTE_TO_CHAR[b] for b in token)


def read_tokenizer(folder: Path) -> tuple[BPE | None, str | None]:
    """The tokenizer of a model folder and the file(s) it came from; (None, None) when it has none.
    A tokenizer our BPE cannot reproduce exactly is a TokenizerError naming the file."""
    if (folder / "tokenizer.json").is_file():
        return tokenizer_from_json(folder / "tokenizer.json"), "tokenizer.json"
    for vocab, merges in TOKENIZER_PAIRS:
        if (folder / vocab).is_file() and (folder / merges).is_file():
            configs = (_read_json(folder / name, {}) for name in ("tokenizer_config.json", "special_tokens_map.json"))
            specials = _named_specials(*configs)
            return tokenizer_from_vocab_merges(folder / vocab, folder / merges, specials), f"{vocab} + {merges}"
    return None, None


def tokenizer_from_json(path: Path) -> BPE:
    """A tokenizers-library tokenizer.json -> BPE, or a TokenizerError saying what it cannot reproduce."""
    spec = _read_json(path)
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise TokenizerError(f"{path}: not a BPE tokenizer (its model is {_kind(model)}); this toolkit's is byte-level BPE")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("dropout"):
        raise TokenizerError(f"{path}: its BPE marks word pieces or drops merges at random, which this toolkit's BPE cannot reproduce")
    if spec.get("normalizer") is not None:
        raise TokenizerError(f"{path}: it normalizes text ({_kind(spec['normalizer'])}) before splitting it, "
                             f"which this toolkit's BPE cannot reproduce")
    if not _adds_nothing(spec.get("post_processor")):
        raise TokenizerError(f"{path}: its post-processor adds tokens around the text, which this toolkit's BPE cannot reproduce")
    pattern = _pretokenizer_pattern(spec.get("pre_tokenizer"), path)
    specials = {}
    for added in spec.get("added_tokens") or []:
        if not added.get("special"):
            raise TokenizerError(f"{path}: its added token {added.get('content')!r} is not special; this toolkit's "
                                 f"BPE has ordinary tokens made by merges, and special ones")
        specials[added["content"]] = added["id"]
    return _bpe_from_parts(model["vocab"], model.get("merges") or [], specials, pattern, str(path))


def tokenizer_from_vocab_merges(vocab_path: Path, merges_path: Path, specials: set[str]) -> BPE:
    """GPT-2's pair of files (vocab.json + merges.txt, or OpenAI's encoder.json + vocab.bpe) -> BPE,
    with GPT-2's pattern; the named special tokens (and <|endoftext|>) are special when in the vocab."""
    vocab = _read_json(vocab_path)
    try:
        lines = merges_path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{merges_path} is not readable text ({type(e).__name__})") from None
    merges = [line for line in lines if line and not line.startswith("#version")]
    named = {s: vocab[s] for s in specials | {ENDOFTEXT} if isinstance(vocab, dict) and s in vocab}
    return _bpe_from_parts(vocab, merges, named, GPT2_PATTERN, f"{vocab_path} + {merges_path.name}")


def _bpe_from_parts(vocab, merges: list, specials: dict[str, int], pattern: str, where: str) -> BPE:
    """vocab {shown token: id}, merges in rank order ("a b" or ["a", "b"]), special tokens {text: id}
    -> BPE. Our BPE merges the lowest id first, so the ids merges make must grow with the merge order."""
    if not isinstance(vocab, dict) or not all(type(i) is int and i >= 0 for i in vocab.values()):
        raise TokenizerError(f"{where}: the vocabulary is not a JSON object of token -> id")
    if len(set(vocab.values())) < len(vocab):
        raise TokenizerError(f"{where}: two tokens of the vocabulary have the same id")

    def to_bytes(shown) -> bytes:
        if not isinstance(shown, str) or not all(ch in _CHAR_TO_BYTE for ch in shown):
            raise TokenizerError(f"{where}: token {shown!r} is not in GPT-2's byte-level alphabet; this toolkit's "
                                 f"BPE is byte-level")
        return bytes(_CHAR_TO_BYTE[ch] for ch in shown)

    ordinary = {i: to_bytes(s) for s, i in vocab.items() if s not in specials}
    id_of = {token: i for i, token in ordinary.items()}
    parents: dict[int, tuple[int, int]] = {}
    last = -1  # the id the previous merge made
    for rank, merge in enumerate(merges, start=1):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not isinstance(pair, list) or len(pair) != 2:
            raise TokenizerError(f"{where}: merge {rank} is not a pair of tokens: {merge!r}")
        left, right = (to_bytes(part) for part in pair)
        ids = id_of.get(left), id_of.get(right), id_of.get(left + right)
        if None in ids:
            raise TokenizerError(f"{where}: merge {rank} ({' '.join(pair)}) joins tokens that are not in the vocabulary")
        made = ids[2]
        if made in parents or made <= last:
            raise TokenizerError(f"{where}: its token ids do not follow the merge order (merge {rank} makes id {made} "
                                 f"after a merge made id {last}); this toolkit's BPE ranks tokens by id, so it "
                                 f"cannot reproduce this tokenizer")
        parents[made], last = ids[:2], made
    unmade = next((i for i, token in sorted(ordinary.items()) if len(token) > 1 and i not in parents), None)
    if unmade is not None:
        raise TokenizerError(f"{where}: token {_shown(ordinary[unmade])!r} (id {unmade}) is made by no merge and is "
                             f"not special; this toolkit's BPE cannot reproduce that")
    tokens = [ordinary.get(i) for i in range(max(ordinary, default=-1) + 1)]
    try:
        return BPE(tokens, specials, pattern, parents)
    except TokenizerError as e:
        raise TokenizerError(f"{where}: {e}") from None


def _pretokenizer_pattern(pre, path: Path) -> str:
    """The regex of a byte-level pre-tokenizer: GPT-2's (ByteLevel's own), or a Split's followed
    by ByteLevel without its regex (what export writes). Anything else is refused."""
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) \
            and not pre.get("add_prefix_space"):
        return GPT2_PATTERN
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else None
    if isinstance(steps, list) and len(steps) == 2 and all(isinstance(step, dict) for step in steps):
        split, byte_level = steps
        regex_text = split["pattern"].get("Regex") if isinstance(split.get("pattern"), dict) else None
        if (split.get("type") == "Split" and split.get("behavior") == "Isolated" and not split.get("invert")
                and isinstance(regex_text, str) and byte_level.get("type") == "ByteLevel"
                and not byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space")):
            return _pattern_from_onig(regex_text, path)
    raise TokenizerError(f"{path}: its pre-tokenizer ({_kind(pre)}) is not a byte-level regex split with no "
                         f"prefix space, which this toolkit's BPE needs")


def _pattern_from_onig(regex_text: str, path: Path) -> str:
    """A Split regex as Python's `regex` reads it: one of our patterns when it is one as exported."""
    for pattern in PATTERNS.values():
        if onig_pattern(pattern) == regex_text:
            return pattern
    if _POSSESSIVE_INTERVAL.search(regex_text):
        raise TokenizerError(f"{path}: its pre-tokenizer regex has an interval followed by + (such as {{1,3}}+), "
                             f"which Oniguruma repeats and Python's regex makes possessive")
    return regex_text  # BPE compiles it, and says so when it cannot


def _named_specials(*configs: dict) -> set[str]:
    """The special tokens a tokenizer_config.json or special_tokens_map.json names (bos, eos, ...)."""
    named = set()
    for config in configs:
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                named.add(value)
        for value in (config.get("added_tokens_decoder") or {}).values():
            if isinstance(value, dict) and value.get("special") and isinstance(value.get("content"), str):
                named.add(value["content"])
    return named


def read_chat_template(folder: Path) -> dict | None:
    """{"name": None, "jinja": ...} from chat_template.jinja or tokenizer_config.json; None without one."""
    if (folder / "chat_template.jinja").is_file():
        return {"name": None, "jinja": (folder / "chat_template.jinja").read_text(encoding="utf-8")}
    template = _read_json(folder / "tokenizer_config.json", {}).get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    return {"name": None, "jinja": template} if isinstance(template, str) else None


def _adds_nothing(post) -> bool:
    """Does a post-processor leave the ids as they are (none, ByteLevel offsets, an empty template)?"""
    if post is None or (isinstance(post, dict) and post.get("type") == "ByteLevel"):
        return True
    return isinstance(post, dict) and post.get("type") == "TemplateProcessing" and \
        post.get("single") == [{"Sequence": {"id": "A", "type_id": 0}}]


def _read_json(path: Path, missing=None):
    """A JSON file's content; `missing` when there is no file (given), else a TokenizerError."""
    if missing is not None and not path.is_file():
        return missing
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TokenizerError(f"{path} is not readable JSON ({type(e).__name__})") from None


def _kind(spec) -> str:
    return repr(spec.get("type")) if isinstance(spec, dict) else "none" if spec is None else "malformed"


# ---- tokenizers: writing ----------------------------------------------------------------------

# An interval followed by + (possessive in Python's regex, as in GPT-4's \p{N}{1,3}+), not escaped.
_POSSESSIVE_INTERVAL = re.compile(r"(?<!\\)(\{\d+(?:,\d*)?\})\+")


def onig_pattern(pattern: str) -> str:
    """The pre-tokenization pattern, written so that the tokenizers library's regex engine
    (Oniguruma, Ruby syntax) splits text exactly as Python's `regex` does.

    The one difference our patterns meet: Ruby reads X{1,3}+ as (X{1,3})+, a run of any length,
    where Python's regex reads a possessive X{1,3}. At the end of a top-level alternative nothing
    follows that could make the match give characters back, so there possessive and greedy match
    alike and the + is dropped; anywhere else the pattern is refused."""

    def greedy(m: re.Match) -> str:
        before, after = pattern[: m.start()], pattern[m.end() : m.end() + 1]
        if after not in ("", "|") or before.count("(") - before.count(r"\(") != before.count(")") - before.count(r"\)"):
            raise TokenizerError(f"the pre-tokenization pattern has a possessive interval {m.group(0)} inside a "
                                 f"group, which the tokenizers library would read as a repeated one")
        return m.group(1)

    return _POSSESSIVE_INTERVAL.sub(greedy, pattern)


def _ordinary_tokens(tokenizer: BPE) -> dict[int, bytes]:
    specials = set(tokenizer.special_tokens.values())
    return {i: tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size) if i not in specials}


def _merges(tokenizer: BPE, tokens: dict[int, bytes]) -> list[list[str]]:
    """Each merged token's pair, in id order (our rank order), as shown strings."""
    pairs = tokenizer._parents  # the pair each merged token was made from (the vocab file's columns)
    unrecorded = next((i for i, token in tokens.items() if len(token) > 1 and i not in pairs), None)
    if unrecorded is not None:
        raise UserError(f"the tokenizer does not record which two tokens make token {unrecorded} "
                        f"({_shown(tokens[unrecorded])!r}), and transformers' files list merges")
    return [[_shown(tokens[a]), _shown(tokens[b])] for _, (a, b) in sorted(pairs.items())]


def tokenizer_json(tokenizer: BPE) -> dict:
    """tokenizer.json for the tokenizers library: the same ids as tokenizer.encode(text, allowed_special="all").

    Special tokens are added tokens (matched before anything else); the text between them is split by
    our pattern, mapped to GPT-2's byte alphabet by ByteLevel (its own regex off), and merged by rank.
    ignore_merges keeps a piece that is a token whole, as our encoder does."""
    tokens = _ordinary_tokens(tokenizer)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for s, i in sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])]  # fmt: skip
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": onig_pattern(tokenizer.pattern)}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {_shown(token): i for i, token in tokens.items()}, "merges": _merges(tokenizer, tokens)},
    }  # fmt: skip


def tokenizer_files(tokenizer: BPE, context: int, chat_template: dict | None = None,
                    pad_id: int | None = None) -> dict[str, str]:  # fmt: skip
    """The tokenizer's files of a transformers folder: name -> text. pad_id (a classifier's) is named
    as the pad token when it is a special token (an ordinary one named so would become special).

    tokenizer_config.json names PreTrainedTokenizerFast, which loads tokenizer.json as it is: a
    model-specific class such as GPT2Tokenizer rebuilds its own pre-tokenizer from vocab and merges
    (with GPT-2's regex, whatever tokenizer.json says). vocab.json + merges.txt are written only for
    GPT-2's pattern, the one a reader of those two files assumes."""
    eot = ENDOFTEXT if ENDOFTEXT in tokenizer.special_tokens else None
    named = {"bos_token": eot, "eos_token": eot, "unk_token": eot} if eot else {}
    pad = next((s for s, i in tokenizer.special_tokens.items() if i == pad_id), None)
    if pad is not None:
        named["pad_token"] = pad
    others = [s for s in tokenizer.special_tokens if s != eot]
    if others:
        named["additional_special_tokens"] = others
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context, "add_prefix_space": False,
              "clean_up_tokenization_spaces": False, **named}  # fmt: skip
    if chat_template is not None:
        config["chat_template"] = chat_template["jinja"]
    spec = tokenizer_json(tokenizer)
    files = {"tokenizer.json": _json_text(spec), "tokenizer_config.json": _json_text(config),
             "special_tokens_map.json": _json_text(named)}  # fmt: skip
    if tokenizer.pattern == GPT2_PATTERN:
        vocab = {**spec["model"]["vocab"], **tokenizer.special_tokens}
        files["vocab.json"] = _json_text(dict(sorted(vocab.items(), key=lambda kv: kv[1])))
        files["merges.txt"] = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in spec["model"]["merges"])
    return files


# ---- the whole folder -------------------------------------------------------------------------


def check_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """The folder to export into: new, empty, or (with overwrite) a model folder to replace whole.
    A folder that holds anything but a model (no config.json) is never replaced."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file: export writes a folder, choose another name")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} already exists and is not empty: pass --overwrite to replace it, or choose another folder")
        if not (out / "config.json").is_file():
            raise UserError(f"{out} is not a model folder (it has no config.json): it is not replaced, even with --overwrite")
    return out


def export_folder(model: GPT2 | GPT2Classifier, tokenizer: BPE | None, out_dir: str | os.PathLike,
                  chat_template: dict | None = None, overwrite: bool = False, name: str = "the model") -> list[str]:  # fmt: skip
    """Write the model (and its tokenizer, when it has one) as a folder that transformers'
    AutoModelForCausalLM (AutoModelForSequenceClassification for a GPT2Classifier) and AutoTokenizer
    load as they are. The files are written into a new folder
    beside out_dir, which then takes its place: a failed export leaves out_dir as it was.
    Returns the names of the files written. `name`: the model's, in the error of a shape no
    transformers class holds. A model with LoRA adapters is refused: merge them first
    (lora.merged_copy, as `main.py export` does) or write them apart (lora.export_with_adapter)."""
    if any(".lora_" in key for key in model.state_dict()):
        raise UserError(f"{name} has LoRA adapters: merge them first (lora.merged_copy) or export them apart "
                        f"(lora.export_with_adapter)")
    gpt, classifier = split_classifier(model)
    problem = export_problem(gpt.config, classifier is not None)
    if problem:
        raise UserError(f"cannot export {name}: {problem}")
    out = check_out_dir(out_dir, overwrite)
    pad_id = classifier.pad_id if classifier is not None else None
    texts = tokenizer_files(tokenizer, gpt.config.block_size, chat_template, pad_id) if tokenizer is not None else {}
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    staging = out.absolute().parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed export of a process with our id
    try:
        write_model(model, staging, tokenizer)
        for file_name, text in texts.items():
            (staging / file_name).write_text(text, encoding="utf-8")
        _sync_files(staging)
        _replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(path.name for path in out.iterdir())


def _replace_folder(new: Path, out: Path) -> None:
    """Put the folder `new` at `out`, moving an old out aside first and removing it after."""
    old = None
    if out.exists():
        old = new.with_name(new.name.removesuffix(".tmp") + ".old")
        os.rename(out, old)
    os.rename(new, out)
    _fsync(out.absolute().parent)  # the rename itself survives a crash
    if old is not None:
        shutil.rmtree(old)


def _sync_files(folder: Path) -> None:
    """Every file of the folder on disk before the folder is renamed into place."""
    for path in folder.iterdir():
        _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # a file system that cannot sync a folder
    finally:
        os.close(fd)


def _json_text(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _write_json(path: Path, value) -> None:
    path.write_text(_json_text(value), encoding="utf-8")
