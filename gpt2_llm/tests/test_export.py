"""Tests of gpt2_llm/export.py, and of loading transformers' folders: the same logits, greedy text,
loss and token ids as transformers itself, both ways, and one line for each refusal."""

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import main
from bpe import BPE, TokenizerError, UserError
from gpt2_llm import GPT2, CheckpointError, GPT2Config, load, save_checkpoint
from gpt2_llm.export import export_folder, model_from_hf, onig_pattern, write_model
from gpt2_llm.loading import looks_like_hub_name
from gpt2_llm.tests.conftest import assert_close, hub_offline, run_main

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
SPECIALS = ("<|endoftext|>", "<|extra|>")
# Text that tokenizers split in many ways: emoji (4-byte UTF-8), CRLF, runs of spaces and blank
# lines, digit runs (GPT-4's pattern cuts them in threes), contractions, special tokens in the text.
EDGES = ("Hello world!  Two  spaces,\tthen a tab.\r\nCRLF line\r\n\r\n   indented\n\n\nend   \n"
         "😀🎉👍🏽 emoji, 12345678, 20202020 and 3.14159, don't DON'T we'll I'M; <|endoftext|>after<|extra|> x "
         "<|endoftext|><|endoftext|>\u00a0nbsp\u2028sep \u3000ideographic space")  # fmt: skip


def spread(text: str, pieces: int, size: int, offset: int = 0) -> str:
    """Pieces of `size` characters from across the whole text: every script of multilingual.txt."""
    step = len(text) // pieces
    return "".join(text[i + offset : i + offset + size] for i in range(0, step * pieces, step))


@pytest.fixture(scope="module")
def multilingual(data_dir) -> str:
    return (data_dir / "multilingual.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def sample(multilingual) -> str:
    return spread(multilingual, 40, 2500, offset=1000) + EDGES


# ---- transformers folders in, through the one loader -----------------------------------------


def random_hf_model(vocab_size=50257, n_positions=64):
    """A random transformers GPT-2, tiny but for GPT-2's vocabulary. A larger init than GPT-2's
    spreads the logits, so greedy choices are never near-ties; LayerNorms and biases are moved
    off their init, so a swapped weight shows."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                                     initializer_range=0.1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


TOKENIZER_KINDS = ("tokenizer.json", "vocab.json + merges.txt", "encoder.json + vocab.bpe")


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory, data_dir) -> dict[str, Path]:
    """One random model saved by save_pretrained, in three folders that differ by their tokenizer
    files: GPT-2's own tokenizer as tokenizer.json (written by transformers), as vocab.json +
    merges.txt, and as OpenAI's encoder.json + vocab.bpe (the same content)."""
    base = tmp_path_factory.mktemp("hf")
    random_hf_model().save_pretrained(base / "model")
    pair = base / "pair"
    pair.mkdir()
    shutil.copy(data_dir / "gpt2" / "encoder.json", pair / "vocab.json")
    shutil.copy(data_dir / "gpt2" / "vocab.bpe", pair / "merges.txt")
    folders = {}
    for kind in TOKENIZER_KINDS:
        folder = folders[kind] = base / kind.split(" ")[0].replace(".", "_")
        shutil.copytree(base / "model", folder)
        if kind == "tokenizer.json":
            transformers.GPT2TokenizerFast.from_pretrained(pair).save_pretrained(folder)
            assert (folder / "tokenizer.json").is_file() and not (folder / "vocab.json").exists()
        else:
            for name, source in zip(kind.split(" + "), ("encoder.json", "vocab.bpe")):
                shutil.copy(data_dir / "gpt2" / source, folder / name)
    return folders


@pytest.fixture(scope="module")
def gpt2_tokenizer(data_dir) -> BPE:
    return BPE.from_gpt2(data_dir / "gpt2" / "encoder.json", data_dir / "gpt2" / "vocab.bpe")


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_a_transformers_folder_loads_with_each_kind_of_tokenizer_file(hf_folders, gpt2_tokenizer, kind):
    loaded = load(hf_folders[kind])
    assert (loaded.source, loaded.path, loaded.checkpoint["tokenizer_file"]) == ("folder", hf_folders[kind], kind)
    assert loaded.tokenizer.hash == gpt2_tokenizer.hash and not loaded.can_resume
    assert GPT2Config.from_dict(loaded.checkpoint["model_config"]) == loaded.model.config
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_folders[kind]).eval()
    ids = torch.randint(0, 50257, (2, 40))
    with torch.no_grad():
        assert_close(loaded.model(ids)[0], hf(ids).logits, atol=1e-5)


def main_py(*args) -> subprocess.CompletedProcess:
    """`python main.py ARGS`, run in this process (see run_main): stdout and stderr as text."""
    return run_main(*args, text=True)


def test_greedy_predict_on_a_folder_is_transformers_generate(hf_folders):
    folder, prompt, new = hf_folders["tokenizer.json"], "The meaning of life is", 30
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = hf_tok(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = hf.generate(ids, max_new_tokens=new, do_sample=False)[0, ids.size(1) :].tolist()
    out = out[: out.index(50256)] if 50256 in out else out  # predict stops at <|endoftext|>, as generate does
    result = main_py("predict", prompt, new, folder, "--greedy", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout == prompt + hf_tok.decode(out) + "\n"
    assert len(out) > 10  # enough new text to compare


def test_eval_on_a_folder_is_the_loss_transformers_computes(hf_folders, data_dir, tmp_path):
    folder = hf_folders["vocab.json + merges.txt"]
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:3000]
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    result = main_py("eval", tmp_path / "text.txt", folder, "--dtype", "float32", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    loss = float(result.stdout.split("loss ")[1].split(",")[0])
    ids = transformers.AutoTokenizer.from_pretrained(folder)(text)["input_ids"]
    n = (len(ids) - 1) // 64  # eval's windows: 64 predicted tokens each, without overlap
    windows = torch.tensor(ids[: n * 64 + 1]).unfold(0, 65, 64)  # (n, 65): 64 inputs, each with its next token
    with torch.no_grad():
        logits = transformers.AutoModelForCausalLM.from_pretrained(folder)(windows[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    assert loss == pytest.approx(expected, abs=1e-4)  # eval prints 4 decimals


# ---- our checkpoints out, and back -------------------------------------------------------------


def trained_tokenizer(multilingual: str, pattern: str) -> BPE:
    years = " ".join(str(year) for year in range(1900, 2030)) * 3  # merges of digits, which the patterns cut apart
    return BPE.train(spread(multilingual, 40, 1500) + years, vocab_size=600, pattern=pattern, special_tokens=SPECIALS)


def checkpoint_of(path: Path, tokenizer: BPE, chat_template: dict | None = None, **shape) -> GPT2:
    """A random model of the tokenizer's vocabulary (moved away from GPT-2's small init, so its
    logits are not all near zero) saved as a checkpoint that holds the tokenizer."""
    torch.manual_seed(1)
    config = GPT2Config(**{"vocab_size": tokenizer.vocab_size, "n_layer": 2, "n_head": 2, "n_embd": 32,
                            "block_size": 64, **shape})
    model = GPT2(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.wte.weight[tokenizer.vocab_size :] = 0.0  # the padding rows stay zero, as GPT2 makes them
        model.lm_head.weight[tokenizer.vocab_size :] = 0.0
    extra = {"chat_template": chat_template} if chat_template else {}
    save_checkpoint(path, {"model_config": asdict(model.config), "model": model.state_dict(),
                           "tokenizer": {"text": tokenizer.to_text(), "hash": tokenizer.hash}, **extra})
    return model


def assert_same_ids(folder: Path, tokenizer: BPE, text: str) -> None:
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    ours = tokenizer.encode(text, allowed_special="all")
    theirs = hf(text, add_special_tokens=False)["input_ids"]
    if ours != theirs:
        i = next(i for i, (a, b) in enumerate(zip(ours + [-1], theirs + [-1])) if a != b)
        pytest.fail(f"first difference at token {i}: ours {tokenizer.token_pieces(ours[i : i + 3])}, "
                    f"transformers' {hf.convert_ids_to_tokens(theirs[i : i + 3])}")
    assert hf.decode(theirs) == text


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_an_exported_checkpoint_is_the_same_model_and_tokenizer_in_transformers(multilingual, sample, tmp_path,
                                                                                 pattern):  # fmt: skip
    tokenizer = trained_tokenizer(multilingual, pattern)
    template = {"name": "chat", "jinja": "{% for m in messages %}<|extra|>{{ m['content'] }}{% endfor %}"}
    model = checkpoint_of(tmp_path / "m.pt", tokenizer, template)
    exported = main_py("export", tmp_path / "m.pt", tmp_path / "out")
    assert exported.returncode == 0 and "(GPT2LMHeadModel, " in exported.stdout, exported.stderr
    out = tmp_path / "out"
    gpt2_pair = {"vocab.json", "merges.txt"} if pattern == "gpt2" else set()  # files that imply GPT-2's pattern
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "generation_config.json",
                                               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                               *gpt2_pair}  # fmt: skip
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf) is transformers.GPT2LMHeadModel  # GPT-2's shape stays GPT-2's class
    ids = torch.randint(0, tokenizer.vocab_size, (2, 64))
    with torch.no_grad():
        assert_close(hf(ids).logits, model(ids)[0], atol=1e-4)
    assert_same_ids(out, tokenizer, sample)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.model_max_length == 64
    assert hf.config.eos_token_id == tokenizer.special_tokens["<|endoftext|>"]
    chat = hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|extra|>hi"
    # ...and back through our own loader: the same tokenizer (hash), logits and template.
    again = load(out)
    assert again.tokenizer.hash == tokenizer.hash and again.tokenizer.pattern == tokenizer.pattern
    assert torch.equal(again.model(ids)[0], model(ids)[0])
    assert again.chat_template == {"name": None, "jinja": template["jinja"]}


def test_gpt2s_own_tokenizer_exports_to_the_same_ids(gpt2_tokenizer, sample, tmp_path, data_dir):
    model = checkpoint_of(tmp_path / "m.pt", gpt2_tokenizer)
    files = export_folder(model, gpt2_tokenizer, tmp_path / "out")
    assert "vocab.json" in files and "merges.txt" in files
    assert_same_ids(tmp_path / "out", gpt2_tokenizer, sample)
    # vocab.json + merges.txt are GPT-2's own files, entry for entry and line for line.
    data = data_dir / "gpt2"
    assert json.loads((tmp_path / "out" / "vocab.json").read_text()) == json.loads((data / "encoder.json").read_text())
    ours_merges = (tmp_path / "out" / "merges.txt").read_text().split("\n")[1:]
    assert ours_merges == (data / "vocab.bpe").read_text().split("\n")[1:]
    assert load(tmp_path / "out").tokenizer.hash == gpt2_tokenizer.hash


def test_onig_pattern_keeps_gpt4s_digit_groups():
    tokenizers = pytest.importorskip("tokenizers")
    from bpe import GPT2_PATTERN, GPT4_PATTERN

    assert onig_pattern(GPT2_PATTERN) == GPT2_PATTERN
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(onig_pattern(GPT4_PATTERN)), behavior="isolated")
    assert [piece for piece, _ in split.pre_tokenize_str("12345678 x")] == ["123", "456", "78", " x"]
    raw = tokenizers.pre_tokenizers.Split(tokenizers.Regex(GPT4_PATTERN), behavior="isolated")
    assert [piece for piece, _ in raw.pre_tokenize_str("12345678")] == ["12345678"]  # why the rewrite is needed
    with pytest.raises(TokenizerError, match="inside a group"):
        onig_pattern(r"(?:\d{1,3}+x)|y")


# ---- the Llama family's shapes: LlamaForCausalLM, Qwen3ForCausalLM, ApertusForCausalLM, both ways ----

# Llama's shape, with a RoPE base and epsilon of its own, so a base or epsilon left behind shows
# (Apertus's config would take 12e6 and 1e-5, its llama3-scaled RoPE and xielu).
LLAMA = dict(norm="rmsnorm", mlp="swiglu", rope=True, bias=False, rope_base=1000.0, layer_norm_eps=1e-6)
QWEN3 = dict(LLAMA, qk_norm=True)
APERTUS = dict(LLAMA, mlp="relu2", qk_norm=True)


@pytest.fixture(scope="module")
def learned(multilingual) -> BPE:
    return trained_tokenizer(multilingual, "gpt2")


def greedy_pair(folder: Path, ours_model, prompt: str, capsys, new: int = 30) -> tuple[str, str, int]:
    """(main.py predict --greedy on ours_model, the same prompt through transformers' generate on the
    folder, the new tokens transformers made). Both stop at <|endoftext|>."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = hf_tok(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = hf.generate(ids, max_new_tokens=new, do_sample=False)[0, ids.size(1) :].tolist()
    eot = hf.generation_config.eos_token_id
    out = out[: out.index(eot)] if eot in out else out
    capsys.readouterr()
    assert main.main(["predict", prompt, str(new), str(ours_model), "--greedy", "--device", "cpu"]) == 0
    return capsys.readouterr().out, prompt + hf_tok.decode(out) + "\n", len(out)


@pytest.mark.parametrize("shape,hf_class,act,kv_heads,tied", [
    *[(LLAMA, "LlamaForCausalLM", "silu", k, t) for k in (1, 2, None) for t in (True, False)],
    (QWEN3, "Qwen3ForCausalLM", "silu", 2, False), (QWEN3, "Qwen3ForCausalLM", "silu", None, True),
    (APERTUS, "ApertusForCausalLM", "relu2", 2, False), (APERTUS, "ApertusForCausalLM", "relu2", 1, True),
], ids=[*[f"llama K={k} {t}" for k in (1, 2, 4) for t in ("tied", "untied")], "qwen3 K=2 untied", "qwen3 K=4 tied",
        "apertus K=2 untied", "apertus K=1 tied"])  # fmt: skip
def test_a_llama_family_checkpoint_exports_to_its_class_with_the_same_logits_and_greedy_text(
        learned, tmp_path, capsys, shape, hf_class, act, kv_heads, tied):  # fmt: skip
    """In float32 the logits agree within 1e-5, the greedy text is the same, and the folder reads back
    into ours exactly."""
    model = checkpoint_of(tmp_path / "m.pt", learned, n_head=4, n_kv_head=kv_heads, tie_embeddings=tied, **shape)
    out = tmp_path / "out"
    assert main.main(["export", str(tmp_path / "m.pt"), str(out)]) == 0
    assert f"({hf_class}, " in capsys.readouterr().out
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf) is getattr(transformers, hf_class)
    c, eot = hf.config, learned.special_tokens["<|endoftext|>"]
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size, c.tie_word_embeddings,
            c.rms_norm_eps, c.rope_parameters, c.hidden_act, c.max_position_embeddings, c.vocab_size, c.bos_token_id,
            c.eos_token_id, c.pad_token_id, c.attention_bias) \
        == (4, kv_heads or 4, 8, model.config.mlp_size, tied, 1e-6, {"rope_type": "default", "rope_theta": 1000.0},
            act, 64, learned.vocab_size, eot, eot, None, False)  # fmt: skip
    assert hf.model.rotary_emb.rope_type == "default"
    ids = torch.randint(0, learned.vocab_size, (2, 64))
    with torch.no_grad():
        assert_close(hf(ids).logits, model(ids)[0], atol=1e-5)
    ours, theirs, new = greedy_pair(out, tmp_path / "m.pt", "The meaning of life is", capsys)
    assert ours == theirs and new > 10
    # ...and back through our own loader: the same config, weights, logits and tokenizer.
    again = load(out)
    assert again.model.config == model.config and again.tokenizer.hash == learned.hash
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), model.state_dict().values()))
    assert torch.equal(again.model(ids)[0], model(ids)[0])


def test_transformers_relu2_is_our_relu2_bit_for_bit():
    """Apertus's hidden_act "relu2" is ACT2FN's relu(x)², the MLP ours computes with --mlp relu2."""
    from transformers.activations import ACT2FN

    from gpt2_llm.decoder import MLP

    mlp = MLP(GPT2Config(vocab_size=10, n_layer=1, n_head=2, n_embd=8, block_size=8, mlp="relu2", bias=False))
    x = torch.randn(4, 8) * 3
    with torch.no_grad():
        assert torch.equal(mlp.c_proj(ACT2FN["relu2"](mlp.c_fc(x))), mlp(x))


def test_llama_rotary_layout_is_ours_and_the_other_layout_would_show(learned, tmp_path):
    """Our RoPE turns channel i with i + hs/2, as transformers' Llama does, so the export copies q and k
    rows as they are. Meta's layout (neighbouring channels turned together) gives other logits:
    the exports' logit test sees a wrong layout."""
    model = checkpoint_of(tmp_path / "m.pt", learned, n_head=4, n_kv_head=2, **LLAMA)
    export_folder(model, learned, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, learned.vocab_size, (2, 64))
    with torch.no_grad():
        assert_close(hf(ids).logits, model(ids)[0], atol=1e-4)
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                heads = proj.weight.size(0) // 8  # head size 8: rows (i, i + 4) of each head side by side
                proj.weight.copy_(proj.weight.view(heads, 2, 4, -1).transpose(1, 2).reshape_as(proj.weight))
        assert (hf(ids).logits - model(ids)[0]).abs().max() > 1e-2


def random_llama_folder(folder: Path, tokenizer_folder: Path, kv_heads: int, tied: bool):
    """A random transformers Llama of GPT-2's vocabulary saved by save_pretrained, with GPT-2's
    tokenizer files. Its MLP width (80), RoPE base and epsilon are not ours by default, a wide init
    keeps greedy choices off near-ties, and the norms' gains are moved off 1, so a swapped one shows."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=50257, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0}, initializer_range=0.1,
        bos_token_id=50256, eos_token_id=50256)  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_folder / name, folder / name)
    return model


@pytest.fixture(scope="module")
def llama_folder(hf_folders, tmp_path_factory) -> Path:
    """A random transformers Llama (2 key/value heads, untied head) with GPT-2's tokenizer."""
    folder = tmp_path_factory.mktemp("llama") / "llama"
    random_llama_folder(folder, hf_folders["tokenizer.json"], kv_heads=2, tied=False)
    return folder


@pytest.mark.parametrize("kv_heads,tied", [(2, False), (1, True)], ids=["K=2 untied", "K=1 tied"])
def test_a_transformers_llama_folder_loads_with_the_same_logits_and_greedy_text(hf_folders, gpt2_tokenizer, tmp_path,
                                                                                capsys, kv_heads, tied):  # fmt: skip
    hf = random_llama_folder(tmp_path / "llama", hf_folders["tokenizer.json"], kv_heads, tied)
    loaded = load(tmp_path / "llama")
    c = loaded.model.config
    assert (c.norm, c.mlp, c.rope, c.bias, c.qk_norm, c.kv_heads, c.tie_embeddings, c.mlp_size, c.rope_base,
            c.layer_norm_eps, c.block_size) == ("rmsnorm", "swiglu", True, False, False, kv_heads, tied, 80, 500.0,
                                                 1e-5, 64)  # fmt: skip
    assert loaded.tokenizer.hash == gpt2_tokenizer.hash and loaded.checkpoint["hf_config"]["model_type"] == "llama"
    ids = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        assert_close(loaded.model(ids)[0], hf(ids).logits, atol=1e-5)
    ours, theirs, new = greedy_pair(tmp_path / "llama", tmp_path / "llama", "The meaning of life is", capsys)
    assert ours == theirs and new > 10


def test_a_llama_config_of_transformers_4_reads_its_rope_base_beside_the_settings(llama_folder, tmp_path):
    """transformers 4 wrote rope_theta at the top and rope_scaling (null) instead of rope_parameters."""
    folder = Path(shutil.copytree(llama_folder, tmp_path / "v4"))
    edit_json(folder / "config.json", lambda c: c.update(rope_parameters=None, rope_scaling=None, rope_theta=500.0))
    assert load(folder).model.config == load(llama_folder).model.config
    edit_json(folder / "config.json", lambda c: c.update(rope_theta=700.0))
    assert load(folder).model.config.rope_base == 700.0


def test_eval_and_fine_tuning_work_on_a_llama_folder(llama_folder, data_dir, tmp_path, capsys):
    """eval gives transformers' loss; train --init-from -> export gives a LlamaForCausalLM with the
    same greedy text as predict on the tuned checkpoint."""
    text = tmp_path / "text.txt"
    text.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:8_000], encoding="utf-8")
    assert main.main(["eval", str(text), str(llama_folder), "--dtype", "float32", "--device", "cpu"]) == 0
    loss = float(capsys.readouterr().out.split("loss ")[1].split(",")[0])
    ids = transformers.AutoTokenizer.from_pretrained(llama_folder)(text.read_text(encoding="utf-8"))["input_ids"]
    n = (len(ids) - 1) // 64  # eval's windows: 64 predicted tokens each, without overlap
    windows = torch.tensor(ids[: n * 64 + 1]).unfold(0, 65, 64)
    with torch.no_grad():
        logits = transformers.AutoModelForCausalLM.from_pretrained(llama_folder)(windows[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).item()
    assert loss == pytest.approx(expected, abs=1e-4)  # eval prints 4 decimals

    tuned, out = tmp_path / "tuned.pt", tmp_path / "exported"
    assert main.main(["train", str(text), "--init-from", str(llama_folder), "--out", str(tuned), "--steps", "3",
                      "--lr", "1e-2", "--batch-size", "2", "--device", "cpu", "--dtype", "float32", "--eval-every",
                      "10", "--eval-tokens", "2000", "--sample-tokens", "0"]) == 0  # fmt: skip
    before, after = load(llama_folder).model, load(tuned).model
    assert after.config == before.config
    assert (after.decoder.h[0].attn.c_attn.weight - before.decoder.h[0].attn.c_attn.weight).abs().max() > 1e-3
    assert main.main(["export", str(tuned), str(out)]) == 0
    assert type(transformers.AutoModelForCausalLM.from_pretrained(out)) is transformers.LlamaForCausalLM
    ours, theirs, new = greedy_pair(out, tuned, "ROMEO:", capsys, new=24)
    assert ours == theirs and new > 5


# ---- model_from_hf and write_model, against transformers ------------------------------------------

HF_SHAPE = {"vocab_size": 97, "n_positions": 64, "n_embd": 64, "n_layer": 2, "n_head": 4}


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    # A larger init than GPT-2's spreads the logits, so greedy choices are never near-ties.
    config = transformers.GPT2Config(**HF_SHAPE, initializer_range=0.1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a swapped weight shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def assert_same_as_hf(ours, hf):
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (3, 40))
    with torch.no_grad():
        ours_logits, ours_loss = ours(ids[:, :-1], ids[:, 1:])
        hf_out = hf(ids, labels=ids)
    assert_close(ours_logits, hf_out.logits[:, :-1], atol=1e-5)
    assert ours_loss.item() == pytest.approx(hf_out.loss.item(), abs=1e-6)
    prompt = torch.randint(0, 97, (1, 8))
    with torch.inference_mode():
        hf_ids = hf.generate(prompt, max_new_tokens=50, min_new_tokens=50, do_sample=False, pad_token_id=0)
    ours_ids = ours.generate(prompt, 50, temperature=0)
    assert ours_ids.shape == (1, 58)
    assert torch.equal(ours_ids, hf_ids)


def test_hf_model_loads_into_ours_from_safetensors(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = model_from_hf(tmp_path)
    assert not ours.training
    assert (ours.config.n_layer, ours.config.n_head, ours.config.block_size) == (2, 4, 64)
    assert_same_as_hf(ours, hf_model)


def test_hf_model_loads_into_ours_from_pytorch_model_bin(hf_model, tmp_path):
    hf_model.config.to_json_file(tmp_path / "config.json")
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    assert_same_as_hf(model_from_hf(tmp_path), hf_model)


def test_hf_state_dict_loads_into_ours(hf_model):
    ours = model_from_hf(hf_model.state_dict(), GPT2Config(vocab_size=97, n_layer=2, n_head=4, n_embd=64, block_size=64))
    assert_same_as_hf(ours, hf_model)


def test_hf_shapes_are_read_from_a_bare_state_dict():
    shape = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=128, n_layer=3, n_head=2)
    hf = transformers.GPT2LMHeadModel(shape)
    config = model_from_hf(hf.state_dict()).config
    assert (config.vocab_size, config.block_size, config.n_embd, config.n_layer, config.n_head) == (50, 16, 128, 3, 2)


def test_ours_exports_to_hf(tmp_path):
    torch.manual_seed(2)
    ours = GPT2(GPT2Config(vocab_size=97, n_layer=2, n_head=4, n_embd=64, block_size=64)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))  # away from GPT-2's small init: greedy never near a tie
    write_model(ours, tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied again
    assert_same_as_hf(ours, hf)
    # ...and back again, through the file transformers writes.
    hf.save_pretrained(tmp_path / "again")
    again = model_from_hf(tmp_path / "again")
    assert torch.equal(again.decoder.h[1].attn.c_attn.weight, ours.decoder.h[1].attn.c_attn.weight)


# ---- refusals: each one line --------------------------------------------------------------------


def one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message and all(part in message for part in parts), message


@pytest.mark.parametrize("shape,gpt2_has,llama_has,qwen3_has,apertus_has", [
    (dict(rope=True), "RoPE", "LayerNorm, a gelu MLP, biases", "LayerNorm, a gelu MLP, biases, no QK-norm",
     "LayerNorm, a gelu MLP, biases, no QK-norm"),
    (dict(bias=False), "no bias", "LayerNorm, a gelu MLP, learned positions",
     "LayerNorm, a gelu MLP, learned positions, no QK-norm", "LayerNorm, a gelu MLP, learned positions, no QK-norm"),
    (dict(LLAMA, mlp="gelu", qk_norm=True), "RMSNorm, QK-norm, RoPE, no bias", "a gelu MLP, QK-norm", "a gelu MLP",
     "a gelu MLP"),
    (dict(LLAMA, mlp="relu2", n_kv_head=1), "RMSNorm, relu2 MLP, 1 key/value head, RoPE, no bias", "a relu2 MLP",
     "a relu2 MLP, no QK-norm", "no QK-norm"),
    (dict(LLAMA, norm="layernorm"), "swiglu MLP, RoPE, no bias", "LayerNorm", "LayerNorm, no QK-norm",
     "LayerNorm, a swiglu MLP, no QK-norm"),
    (dict(APERTUS, bias=True), "RMSNorm, relu2 MLP, QK-norm, RoPE", "a relu2 MLP, biases, QK-norm",
     "a relu2 MLP, biases", "biases"),
], ids=["GPT-2 with RoPE", "GPT-2 without biases", "GELU with RMSNorm", "ReLU² without QK-norm",
        "LayerNorm with SwiGLU", "Apertus with biases"])  # fmt: skip
def test_a_shape_no_transformers_class_holds_is_refused_in_one_line(tmp_path, shape, gpt2_has, llama_has, qwen3_has,
                                                                    apertus_has):  # fmt: skip
    model = GPT2(GPT2Config(vocab_size=300, n_layer=1, n_head=2, n_embd=8, block_size=8, **shape))
    with pytest.raises(UserError) as error:
        export_folder(model, None, tmp_path / "out")
    assert str(error.value) == (f"cannot export the model: transformers has no class for its shape: it is not "
                                f"GPT-2's (it has {gpt2_has}), Llama's (it has {llama_has}), Qwen3's (it has "
                                f"{qwen3_has}) nor Apertus's (it has {apertus_has})")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError) as error:
        write_model(model, tmp_path / "out")
    one_line(error, "cannot export the model: transformers has no class for its shape")


def test_the_command_line_refuses_such_a_shape_in_one_line(learned, tmp_path):
    checkpoint_of(tmp_path / "relu2.pt", learned, **dict(LLAMA, mlp="relu2"))
    result = main_py("export", tmp_path / "relu2.pt", tmp_path / "out")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"error: cannot export {tmp_path / 'relu2.pt'}: transformers has no class for its shape: "
                             f"it is not GPT-2's (it has RMSNorm, relu2 MLP, RoPE, no bias), Llama's (it has a relu2 "
                             f"MLP), Qwen3's (it has a relu2 MLP, no QK-norm) nor Apertus's (it has no QK-norm)\n")
    assert not (tmp_path / "out").exists()


def test_an_existing_folder_is_replaced_only_with_overwrite_and_only_a_model_folder(multilingual, tmp_path):
    tokenizer = trained_tokenizer(multilingual, "gpt2")
    model = checkpoint_of(tmp_path / "m.pt", tokenizer)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as error:
        export_folder(model, tokenizer, tmp_path / "out")
    one_line(error, "already exists", "--overwrite")
    with pytest.raises(UserError) as error:
        export_folder(model, tokenizer, tmp_path / "out", overwrite=True)
    one_line(error, "not a model folder")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    export_folder(model, tokenizer, tmp_path / "model")
    export_folder(model, tokenizer, tmp_path / "model", overwrite=True)  # a model folder is replaced whole
    assert load(tmp_path / "model").tokenizer.hash == tokenizer.hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "model", "out"]  # no staging folder left


@pytest.fixture
def folder(hf_folders, tmp_path) -> Path:
    """A copy of a good folder (tokenizer.json kind) to break."""
    return Path(shutil.copytree(hf_folders["tokenizer.json"], tmp_path / "broken"))


def edit_json(path: Path, change) -> None:
    content = json.loads(path.read_text(encoding="utf-8"))
    change(content)
    path.write_text(json.dumps(content), encoding="utf-8")


def test_a_folder_without_weights_or_config_is_one_line(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as error:
        load(folder)
    one_line(error, str(folder), "no model.safetensors or pytorch_model.bin")
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError) as error:
        load(folder)
    one_line(error, str(folder), "not a model folder", "config.json")


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(model_type="mistral"), "of a 'mistral' model; this toolkit reads GPT-2, Llama, Qwen3 and "
                                                "Apertus (model_type 'gpt2', 'llama', 'qwen3' or 'apertus')"),
    (lambda c: c.pop("n_layer"), "lacks an integer n_layer"),
    (lambda c: c.update(n_layer=3), "its weights do not fit its config.json: missing decoder.h.2.ln_1.weight"),
    (lambda c: c.update(activation_function="relu"), "activation_function is 'relu'"),
    (lambda c: c.update(tie_word_embeddings=False), "not tied"),
    (lambda c: c.update(vocab_size=1000), "wte.weight is 50257x32, the config needs 1024x32"),
])  # fmt: skip
def test_a_config_that_does_not_fit_is_one_line(folder, change, message):
    edit_json(folder / "config.json", change)
    with pytest.raises(CheckpointError) as error:
        load(folder)
    one_line(error, str(folder), message)


@pytest.mark.parametrize("change,message", [
    (lambda c: c.update(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
     "its RoPE is scaled ('llama3' in rope_parameters or rope_scaling), and this toolkit's RoPE is not"),
    (lambda c: c.update(rope_parameters=None, rope_scaling={"type": "linear", "factor": 2.0}),
     "its RoPE is scaled ('linear' in rope_parameters or rope_scaling)"),
    (lambda c: c.update(rope_scaling={"rope_type": "linear", "factor": 2.0}),  # transformers 5 prefers it
     "its RoPE is scaled ('linear' in rope_parameters or rope_scaling)"),  # to rope_parameters
    (lambda c: c["rope_parameters"].update(partial_rotary_factor=0.5), "turns only part of each head"),
    (lambda c: c.update(attention_bias=True), "it has biases (attention_bias or mlp_bias), and this toolkit's "
                                              "Llama shape has none"),
    (lambda c: c.update(mlp_bias=True), "it has biases (attention_bias or mlp_bias)"),
    (lambda c: c.update(head_dim=16), "its head_dim is 16, not hidden_size / num_attention_heads (8), the only "
                                      "head size this toolkit's attention has"),
    (lambda c: c.update(hidden_act="gelu"), "its hidden_act is 'gelu', and this toolkit's Llama shape has a SwiGLU "
                                            "MLP, which gates with silu"),
    (lambda c: c.update(sliding_window=16), "its attention sees a sliding window of 16 tokens, and this toolkit's "
                                            "sees the whole context"),
    (lambda c: c.update(num_key_value_heads=3), "n_kv_head (--kv-heads) must divide n_head (4), got 3"),
    (lambda c: c.pop("intermediate_size"), "its config.json lacks an integer intermediate_size"),
    (lambda c: c.update(rms_norm_eps="small"), "its config.json's rms_norm_eps is 'small', not of the type"),
    (lambda c: c.update(tie_word_embeddings=True), "its lm_head.weight is not its token embedding, though its "
                                                   "config.json ties them (tie_word_embeddings)"),
])  # fmt: skip
def test_a_llama_folder_we_cannot_represent_is_one_line(llama_folder, tmp_path, change, message):
    folder = Path(shutil.copytree(llama_folder, tmp_path / "broken"))
    edit_json(folder / "config.json", change)
    with pytest.raises(CheckpointError) as error:
        load(folder)
    one_line(error, str(folder), message)


@pytest.mark.parametrize("dropped,message", [
    ("lm_head.weight", "its weights do not fit its config.json: missing lm_head.weight"),
    ("model.layers.1.self_attn.k_proj.weight", "missing decoder.h.1.attn.c_attn.weight; unexpected "
                                               "model.layers.1.self_attn.q_proj.weight, model.layers.1.self_attn.v_proj.weight"),
])  # fmt: skip
def test_llama_weights_that_do_not_fit_are_one_line(llama_folder, tmp_path, dropped, message):
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(llama_folder, tmp_path / "broken"))
    state = load_file(folder / "model.safetensors")
    del state[dropped]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        load(folder)
    one_line(error, str(folder), message)


@pytest.fixture(scope="module")
def family_folders(learned, tmp_path_factory) -> dict[str, Path]:
    """Exports of a tiny Qwen3 and a tiny Apertus of ours (2 key/value heads, untied), by model_type."""
    root = tmp_path_factory.mktemp("family")
    for kind, shape in (("qwen3", QWEN3), ("apertus", APERTUS)):
        model = checkpoint_of(root / f"{kind}.pt", learned, n_head=4, n_kv_head=2, tie_embeddings=False, **shape)
        export_folder(model, learned, root / kind)
    return {kind: root / kind for kind in ("qwen3", "apertus")}


@pytest.mark.parametrize("kind", ["qwen3", "apertus"])
def test_what_a_qwen3_or_apertus_config_leaves_out_is_read_as_transformers_reads_it(family_folders, tmp_path, kind):
    """Each class's own defaults: rms_norm_eps (Qwen3 1e-6, Apertus 1e-5), RoPE's base (Apertus 12e6),
    tie_word_embeddings (False)."""
    folder = Path(shutil.copytree(family_folders[kind], tmp_path / kind))
    gone = ("rms_norm_eps", "rope_theta", "tie_word_embeddings")
    edit_json(folder / "config.json", lambda c: [c.pop(name) for name in gone]
              + [c[rope].pop("rope_theta") for rope in ("rope_parameters", "rope_scaling") if rope in c])  # fmt: skip
    theirs, ours = transformers.AutoConfig.from_pretrained(folder), load(folder).model.config
    assert (ours.layer_norm_eps, ours.rope_base, ours.tie_embeddings) == (
        theirs.rms_norm_eps, theirs.rope_parameters["rope_theta"], theirs.tie_word_embeddings)
    assert theirs.rope_parameters["rope_type"] == "default"


@pytest.mark.parametrize("kind,change,message", [
    ("apertus", lambda c: c.update(hidden_act="xielu"), "its hidden_act is 'xielu', and this toolkit's Apertus shape "
                                                        "has a ReLU² MLP: relu(x)², ACT2FN's relu2"),
    ("apertus", lambda c: c.pop("hidden_act"), "its hidden_act is 'xielu'"),  # ApertusConfig's default
    ("apertus", lambda c: [c.pop(name) for name in ("rope_parameters", "rope_scaling")],
     "its RoPE is scaled ('llama3' in rope_parameters or rope_scaling)"),  # ApertusConfig's default
    ("qwen3", lambda c: c.pop("head_dim"), "its head_dim is 128, not hidden_size / num_attention_heads (8)"),
    ("qwen3", lambda c: c.update(use_sliding_window=True, sliding_window=16), "a sliding window of 16 tokens"),
    ("qwen3", lambda c: c.update(hidden_act="gelu"), "its hidden_act is 'gelu', and this toolkit's Qwen3 shape has "
                                                     "a SwiGLU MLP"),
    ("qwen3", lambda c: c.update(attention_bias=True), "this toolkit's Qwen3 shape has none"),
])  # fmt: skip
def test_a_qwen3_or_apertus_folder_we_cannot_represent_is_one_line(family_folders, tmp_path, kind, change, message):
    folder = Path(shutil.copytree(family_folders[kind], tmp_path / "broken"))
    edit_json(folder / "config.json", change)
    with pytest.raises(CheckpointError) as error:
        load(folder)
    one_line(error, str(folder), message)


def test_a_qwen3_folder_without_its_qk_norm_weights_is_one_line(family_folders, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(family_folders["qwen3"], tmp_path / "broken"))
    state = load_file(folder / "model.safetensors")
    del state["model.layers.0.self_attn.q_norm.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        load(folder)
    one_line(error, str(folder), "its weights do not fit its config.json: missing decoder.h.0.attn.q_norm.weight")


def test_a_tokenizer_larger_than_the_model_is_one_line(tmp_path, data_dir):
    random_hf_model(vocab_size=50000).save_pretrained(tmp_path)
    shutil.copy(data_dir / "gpt2" / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(data_dir / "gpt2" / "vocab.bpe", tmp_path / "merges.txt")
    with pytest.raises(CheckpointError) as error:
        load(tmp_path)
    one_line(error, "its tokenizer (vocab.json + merges.txt) has 50257 tokens but the model's embedding only 50000 rows")


def swap_ids(spec: dict) -> None:
    """Give two merged tokens each other's ids: the merge order and the id order disagree."""
    vocab = spec["model"]["vocab"]
    vocab["Ġt"], vocab["Ġa"] = vocab["Ġa"], vocab["Ġt"]


@pytest.mark.parametrize("change,message", [
    (swap_ids, "do not follow the merge order (merge 2 makes id 256 after a merge made id 257)"),
    (lambda spec: spec.update(normalizer={"type": "NFC"}), "normalizes text ('NFC')"),
    (lambda spec: spec["pre_tokenizer"].update(add_prefix_space=True), "pre-tokenizer ('ByteLevel')"),
    (lambda spec: spec["added_tokens"][0].update(special=False), "added token '<|endoftext|>' is not special"),
    (lambda spec: spec["model"]["merges"].pop(5), "is made by no merge"),
    (lambda spec: spec["model"].update(type="WordPiece"), "not a BPE tokenizer"),
])  # fmt: skip
def test_a_tokenizer_our_bpe_cannot_reproduce_is_one_line(folder, change, message):
    edit_json(folder / "tokenizer.json", change)
    with pytest.raises(TokenizerError) as error:
        load(folder)
    one_line(error, str(folder / "tokenizer.json"), message)


def test_a_folder_without_a_tokenizer_loads_and_the_cli_asks_for_a_vocab_file(folder, data_dir):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    assert load(folder).tokenizer is None
    result = main_py("predict", "Hello", 3, folder, "--greedy")
    assert result.returncode == 1 and result.stderr == f"error: {folder} holds no tokenizer (its folder has no " \
                                                       f"tokenizer files): give its vocab file after it\n"
    with_vocab = main_py("predict", "Hello", 3, folder, data_dir / "gpt2", "--greedy")
    assert with_vocab.returncode == 0 and with_vocab.stdout.startswith("Hello"), with_vocab.stderr


# ---- hub names: only the Hugging Face cache, never the network, in tests ---------------------------


def test_hub_names_and_paths_are_told_apart():
    for name in ("gpt2", "gpt2-medium", "openai-community/gpt2", "EleutherAI/gpt-neo-125M", "distilgpt2"):
        assert looks_like_hub_name(name), name
    for name in ("gpt2_model.pt", "runs/model.pt", "./gpt2", "/abs/gpt2", "a/b/c", "weights.safetensors",
                 "two words", "org--name", "x/../y", ""):
        assert not looks_like_hub_name(name), name


def test_a_hub_name_offline_with_nothing_cached_is_one_line(tmp_path, monkeypatch):
    hub_offline(monkeypatch, tmp_path)
    result = main_py("predict", "Hello", 5, "openai-community/gpt2")
    assert result.returncode == 1 and "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: model not found: openai-community/gpt2 is no file or folder here and is "
                                    f"not in the Hugging Face cache ({tmp_path / 'hub'}), and the hub cannot be "
                                    "reached (HF_HUB_OFFLINE is set): connect once, or download the model folder "
                                    "elsewhere and pass its path")


def test_a_hub_name_in_the_cache_loads_without_the_network(hf_folders, tmp_path, monkeypatch):
    """The cache as huggingface_hub lays it out: hub/models--ORG--NAME/snapshots/<commit>/..., with
    refs/main naming the commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-gpt2"
    shutil.copytree(hf_folders["tokenizer.json"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = hub_offline(monkeypatch, tmp_path)
    by_name = main_py("predict", "Hello there", 12, "someone/tiny-gpt2", "--greedy")
    by_folder = main_py("predict", "Hello there", 12, hf_folders["tokenizer.json"], "--greedy")
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout == by_folder.stdout
    # A new process, which reads the environment as a user's does.
    check = subprocess.run([sys.executable, str(ROOT / "check_checkpoint.py"), "someone/tiny-gpt2"], env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert check.returncode == 0, check.stderr
    assert "a transformers folder (Hugging Face hub name someone/tiny-gpt2, cached)" in check.stdout
    assert str(repo / "snapshots" / commit) in check.stdout


def test_importing_the_package_never_imports_transformers_or_the_hub():
    optional = "('transformers', 'tokenizers', 'safetensors', 'huggingface_hub', 'tiktoken')"
    code = ("import sys, gpt2_llm, gpt2_llm.loading, gpt2_llm.export, main, check_checkpoint; "
            f"print(sorted(m for m in {optional} if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_fine_tune_a_folder_then_its_export_gives_transformers_the_same_greedy_text(hf_folders, gpt2_tokenizer,
                                                                                    data_dir, tmp_path):  # fmt: skip
    """The whole road: a transformers folder -> train --init-from -> our checkpoint -> export -> transformers."""
    folder = hf_folders["encoder.json + vocab.bpe"]
    text = tmp_path / "notes.txt"
    text.write_text((data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:8_000], encoding="utf-8")
    tuned, out = tmp_path / "tuned.pt", tmp_path / "exported"
    result = main_py("train", text, "--init-from", folder, "--out", tuned, "--steps", 3, "--lr", "1e-2",
                     "--batch-size", 2, "--device", "cpu", "--dtype", "float32", "--eval-every", 10,
                     "--eval-tokens", 2000, "--sample-tokens", 0)
    assert result.returncode == 0, result.stderr
    assert f"starting from {folder}: " in result.stderr and "its own tokenizer (50,257 tokens)" in result.stderr
    before, after = load(folder), load(tuned)
    assert after.tokenizer.hash == gpt2_tokenizer.hash and after.model.config == before.model.config
    moved = (after.model.decoder.h[0].mlp.c_fc.weight - before.model.decoder.h[0].mlp.c_fc.weight).abs().max()
    assert moved > 1e-3  # it was trained
    exported = main_py("export", tuned, out)
    assert exported.returncode == 0, exported.stderr

    prompt, new = "ROMEO:", 24
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = hf_tok(prompt, return_tensors="pt")["input_ids"]
    assert ids[0].tolist() == gpt2_tokenizer.encode(prompt)
    with torch.inference_mode():
        theirs = hf.generate(ids, max_new_tokens=new, do_sample=False)[0, ids.size(1) :].tolist()
    theirs = theirs[: theirs.index(50256)] if 50256 in theirs else theirs
    ours = main_py("predict", prompt, new, tuned, "--greedy", "--device", "cpu")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == prompt + hf_tok.decode(theirs) + "\n" and len(theirs) > 5


@pytest.mark.parametrize("name", ["alpaca", "chat"])
def test_an_exported_instruction_template_renders_in_transformers_and_comes_back_by_name(gpt2_tokenizer, tmp_path,
                                                                                         name):  # fmt: skip
    from gpt2_llm.instruct import TEMPLATES

    template = TEMPLATES[name]
    checkpoint_of(tmp_path / "m.pt", gpt2_tokenizer, template.to_checkpoint())
    assert main_py("export", tmp_path / "m.pt", tmp_path / "out").returncode == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    conversation = [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"},
                    {"role": "user", "content": "Reverse 'abc'."}]  # fmt: skip
    for messages in (conversation[:1], conversation) if template.multi_turn else (conversation[:1],):  # Alpaca: one turn
        theirs = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert theirs == template.render(messages, add_generation_prompt=True)
    assert load(tmp_path / "out").chat_template == template.to_checkpoint()  # named again: predict --chat works
