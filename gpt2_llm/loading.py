"""The one way to load a model: a name -> the model, its tokenizer, and what else came with it.

    load("gpt2_model.pt")          our checkpoint file                    Loaded(source="checkpoint")
    load("exported/")              a transformers folder (save_pretrained) Loaded(source="folder")
                                   (...ForSequenceClassification: Loaded.model is a GPT2Classifier)
    load("gpt2"), load("openai-community/gpt2")   a Hugging Face hub name  Loaded(source="hub")

Every reader of a model goes through `load`: `main.py` predict, eval, export and train (to continue
a run), `check_checkpoint.py` and `Trainer.from_checkpoint`. So a model is checked
once, in one order, and each problem is one line (a CheckpointError or TokenizerError) naming it:

    1. the file itself: a torch file read without running pickles, of our format (checkpoint.py);
       or a folder's config.json and weights (export.py)
    2. its model config: known fields only, the required ones present, each of the right type
       and value (GPT2Config.from_dict); fields added in later versions take their defaults
    3. its weights: every tensor the config implies, of the shape it implies, and nothing else
    4. its tokenizer (written by main.py train; checkpoint.save_model stores none; a folder's tokenizer files):
       it parses, its hash is the one recorded, and the model has an embedding row for each token

A name that is no file or folder here but looks like a hub repository ("gpt2", "org/name") is
looked up in the Hugging Face cache, and downloaded into it when it is not there: the only network
access of the toolkit (`hub_folder`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from basics import UserError
from bpe import BPE, TokenizerError

from . import export
from .checkpoint import CheckpointError, load_checkpoint
from .config import DEFAULT_MODEL, ConfigError, GPT2Config
from .gpt2 import GPT2

# What a checkpoint written by the trainer holds besides the model, to continue the run exactly.
TRAINING_KEYS = ("optimizer", "train_config", "state", "rng", "tokenizer")


@dataclass
class Loaded:
    """A loaded model (in eval mode, on the CPU unless asked otherwise) and what came with it."""

    model: GPT2  # or a GPT2Classifier (classifier.py), whose language model is model.gpt
    tokenizer: BPE | None  # None when the file holds weights only (checkpoint.save_model), or a folder has no tokenizer files
    path: Path  # the checkpoint file, or the folder (for a hub name: its snapshot in the cache)
    # Everything stored: optimizer, train_config, state, rng, data, ... For a folder: model_config,
    # hf_config (its config.json), weights_file, tokenizer_file, and a classifier's "classifier" part.
    checkpoint: dict = field(repr=False)
    source: str = "checkpoint"  # "checkpoint" | "folder" | "hub"
    name: str = ""  # the name it was loaded by
    # {"name": "alpaca" | "chat" | None, "jinja": a Jinja chat template}: stored by a run trained on
    # instructions, or a folder's own template (its name unknown); None without one.
    chat_template: dict | None = None

    @property
    def classes(self) -> list[str] | None:
        """A classifier's class names, in label order; None for a language model."""
        return getattr(self.model, "names", None)

    @property
    def can_resume(self) -> bool:
        return all(key in self.checkpoint for key in TRAINING_KEYS)


def load(name: str | os.PathLike, device: str | torch.device = "cpu") -> Loaded:
    """Load a model by name: a checkpoint file, a transformers folder, or a hub name (see the
    module's docstring). The model goes to `device`; everything else stays on the CPU."""
    path = Path(name)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return load_adapter_folder(path, device, str(name))
    if path.is_dir():
        return load_folder(path, device, "folder", str(name))
    if not path.exists() and looks_like_hub_name(str(name)):
        return load_folder(hub_folder(str(name)), device, "hub", str(name))
    if not path.exists():
        raise CheckpointError(f"model not found: {name} (no such checkpoint file or model folder)")
    return load_checkpoint_file(path, device)


def load_checkpoint_file(path: Path, device: str | torch.device = "cpu") -> Loaded:
    """Read and check one of our checkpoints; a CheckpointError says what is wrong."""
    checkpoint = load_checkpoint(path)
    try:
        config = GPT2Config.from_dict(checkpoint["model_config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if "lora" in checkpoint:  # adapters that name their base (--lora)
        model = base_with_adapters(checkpoint, config, path, device)
    else:
        model = build_model(config, checkpoint["model"], f"{path}: its weights do not fit its model config")
    if "classifier" in checkpoint and "lora" not in checkpoint:  # a classifier's own part beside its language model (classifier.py)
        from .classifier import GPT2Classifier

        model = GPT2Classifier.from_checkpoint(model, checkpoint["classifier"], str(path))
    tokenizer = read_tokenizer(checkpoint, path, config)
    chat_template = read_chat_template(checkpoint, path)
    return Loaded(model.to(device).eval(), tokenizer, path, checkpoint, "checkpoint", str(path), chat_template)


def base_with_adapters(checkpoint: dict, config: GPT2Config, path: Path, device) -> torch.nn.Module:
    """A checkpoint of LoRA adapters: its base, found by the path it was trained from (or its name:
    a hub name, or a path relative to here or to the checkpoint's folder) and checked by its hash,
    with the adapters added (and a classifier's head)."""
    from .lora import add_lora, load_lora_state, weights_hash

    stored = checkpoint["lora"]
    name = stored.get("name", "?")
    candidates = [c for c in (stored.get("path"), name, str(path.parent / name)) if c]
    found = next((c for c in candidates if os.path.exists(c)), None)
    if found is None and not looks_like_hub_name(name):
        raise CheckpointError(f"{path} holds LoRA adapters of {name}, which is not found (looked for "
                              f"{', '.join(dict.fromkeys(candidates))}): put it back, or name it from this folder")
    base = load(found or name, "cpu")
    gpt = base.model.gpt if base.classes else base.model
    if weights_hash(gpt.state_dict()) != stored.get("hash"):
        raise CheckpointError(f"{path} holds LoRA adapters of {name}, but {found or name} is no longer that model "
                              f"(its weights' hash differs): the adapters fit only the weights they were trained on")
    gpt = gpt.with_changes(config.dropout, config.attn_dropout, config.block_size)
    model = gpt
    state = dict(stored["state"])
    if "classifier" in checkpoint:
        from .classifier import GPT2Classifier

        model = GPT2Classifier.from_checkpoint(gpt, checkpoint["classifier"], str(path))
        state["score.weight"] = model.score.weight.detach().clone()
    add_lora(model, **stored["settings"])
    load_lora_state(model, state, f"{path}'s adapters")
    return model


def load_adapter_folder(folder: Path, device, name: str) -> Loaded:
    """A PEFT LoRA adapter folder (export --adapter writes one; PEFT's save_pretrained too) on its
    base: the transformers folder its adapter_config.json names (as given, or relative to the
    adapter's folder), or else a folder named base beside it."""
    from .lora import PEFT_CONFIG, add_lora, load_lora_state, read_peft_adapter

    try:
        named = json.loads((folder / PEFT_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{folder / PEFT_CONFIG} cannot be read ({e})") from None
    candidates = [Path(named), folder / named] if named else []
    candidates.append(folder.parent / "base")
    found = next((c for c in candidates if (c / "config.json").is_file()), None)
    if found is None:
        raise CheckpointError(f"{folder} holds a LoRA adapter whose base is not found (looked for "
                              f"{', '.join(str(c) for c in dict.fromkeys(candidates))}): put the base there")
    base = load_folder(found, device, "folder", str(found))
    gpt = base.model.gpt if base.classes else base.model
    settings, state = read_peft_adapter(folder, export.export_type(gpt.config))
    if ("score.weight" in state) != (base.classes is not None):
        kinds = ("a classifier", "a language model")
        raise CheckpointError(f"{folder} is an adapter of {kinds['score.weight' not in state]}, but its base {found} "
                              f"is {kinds[base.classes is None]}")
    add_lora(base.model, **settings)
    load_lora_state(base.model, {k: v.to(device) for k, v in state.items()}, str(folder))
    return replace(base, model=base.model.eval(), path=folder, name=name)


def load_folder(folder: Path, device: str | torch.device = "cpu", source: str = "folder", name: str = "") -> Loaded:
    """Read and check a transformers folder of a GPT-2 or a Llama (config.json, weights, tokenizer files);
    a ...ForSequenceClassification folder loads as a GPT2Classifier (export.classifier_part)."""
    config, hf = export.read_config(folder)
    weights = export.read_hf_weights(folder, hf)
    config, classifier = export.classifier_part(folder, hf, config, weights)
    model = build_model(config, weights, f"{folder}: its weights do not fit its config.json")
    if classifier is not None:
        from .classifier import GPT2Classifier

        model = GPT2Classifier.from_checkpoint(model, classifier, str(folder))
    tokenizer, tokenizer_file = export.read_tokenizer(folder)
    check_tokenizer_fits(tokenizer, config, f"{folder}: its tokenizer ({tokenizer_file})")
    stored = {"model_config": asdict(config), "hf_config": hf, "weights_file": export.weights_file(folder).name,
              "tokenizer_file": tokenizer_file, **({"classifier": classifier} if classifier else {})}  # fmt: skip
    return Loaded(model.to(device).eval(), tokenizer, folder, stored, source, name or str(folder),
                  named_chat_template(export.read_chat_template(folder)))


def named_chat_template(stored: dict | None) -> dict | None:
    """A folder's chat template, named when it is one of ours (an export of a run trained on
    instruction records), so predict --chat can render it; a foreign one keeps name None."""
    from .instruct import template_by_jinja

    known = template_by_jinja(stored["jinja"]) if stored is not None else None
    return known.to_checkpoint() if known is not None else stored


def build_model(config: GPT2Config, weights, context: str) -> GPT2:
    """A model of `config` holding `weights`; a CheckpointError "context: why" when they do not fit."""
    model = GPT2(config)
    problem = weights_problem(model, weights)
    if problem:
        raise CheckpointError(f"{context}: {problem}")
    model.load_state_dict(weights)
    return model


def weights_problem(model: GPT2, weights) -> str | None:
    """Why a state dict cannot be loaded into `model`, in one line; None when it can.

    An embedding of vocab_size rows stands for the padded one (GPT2.load_state_dict pads it)."""
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        return "the weights are not a dict of tensors"
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    config = model.config
    wrong = []
    for name, t in weights.items():
        want = expected.get(name)
        unpadded = name in ("wte.weight", "lm_head.weight") and tuple(t.shape) == (config.vocab_size, config.n_embd)
        if want is not None and tuple(t.shape) != want and not unpadded:
            wrong.append(f"{name} is {_shape(t.shape)}, the config needs {_shape(want)}")
    problems = [f"{what} {_some(names)}" for what, names in (("missing", missing), ("unexpected", unexpected)) if names]
    problems += wrong[:3] + ([f"and {len(wrong) - 3} more of another shape"] if len(wrong) > 3 else [])
    return "; ".join(problems) or None


def read_tokenizer(checkpoint: dict, path: Path, config: GPT2Config) -> BPE | None:
    """The tokenizer stored beside the model (None if there is none), checked against the model."""
    stored = checkpoint.get("tokenizer")
    if stored is None:
        return None
    if not isinstance(stored, dict) or not isinstance(stored.get("text"), str):
        raise CheckpointError(f"{path}: its tokenizer entry is not a vocab text")
    try:
        tokenizer = BPE.from_text(stored["text"], f"{path} (its tokenizer)")
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None
    if stored.get("hash") not in (None, tokenizer.hash):
        raise CheckpointError(f"{path}: its tokenizer does not match the hash recorded beside it (a damaged file?)")
    check_tokenizer_fits(tokenizer, config, f"{path}: its tokenizer")
    return tokenizer


def check_tokenizer_fits(tokenizer: BPE | None, config: GPT2Config, what: str) -> None:
    """The model has an embedding row for every token of the tokenizer stored with it."""
    problem = vocab_problem(tokenizer, what, config) if tokenizer is not None else None
    if problem:
        raise CheckpointError(problem)


def vocab_problem(vocab: BPE, vocab_name: str, config: GPT2Config, own: BPE | None = None,
                  model_name: str = "the model") -> str | None:  # fmt: skip
    """Why a vocab cannot be used with a model, in one line; None when it can. The one check of a
    vocab against a model (the loader, main.py and check_checkpoint.py call it): a model that has its
    own tokenizer (`own`) takes that one alone, the same hash; any vocab must fit its embedding."""
    if own is not None and own.hash != vocab.hash:
        return (f"{vocab_name} (hash {vocab.hash[:12]}, {vocab.vocab_size} tokens) is not the tokenizer {model_name} "
                f"was trained with (hash {own.hash[:12]}, {own.vocab_size} tokens)")
    if vocab.vocab_size > config.vocab_size:
        return f"{vocab_name} has {vocab.vocab_size} tokens but the model's embedding only {config.vocab_size} rows"
    return None


def read_chat_template(checkpoint: dict, path: Path) -> dict | None:
    """The chat template a run trained on instructions stored: {"name": str | None, "jinja": str}."""
    stored = checkpoint.get("chat_template")
    if stored is None:
        return None
    if not (isinstance(stored, dict) and isinstance(stored.get("jinja"), str)
            and isinstance(stored.get("name"), (str, type(None)))):  # fmt: skip
        raise CheckpointError(f"{path}: its chat_template entry is not {{'name': a str or None, 'jinja': a str}}")
    return {"name": stored.get("name"), "jinja": stored["jinja"]}


# ---- a model to use, with its tokenizer -----------------------------------------------------------


def load_with_tokenizer(name: str, device: str = "auto", vocab_file: str | None = None,
                        how_to_give_vocab: str = "give its vocab file") -> Loaded:  # fmt: skip
    """A model by name (see load) and a tokenizer to use it with, on `device` (auto: the best here).
    A vocab file given beside the model must be the model's own tokenizer (vocab_problem); it stands
    in for a missing one. A model with neither is refused (how_to_give_vocab says what to do)."""
    from .hardware import pick_device

    check_model_name(name)
    loaded = load(name, pick_device(device))
    if vocab_file is not None:
        given = BPE.load(vocab_file)
        problem = vocab_problem(given, vocab_file, loaded.model.config, loaded.tokenizer, name)
        if problem:
            raise UserError(problem)
        loaded = replace(loaded, tokenizer=given)
    if loaded.tokenizer is None:
        raise UserError(f"{name} holds no tokenizer ({why_no_tokenizer(loaded)}): {how_to_give_vocab}")
    return loaded


def check_model_name(name: str) -> None:
    """A model name that names nothing here, refused before any slow work; for the default name,
    with how to make that model."""
    if os.path.exists(name):
        return
    if name == DEFAULT_MODEL:
        raise UserError(f"model not found: {name} (train one with: python main.py train <text file>)")
    if not looks_like_hub_name(name):
        raise CheckpointError(f"model not found: {name} (no such checkpoint file or model folder)")


def why_no_tokenizer(loaded: Loaded) -> str:
    """Why a loaded model came without a tokenizer, in a few words."""
    return "it was saved by GPT2.save" if loaded.source == "checkpoint" else "its folder has no tokenizer files"


# ---- hub names -----------------------------------------------------------------------------------

# A hub repository id: NAME or OWNER/NAME, letters, digits, "-", "_" and "." (no "--" or ".."). A
# name ending like one of our files (model.pt) is a path that is missing, not a repository.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".txt", ".json")
# The files a hub model needs (its weights are asked for apart: see hub_folder).
HUB_FILES = ["config.json", "generation_config.json", *export.TOKENIZER_FILES]


def looks_like_hub_name(name: str) -> bool:
    """Could `name` be a Hugging Face hub repository (gpt2, openai-community/gpt2)?"""
    return bool(_HUB_NAME.fullmatch(name)) and "--" not in name and ".." not in name \
        and not name.lower().endswith(_FILE_SUFFIXES)


def hub_folder(name: str) -> Path:
    """The folder of a hub model in the Hugging Face cache: looked up there first, without the
    network; downloaded into it when it is not there (model.safetensors, or pytorch_model.bin when
    the repository has no safetensors, and the config and tokenizer files: nothing else)."""
    try:
        from huggingface_hub import constants, errors, snapshot_download
    except ImportError:
        raise CheckpointError(f"model not found: {name} is no file or folder here, and huggingface_hub, which "
                              f"fetches hub models, is not installed (pip install huggingface_hub)") from None
    cache = _home_as_tilde(constants.HF_HUB_CACHE)
    try:
        folder = _cached_snapshot(name, snapshot_download, errors)
        if folder is not None and export.weights_file(folder) is not None:
            return folder
        if constants.HF_HUB_OFFLINE:
            raise errors.OfflineModeIsEnabled("HF_HUB_OFFLINE is set")
        folder = Path(snapshot_download(name, allow_patterns=[*HUB_FILES, "model.safetensors"]))
        if export.weights_file(folder) is None:
            folder = Path(snapshot_download(name, allow_patterns=[*HUB_FILES, "pytorch_model.bin"]))
    except errors.GatedRepoError:
        raise CheckpointError(f"{name} is a gated model on the Hugging Face hub: accept its terms on its page, "
                              f"then log in (hf auth login)") from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(f"model not found: {name} is no file or folder here, nor a model on the Hugging Face "
                              f"hub (a private one needs: hf auth login)") from None
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        why = "HF_HUB_OFFLINE is set" if isinstance(e, errors.OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE \
            else "no connection"
        raise CheckpointError(f"model not found: {name} is no file or folder here and is not in the Hugging Face "
                              f"cache ({cache}), and the hub cannot be reached ({why}): connect once, or download "
                              f"the model folder elsewhere and pass its path") from None
    except (errors.HfHubHTTPError, errors.HFValidationError, OSError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot fetch {name} from the Hugging Face hub: {first_line}") from None
    if export.weights_file(folder) is None:
        raise CheckpointError(f"{name} on the Hugging Face hub has no model.safetensors or pytorch_model.bin")
    return folder


def _cached_snapshot(name: str, snapshot_download, errors) -> Path | None:
    """The folder of the model's snapshot in the cache, without the network; None when there is none."""
    try:
        return Path(snapshot_download(name, allow_patterns=["config.json"], local_files_only=True))
    except errors.LocalEntryNotFoundError:
        return None


def _home_as_tilde(path) -> str:
    home = os.path.expanduser("~")
    path = str(path)
    return "~" + path[len(home) :] if home not in ("", "/") and path.startswith(home + os.sep) else path


def _shape(shape) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
