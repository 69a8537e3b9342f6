"""Classifiers to and from transformers' folders (export.py, loading.py): an exported GPT2Classifier
is the ...ForSequenceClassification of its shape with the same logits (padded batches included),
and such a folder, ours or one transformers wrote, loads back as a classifier."""

import json
from pathlib import Path

import pytest
import torch

from bpe import BPE, UserError
from gpt2_llm import GPT2, GPT2Config, load, save_checkpoint
from gpt2_llm.classifier import GPT2Classifier
from gpt2_llm.export import export_folder, write_model
from gpt2_llm.tests.conftest import assert_close, run_main, some_text

transformers = pytest.importorskip("transformers")

NAMES = ["negative", "neutral", "positive"]
TEXTS = ["A short one.", "a text of middling length, with a comma", "x",
         ("And the longest of the four texts here, which goes on for a while so that the others are padded well "
          "past their ends.")]  # fmt: skip
LLAMA = {"norm": "rmsnorm", "mlp": "swiglu", "rope": True, "bias": False, "rope_base": 1000.0, "layer_norm_eps": 1e-6,
         "n_head": 4}  # fmt: skip
SHAPES = {
    "gpt2": ({}, "GPT2ForSequenceClassification"),
    "llama tied": (dict(LLAMA, n_kv_head=2), "LlamaForSequenceClassification"),
    "llama untied": (dict(LLAMA, n_kv_head=1, tie_embeddings=False), "LlamaForSequenceClassification"),
    "qwen3 untied": (dict(LLAMA, qk_norm=True, tie_embeddings=False), "Qwen3ForSequenceClassification"),
}


@pytest.fixture(scope="module")
def tokenizer() -> BPE:
    return BPE.train(some_text(20000), vocab_size=300, special_tokens=("<|endoftext|>",))


def random_classifier(tokenizer: BPE, **shape) -> GPT2Classifier:
    """A random classifier of the tokenizer's vocabulary, padded with <|endoftext|>; its weights moved
    off their small init, so the logits differ from row to row and class to class."""
    torch.manual_seed(3)
    config = GPT2Config(**{"vocab_size": tokenizer.vocab_size, "n_layer": 2, "n_head": 2, "n_embd": 32,
                           "block_size": 128, **shape})  # fmt: skip
    model = GPT2Classifier(GPT2(config), NAMES, pad_id=tokenizer.special_tokens["<|endoftext|>"]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.gpt.wte.weight[tokenizer.vocab_size :] = 0.0  # the padding rows stay zero, as GPT2 makes them
    return model


def padded(tokenizer: BPE, pad_id: int) -> torch.Tensor:
    """TEXTS as ids, right-padded with pad_id to the longest."""
    rows = [tokenizer.encode_ordinary(text) for text in TEXTS]
    width = max(map(len, rows))
    return torch.tensor([row + [pad_id] * (width - len(row)) for row in rows])


def save(path: Path, model: GPT2Classifier, tokenizer: BPE) -> Path:
    """The classifier as a checkpoint of ours (as train --classify stores it), with its tokenizer."""
    from dataclasses import asdict

    entries = model.checkpoint_entries(model.state_dict())
    save_checkpoint(path, {"model_config": asdict(model.config), **entries,
                           "tokenizer": {"text": tokenizer.to_text(), "hash": tokenizer.hash}})  # fmt: skip
    return path


@pytest.mark.parametrize("kind", SHAPES)
def test_an_exported_classifier_is_transformers_sequence_classifier_with_the_same_logits(tokenizer, tmp_path, kind):
    shape, hf_class = SHAPES[kind]
    model = random_classifier(tokenizer, **shape)
    out = tmp_path / "out"
    result = run_main("export", save(tmp_path / "m.pt", model, tokenizer), out, text=True)
    assert result.returncode == 0, result.stderr
    assert f"({hf_class}, " in result.stdout and "AutoModelForSequenceClassification.from_pretrained" in result.stdout
    assert "generation_config.json" not in {p.name for p in out.iterdir()}  # a classifier generates nothing
    config = json.loads((out / "config.json").read_text())
    pad = tokenizer.special_tokens["<|endoftext|>"]
    assert (config["architectures"], config["num_labels"], config["pad_token_id"]) == ([hf_class], 3, pad)
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(hf) is getattr(transformers, hf_class) and hf.config.id2label == dict(enumerate(NAMES))
    ids = padded(tokenizer, pad)
    # transformers' tokenizer names the pad token, and pads a batch as we do (on the right).
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    batch = hf_tok(TEXTS, padding=True, return_tensors="pt")
    assert hf_tok.pad_token == "<|endoftext|>" and torch.equal(batch["input_ids"], ids)
    with torch.no_grad():
        ours = model(ids)[0]
        assert_close(hf(ids).logits, ours, atol=1e-4)
        assert_close(hf(**batch).logits, ours, atol=1e-4)  # with the attention mask too
        assert ours.std(dim=0).min() > 0.01  # rows that differ: a wrong last position would show
    # ...and back through our loader: a classifier with the same names, pad token and logits.
    again = load(out)
    assert type(again.model) is GPT2Classifier and again.classes == NAMES and again.model.pad_id == pad
    assert again.tokenizer.hash == tokenizer.hash
    with torch.no_grad():
        assert_close(again.model(ids)[0], ours, atol=1e-6)


def test_a_shape_without_a_transformers_classifier_is_refused_in_one_line(tokenizer, tmp_path):
    model = random_classifier(tokenizer, **dict(LLAMA, mlp="relu2", qk_norm=True))  # Apertus's shape
    for write in (lambda: export_folder(model, tokenizer, tmp_path / "out"), lambda: write_model(model, tmp_path / "w")):
        with pytest.raises(UserError) as error:
            write()
        message = str(error.value)
        assert "\n" not in message and "there is no ApertusForSequenceClassification" in message, message
    assert not (tmp_path / "out").exists()


def hf_gpt2_classifier(tmp_path: Path, tokenizer: BPE) -> Path:
    """A folder transformers itself wrote: GPT2ForSequenceClassification.from_pretrained on a GPT-2
    folder (num_labels and pad_token_id given, a new random score), then save_pretrained."""
    torch.manual_seed(4)
    gpt = GPT2(GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=128))
    write_model(gpt, tmp_path / "lm", tokenizer)
    pad = tokenizer.special_tokens["<|endoftext|>"]
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=3, pad_token_id=pad)
    with torch.no_grad():
        hf.score.weight.normal_(std=1.0)
    hf.save_pretrained(tmp_path / "cls")
    return tmp_path / "cls"


def test_a_classifier_transformers_saved_loads_as_ours_with_the_same_logits(tokenizer, tmp_path):
    folder = hf_gpt2_classifier(tmp_path, tokenizer)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    loaded = load(folder)
    pad = tokenizer.special_tokens["<|endoftext|>"]
    assert type(loaded.model) is GPT2Classifier and loaded.model.pad_id == pad
    assert loaded.classes == ["LABEL_0", "LABEL_1", "LABEL_2"]  # transformers' own names, by id
    assert loaded.checkpoint["classifier"]["pad_id"] == pad
    ids = padded(tokenizer, pad)
    with torch.no_grad():
        assert_close(loaded.model(ids)[0], hf(ids).logits, atol=1e-4)


def test_a_transformers_llama_classifier_without_a_head_loads_with_its_names_by_id(tmp_path):
    """LlamaForSequenceClassification saves no lm_head, even untied: ours ties it (the classifier
    never reads it). id2label's names come in the order of their ids, whatever the file's order."""
    torch.manual_seed(5)
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, initializer_range=0.1, pad_token_id=0,
        id2label={2: "c", 0: "a", 1: "b"})  # fmt: skip
    hf = transformers.LlamaForSequenceClassification(config).eval()
    hf.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is False
    loaded = load(tmp_path)
    assert loaded.classes == ["a", "b", "c"] and loaded.model.pad_id == 0 and loaded.model.config.tie_embeddings
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0], [14, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        assert_close(loaded.model(ids)[0], hf(ids).logits, atol=1e-4)


def edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("change,message", [
    (lambda c: c.pop("pad_token_id"), "has no pad_token_id (a token id), which a classifier needs"),
    (lambda c: c.update(pad_token_id=10**6), "has no pad_token_id (a token id)"),
    (lambda c: c.update(id2label={"0": "a", "2": "b", "3": "c"}), "id2label does not name its 3 classes"),
    (lambda c: c.update(id2label={"0": "a", "1": "a", "2": "c"}), "id2label does not name its 3 classes"),
    (lambda c: c.update(id2label=["a", "b", "c"]), "id2label is not an object of id -> class name"),
    (lambda c: c.update(problem_type="multi_label_classification"), "picks one class per text"),
], ids=["no pad", "pad out of range", "id gap", "one name twice", "a list", "multi-label"])  # fmt: skip
def test_a_classification_folder_we_cannot_read_is_one_line(tokenizer, tmp_path, change, message):
    folder = hf_gpt2_classifier(tmp_path, tokenizer)
    edit_config(folder, change)
    with pytest.raises(UserError) as error:
        load(folder)
    assert "\n" not in str(error.value) and str(folder) in str(error.value) and message in str(error.value)


def test_a_classification_folder_without_its_score_is_one_line(tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = hf_gpt2_classifier(tmp_path, tokenizer)
    state = load_file(folder / "model.safetensors")
    del state["score.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(UserError, match=r"names GPT2ForSequenceClassification, but its weights have no score\.weight"):
        load(folder)
