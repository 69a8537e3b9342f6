"""LoRA (Hu et al. 2021): fine-tune a frozen model through small low-rank updates of its matrices.

A layer y = W x (W: out x in) is kept frozen and learns a correction of rank r instead:

    y = W x + (alpha / r) * B A dropout(x)        A: r x in, B: out x r

A starts random (as nn.Linear's weights, PEFT's default), B at zero, so a new adapter changes nothing
and training moves it away from the base model. At r = 8 on GPT-2 124M's attention that is 442,368
trainable weights, 0.36% of the model. Afterwards B A * alpha / r can be added into W (merge_lora):
the merged model is a plain model again, as fast as the base.

    add_lora(model, rank, alpha=None, dropout=0.0, targets="attention", tokens=None)   freeze the base, wrap the layers
    rows_to_train(counts, model)          the data's most frequent tokens, within ROWS_SHARE of the weights
    add_token_rows(model, tokens)         train the embedding's and head's rows of these tokens (TrainedRows)
    lora_settings(model) -> dict          add_lora's arguments, as the model holds them
    lora_state(model) -> dict             the tensors training changes: adapters, rows (and a classifier's score)
    base_state(model) -> dict             the frozen GPT2's own state dict, in a plain GPT2's names
    load_lora_state(model, state)         put them back into a model with the same adapters
    merge_lora(model)                     fold the adapters and rows into the base weights: plain layers again
    write_peft_adapter(model, folder)     PEFT's adapter folder (adapter_config.json, adapter_model.safetensors)
    read_peft_adapter(folder, model_type) -> (settings, state), for add_lora(**settings) and load_lora_state

The model is a GPT2 or a GPT2Classifier (its .gpt is adapted; its score stays trainable). Targets are
every block's attention (c_attn, c_proj), its MLP (c_fc, c_fc2 for SwiGLU, c_proj) or both.

A language model whose head is not its embedding also trains the rows of both for the tokens its
training data holds (TrainedRows: PEFT's "trainable tokens"): a few hundred rows for a task in a
small vocabulary of words, and of a large text only its most frequent tokens, within 2% of the
weights (rows_to_train). Adapters on the blocks alone cannot make a model say tokens its head
rarely gave, nor read a new template: on the instruction tasks of BENCHMARKS.md ("Classification
and LoRA") they reached a validation loss of 2.00 and 14.8% exact answers where full fine-tuning
reached 0.72 and 64.6%; with the rows of 291 tokens (1.2% more of the weights), 0.88 and 60.2%, and
63.6% beside full fine-tuning's 59.8% in one command. A head tied to the embedding (GPT-2's own)
stays frozen, and so does a classifier's embedding.

PEFT parity. PEFT puts one adapter on each transformers layer it targets. GPT-2's class holds q, k
and v in one layer, c_attn, as ours does: one adapter on our c_attn. The Llama family has three
layers, q_proj, k_proj and v_proj, each with its own adapter; their outputs side by side are our
c_attn's, so our c_attn then has three adapters, one per block of its output rows (`parts`). The
two are not the same model: one adapter of rank r over [q | k | v] is not three of rank r.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from basics import UserError, atomic_write

TARGETS = {"attention": ("attn.c_attn", "attn.c_proj"), "mlp": ("mlp.c_fc", "mlp.c_fc2", "mlp.c_proj")}
TARGETS["both"] = TARGETS["attention"] + TARGETS["mlp"]
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's name for the wrapped transformers model
ROWS_SHARE = 0.02  # at most this share of the weights in trained rows (rows_to_train)
EMBEDDING_NAMES = {"gpt2": "transformer.wte"}  # transformers' token embedding; the Llama family's is model.embed_tokens


class LoRALinear(nn.Module):
    """A frozen nn.Linear `base` plus trainable low-rank adapters:

        y = base(x) + scale * dropout(x) @ A^T @ B^T,   scale = alpha / rank

    `parts` splits the output features into blocks (default: one block, all of them), each with an
    adapter of its own (A_i, B_i): our fused c_attn's q, k and v rows for the Llama family's three layers.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 parts: tuple[int, ...] | None = None):  # fmt: skip
        super().__init__()
        parts = parts or (base.out_features,)
        assert sum(parts) == base.out_features, f"parts {parts} do not add up to {base.out_features} outputs"
        self.base, self.rank, self.alpha, self.scale = base.requires_grad_(False), rank, alpha, alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        weight = base.weight
        self.lora_A = nn.ParameterList(nn.Parameter(weight.new_empty(rank, base.in_features)) for _ in parts)
        self.lora_B = nn.ParameterList(nn.Parameter(weight.new_zeros(out, rank)) for out in parts)
        for A in self.lora_A:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # nn.Linear's own initialisation, as PEFT's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(x)  # (..., in)
        update = torch.cat([h @ A.t() @ B.t() for A, B in zip(self.lora_A, self.lora_B)], dim=-1)  # (..., out)
        return F.linear(x, self.base.weight, self.base.bias) + self.scale * update

    def merged_weight(self) -> torch.Tensor:
        """The base's weight plus the update, scale * B A: what merging puts in the layer."""
        update = self.scale * torch.cat([B @ A for A, B in zip(self.lora_A, self.lora_B)])
        return self.base.weight + update.to(self.base.weight.dtype)


class TrainedRows(nn.Module):
    """A frozen nn.Embedding or head (nn.Linear) whose rows for the tokens `ids` train: `lora_rows`
    starts as a copy of them and takes their place (what PEFT's trainable tokens do)."""

    def __init__(self, base: nn.Embedding | nn.Linear, ids):
        super().__init__()
        self.base = base.requires_grad_(False)
        weight = base.weight
        ids = torch.as_tensor(sorted({int(i) for i in ids}), dtype=torch.long, device=weight.device)
        slot = torch.full((weight.size(0),), -1, dtype=torch.long, device=weight.device)
        slot[ids] = torch.arange(len(ids), device=weight.device)
        self.register_buffer("ids", ids, persistent=False)  # the checkpoint keeps them in the settings
        self.register_buffer("slot", slot, persistent=False)  # a token's row in lora_rows, or -1
        self.lora_rows = nn.Parameter(weight.detach()[ids].clone())

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight.index_copy(0, self.ids, self.lora_rows.to(self.base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.base, nn.Linear):
            return F.linear(x, self.merged_weight(), self.base.bias)
        slot = self.slot[x]  # an embedding looks up only the rows it needs
        return torch.where((slot >= 0).unsqueeze(-1), self.lora_rows[slot.clamp_min(0)], self.base(x))


# ---- adding, merging, saving ----------------------------------------------------------------------


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0,
             targets: str = "attention", tokens=None) -> nn.Module:  # fmt: skip
    """Freeze every weight of `model` (a GPT2, or a GPT2Classifier whose score stays trainable) and wrap
    the target layers of each block in a LoRALinear (and with `tokens`, ids, train those rows of
    the embedding and head: add_token_rows); return the model. alpha defaults to the rank (scale
    1, whatever the rank; PEFT's default lora_alpha is 8, the same at its default rank 8)."""
    alpha = rank if alpha is None else alpha
    problems = [f"{flag} {text}" for flag, text, bad in [
        ("--lora", f"(the rank) must be a positive integer, got {rank}", not isinstance(rank, int) or rank < 1),
        ("--lora-alpha", f"must be positive, got {alpha}", not alpha > 0),
        ("--lora-dropout", f"must be in [0, 1), got {dropout}", not 0 <= dropout < 1),
        ("--lora-targets", f"must be one of {', '.join(TARGETS)}, got {targets!r}", targets not in TARGETS)] if bad]
    if problems:
        raise UserError("; ".join(problems))
    gpt = getattr(model, "gpt", model)
    if any(isinstance(m, LoRALinear) for m in gpt.modules()):
        raise UserError("the model has LoRA adapters already (merge_lora them first to add new ones)")
    model.requires_grad_(False)
    if hasattr(model, "score"):
        model.score.requires_grad_(True)
    split = qkv_parts(gpt.config)
    for block in gpt.decoder.h:
        for name in TARGETS[targets]:
            parent, attr = block.get_submodule(name.split(".")[0]), name.split(".")[1]
            layer = getattr(parent, attr)
            if layer is not None:  # c_fc2 exists with SwiGLU only
                parts = split if name == "attn.c_attn" else None
                wrapped = LoRALinear(layer, rank, float(alpha), dropout, parts).train(layer.training)  # eval stays eval
                setattr(parent, attr, wrapped)
    if tokens is not None:
        add_token_rows(model, tokens)
    return model


def rows_to_train(counts, model: nn.Module) -> tuple[list[int], int]:
    """(the tokens whose rows train, ascending; how many the data holds): those the data holds (counts:
    occurrences by id), the most frequent first, as many as keep the embedding's and head's rows within
    ROWS_SHARE of the model's weights, so that on a large text of a large vocabulary LoRA stays small."""
    held = [i for i, n in enumerate(counts) if n]
    most = int(ROWS_SHARE * model.num_parameters() / (2 * model.config.n_embd))
    frequent = sorted(held, key=lambda i: -counts[i])[:most]  # a stable sort: among equals, the lower id
    return sorted(frequent), len(held)


def add_token_rows(model: nn.Module, tokens) -> bool:
    """Train the rows of the token embedding and the head for these ids, in a language model whose
    head is not its embedding (else change nothing and return False)."""
    if hasattr(model, "score") or model.config.tie_embeddings:
        return False
    if isinstance(model.wte, TrainedRows):
        raise UserError("the model's embedding and head train some of their rows already")
    model.wte, model.lm_head = TrainedRows(model.wte, tokens), TrainedRows(model.lm_head, tokens)
    return True


def qkv_parts(config) -> tuple[int, ...] | None:
    """The adapters of c_attn: one for GPT-2's shape (None: all its rows), as PEFT's on GPT-2's c_attn;
    else one each for the q, k and v rows, as PEFT's on the Llama family's q_proj, k_proj and v_proj."""
    if not config.gpt2_departures():
        return None
    return (config.n_head * config.head_size, config.kv_heads * config.head_size, config.kv_heads * config.head_size)


def adapted_layers(model: nn.Module) -> dict[str, LoRALinear | TrainedRows]:
    """{name in the GPT2 (wte, decoder.h.0.attn.c_attn, lm_head): its adapted layer}, in the model's order."""
    adapted = (LoRALinear, TrainedRows)
    return {name: m for name, m in getattr(model, "gpt", model).named_modules() if isinstance(m, adapted)}


def lora_settings(model: nn.Module) -> dict:
    """The keyword arguments of add_lora that made the model's adapters (rank, alpha, dropout, targets,
    tokens: the ids whose rows train, or None)."""
    everything = adapted_layers(model)
    layers = {name: layer for name, layer in everything.items() if name.startswith("decoder.")}
    if not layers:
        raise UserError("the model has no LoRA adapters")
    first = next(iter(layers.values()))
    names = {name.split(".", 3)[3] for name in layers}  # decoder.h.N.attn.c_attn -> attn.c_attn
    targets = next(t for t in ("attention", "mlp", "both") if names <= set(TARGETS[t]))
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    return {"rank": first.rank, "alpha": first.alpha, "dropout": dropout, "targets": targets,
            "tokens": everything["wte"].ids.tolist() if "wte" in everything else None}


def adapted_parts(model: nn.Module) -> str:
    """What the model's adapters are on, in words: "attention", "both, and the embedding's and head's
    rows of 260 tokens", ..."""
    settings = lora_settings(model)
    tokens = settings["tokens"]
    return settings["targets"] + (f", and the embedding's and head's rows of {len(tokens):,} tokens" if tokens else "")


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: every adapter's tensors, named in the GPT2 (decoder.h.0.attn.c_attn.lora_A.0),
    and a classifier's score.weight."""
    state = {k: v for k, v in getattr(model, "gpt", model).state_dict().items() if ".lora_" in k}
    if hasattr(model, "score"):
        state["score.weight"] = model.score.weight.detach()
    return state


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The GPT2's state dict without its adapters, in a plain GPT2's names: the base model's weights
    (GPT2(config).load_state_dict(base_state(model)) rebuilds it, for export.write_model say)."""
    state = getattr(model, "gpt", model).state_dict()
    return {k.replace(".base.", "."): v for k, v in state.items() if ".lora_" not in k}


@torch.no_grad()
def load_lora_state(model: nn.Module, state: dict[str, torch.Tensor], where: str = "the adapter") -> None:
    """Copy lora_state's tensors into a model whose adapters have the same shape (add_lora them first)."""
    ours = lora_state(model)
    missing, extra = sorted(ours.keys() - state.keys()), sorted(state.keys() - ours.keys())
    wrong = [k for k in ours.keys() & state.keys() if tuple(ours[k].shape) != tuple(state[k].shape)]
    if missing or extra or wrong:
        said = [f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}" for what, keys in
                (("missing", missing), ("not in the model", extra), ("of another shape", sorted(wrong))) if keys]
        raise UserError(f"{where} does not fit the model's adapters ({'; '.join(said)})")
    for key, tensor in ours.items():
        tensor.copy_(state[key])


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Add each adapter's update into its base weight and put the plain nn.Linear back; return the model.
    The base weights stay frozen (requires_grad_(True) to train them all)."""
    gpt = getattr(model, "gpt", model)
    for name, layer in adapted_layers(model).items():
        layer.base.weight.copy_(layer.merged_weight())
        parent, _, attr = name.rpartition(".")
        setattr(gpt.get_submodule(parent), attr, layer.base)
    return model


def without_adapters(model: nn.Module) -> nn.Module:
    """A copy of the model with each adapted layer's frozen base in its place: the base model (a
    classifier keeps its score), for export --adapter."""
    plain = copy.deepcopy(model)
    gpt = getattr(plain, "gpt", plain)
    for name, layer in adapted_layers(plain).items():
        parent, _, attr = name.rpartition(".")
        setattr(gpt.get_submodule(parent), attr, layer.base)
    return plain


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes and bytes: what a checkpoint of adapters checks its
    base against (the base's file may be replaced by another model under the same name)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def adapter_entries(model: nn.Module, state: dict[str, torch.Tensor], base: dict) -> dict:
    """A checkpoint's "lora" part: the base ({"name", "path", "hash"}), the adapters' settings, and
    their tensors taken from `state` (the model's state dict, or its moving average's)."""
    prefix = "gpt." if hasattr(model, "gpt") else ""
    tensors = {k.removeprefix(prefix): v for k, v in state.items() if ".lora_" in k}
    return {"lora": {**base, "settings": lora_settings(model), "state": tensors}}


def merged_copy(model: nn.Module) -> nn.Module:
    """The model with its adapters merged into a copy (the model itself keeps them); a model
    without adapters as it is. What `export` writes by default."""
    return merge_lora(copy.deepcopy(model)) if adapted_layers(model) else model


def export_with_adapter(model: nn.Module, tokenizer, out_dir: str | os.PathLike,
                        chat_template: dict | None = None, overwrite: bool = False, name: str = "the model") -> list[str]:  # fmt: skip
    """`export MODEL OUT --adapter`: the base model as a transformers folder in OUT/base and the LoRA
    adapters in PEFT's format in OUT/adapter, for PeftModel.from_pretrained(AutoModelFor...(OUT/base),
    OUT/adapter). OUT/adapter also loads as a model name here (loading.load_adapter_folder)."""
    from .export import export_folder

    if not adapted_layers(model):
        raise UserError(f"{name} has no LoRA adapters (it was not trained with --lora): export it without --adapter")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file: export writes a folder, choose another name")
    held = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if held and not (overwrite and held <= {"base", "adapter"}):
        raise UserError(f"{out} already exists and is not empty: pass --overwrite to replace an export with --adapter "
                        f"(a folder of base/ and adapter/ only), or choose another folder")
    export_folder(without_adapters(model), tokenizer, out / "base", chat_template, overwrite=True, name=name)
    shutil.rmtree(out / "adapter", ignore_errors=True)
    write_peft_adapter(model, out / "adapter", base_name_or_path=out / "base")
    return ["base/", "adapter/"]


# ---- PEFT's adapter folder ------------------------------------------------------------------------


def peft_names(name: str, model_type: str) -> list[str]:
    """Our adapted layer (decoder.h.N.attn.c_attn, ...) -> the transformers layer(s) PEFT adapts, one per part:
    transformer.h.N.attn.c_attn for GPT-2; model.layers.N.self_attn.q_proj, k_proj, v_proj for the Llama family.
    The token embedding (wte) is transformer.wte or model.embed_tokens, the head lm_head in both."""
    from . import hf_llama

    if name in ("wte", "lm_head"):
        return [{"wte": EMBEDDING_NAMES.get(model_type, "model.embed_tokens"), "lm_head": "lm_head"}[name]]
    block, inside = name.removeprefix("decoder.h.").split(".", 1)
    if model_type == "gpt2":
        return [f"transformer.h.{block}.{inside}"]
    family = hf_llama.FAMILIES[model_type]
    theirs = hf_llama.QKV if inside == "attn.c_attn" else [family.block_names[inside + ".weight"]]
    return [f"model.layers.{block}.{t.removesuffix('.weight')}" for t in theirs]


def model_type_of(model: nn.Module) -> str:
    """The transformers model_type the model exports as (export.export_type), or one line saying why none."""
    from .export import export_problem, export_type

    config = getattr(model, "gpt", model).config
    kind = export_type(config)
    if kind is None:
        raise UserError(f"cannot write a PEFT adapter: {export_problem(config)}")
    return kind


def write_peft_adapter(model: nn.Module, folder: str | os.PathLike, base_name_or_path: str | None = None) -> None:
    """Write the model's adapters as PEFT's save_pretrained does: adapter_config.json and
    adapter_model.safetensors in `folder`, for the transformers model that export writes of the base
    (base_name_or_path: where that is, recorded for PeftModel.from_pretrained's users)."""
    from safetensors.torch import save

    model_type, settings = model_type_of(model), lora_settings(model)
    state, modules = {}, set()
    rows = {}  # PEFT's trainable_token_indices: {its short name of the embedding, of the head: the ids}
    for name, layer in adapted_layers(model).items():
        if isinstance(layer, TrainedRows):
            theirs = peft_names(name, model_type)[0]
            state[f"{PEFT_PREFIX}{theirs}.token_adapter.trainable_tokens_delta"] = layer.lora_rows.detach().contiguous()
            rows[theirs.rpartition(".")[2]] = layer.ids.tolist()  # transformer.wte -> wte
            continue
        for i, theirs in enumerate(peft_names(name, model_type)):
            state[f"{PEFT_PREFIX}{theirs}.lora_A.weight"] = layer.lora_A[i].detach().contiguous()
            state[f"{PEFT_PREFIX}{theirs}.lora_B.weight"] = layer.lora_B[i].detach().contiguous()
            modules.add(theirs.split(".", 3)[3])  # transformer.h.N.attn.c_attn -> attn.c_attn
    classifier = hasattr(model, "score")
    if classifier:
        state[PEFT_PREFIX + "score.weight"] = model.score.weight.detach().contiguous()
    config = {
        "peft_type": "LORA", "task_type": "SEQ_CLS" if classifier else "CAUSAL_LM", "r": settings["rank"],
        "lora_alpha": settings["alpha"], "lora_dropout": settings["dropout"], "target_modules": sorted(modules),
        "fan_in_fan_out": model_type == "gpt2",  # GPT-2's Conv1D layers hold their weights transposed
        "bias": "none", "modules_to_save": ["score"] if classifier else None, "init_lora_weights": True,
        "use_rslora": False, "use_dora": False, "inference_mode": True, "trainable_token_indices": rows or None,
        "base_model_name_or_path": None if base_name_or_path is None else str(base_name_or_path),
    }  # fmt: skip
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / PEFT_CONFIG, "w") as f:
        f.write(json.dumps(config, indent=2) + "\n")
    with atomic_write(folder / PEFT_WEIGHTS) as f:
        f.write(save(state, metadata={"format": "pt"}))


def read_peft_adapter(folder: str | os.PathLike, model_type: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """A PEFT LoRA adapter folder (PEFT's save_pretrained, or write_peft_adapter) for a base of this
    transformers model_type (gpt2, llama, qwen3, apertus: export.export_type of our model) ->
    (add_lora's keyword arguments, lora_state's tensors): add_lora(model, **settings) then
    load_lora_state(model, state). Only what add_lora makes is read: the same rank and alpha for
    every layer, on every block's attention, MLP or both, and on the token embedding and an untied
    head or on neither (a missing layer is named by load_lora_state). PEFT's copies of an adapted
    embedding's and head's own weights (base_layer) are the base's, and are left to the base."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = _peft_config(folder)
    path = folder / PEFT_WEIGHTS
    if not path.is_file():
        raise UserError(f"{folder} has no {PEFT_WEIGHTS} (adapters saved as .bin are not read: save with safetensors)")
    try:
        weights = load_file(path)
    except Exception as e:  # noqa: BLE001 (damaged bytes fail in arbitrary ways)
        raise UserError(f"{path} is not readable: truncated or corrupt ({type(e).__name__})") from None
    ours_of, layers = _ours_in_block(model_type)
    embedding = peft_names("wte", model_type)[0]
    outside = {f"{embedding}.token_adapter.trainable_tokens_delta": "wte.lora_rows",
               "lm_head.token_adapter.trainable_tokens_delta": "lm_head.lora_rows", "score.weight": "score.weight"}
    state = {}
    for key, tensor in weights.items():
        name = key.removeprefix(PEFT_PREFIX)
        if name in outside:
            state[outside[name]] = tensor
            continue
        found = re.fullmatch(rf"{re.escape(layers)}\.(\d+)\.(.+)\.lora_([AB])\.weight", name)
        if found is None or found[2] not in ours_of:
            raise UserError(f"{path}: {key} is not an adapter of a layer this toolkit adapts in a {model_type} "
                            f"model (its blocks' attention and MLP matrices)")
        inside, part = ours_of[found[2]]
        state[f"decoder.h.{found[1]}.{inside}.lora_{found[3]}.{part}"] = tensor
    kinds = {key.split(".")[3] for key in state if key.startswith("decoder.")}  # attn, mlp: what it adapts
    if not kinds:
        raise UserError(f"{path} holds no LoRA adapters")
    targets = "both" if len(kinds) == 2 else {"attn": "attention", "mlp": "mlp"}[kinds.pop()]
    settings = {"rank": config["r"], "alpha": config["lora_alpha"], "dropout": config.get("lora_dropout", 0.0),
                "targets": targets, "tokens": _token_rows(config, embedding.rpartition(".")[2], path)}  # fmt: skip
    return settings, state


def _token_rows(config: dict, embedding: str, path: Path) -> list[int] | None:
    """The ids of PEFT's trainable_token_indices, when it names the same ones for the embedding and the
    head (what add_token_rows trains); None when it names none."""
    rows = config.get("trainable_token_indices")
    if not rows:
        return None
    if not isinstance(rows, dict) or set(rows) != {embedding, "lm_head"} or \
            sorted(rows[embedding]) != sorted(rows["lm_head"]):
        raise UserError(f"{path}: its trainable_token_indices must name the same tokens for {embedding} and lm_head "
                        f"(this toolkit trains those rows of both), got {rows}")
    return sorted(rows[embedding])


def _peft_config(folder: Path) -> dict:
    """adapter_config.json, refused in one line when it asks for what LoRALinear does not do."""
    path = folder / PEFT_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder} is not a PEFT adapter folder: it has no {PEFT_CONFIG}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not readable JSON ({type(e).__name__})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA" or not isinstance(config.get("r"), int):
        raise UserError(f"{path} is not a LoRA adapter's config (peft_type LORA and an integer r)")
    unsupported = [f"{key} {config[key]!r}" for key, off in [
        ("use_dora", False), ("use_rslora", False), ("bias", "none"), ("lora_bias", False), ("rank_pattern", {}),
        ("alpha_pattern", {}), ("layers_to_transform", None), ("use_qalora", False)] if config.get(key, off) != off]
    if unsupported:
        raise UserError(f"{path}: this toolkit's LoRA does not do {', '.join(unsupported)}")
    return config


def _ours_in_block(model_type: str) -> tuple[dict[str, tuple[str, int]], str]:
    """({transformers' layer in a block: (ours in a block, its part)}, the path of the blocks) of a model_type."""
    from . import hf_llama

    if model_type == "gpt2":
        return {name: (name, 0) for name in TARGETS["both"]}, "transformer.h"
    family = hf_llama.FAMILIES.get(model_type)
    if family is None:
        raise UserError(f"no PEFT adapter is read for a {model_type!r} model (gpt2, {', '.join(hf_llama.FAMILIES)})")
    ours = {t.removesuffix(".weight"): (o.removesuffix(".weight"), 0) for o, t in family.block_names.items()
            if o.removesuffix(".weight") in TARGETS["both"]}  # fmt: skip
    qkv = {name.removesuffix(".weight"): ("attn.c_attn", part) for part, name in enumerate(hf_llama.QKV)}
    return ours | qkv, "model.layers"
