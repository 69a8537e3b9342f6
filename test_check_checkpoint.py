"""Tests of check_checkpoint.py, run as a user runs it: its main(argv) in this process, as
`python check_checkpoint.py` runs it (gpt2_llm/tests/conftest.py's run_main), and once as a process."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bpe import BPE
from gpt2_llm.tests.conftest import run_main, some_text

ROOT = Path(__file__).resolve().parent


def check(*args) -> subprocess.CompletedProcess:
    return run_main(*args, entry="check_checkpoint", text=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint written by the trainer after 3 steps of the tiny preset, and its vocab.txt beside it."""
    from gpt2_llm import GPT2, GPT2Config, Trainer

    folder = tmp_path_factory.mktemp("check")
    text = some_text(30_000)
    (folder / "text.txt").write_text(text, encoding="utf-8")
    tokenizer = BPE.train(text, vocab_size=300)
    tokenizer.save(folder / "vocab.txt")
    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_preset("tiny", vocab_size=300, block_size=32))
    trainer = Trainer(model, tokenizer, batch_size=4, device="cpu", dtype="float32", log=lambda line: None)
    trainer.train(folder / "text.txt", save_path=folder / "model.pt", steps=3, progress=False)
    return folder / "model.pt"


def test_a_checkpoint_and_its_own_vocab_are_compatible(trained):
    ok = check(trained, trained.parent / "vocab.txt")
    assert ok.returncode == 0, ok.stderr
    assert "step 3 of 3" in ok.stdout and "embedding dim:    64" in ok.stdout
    assert "parameters:       121,344" in ok.stdout  # the tiny preset at vocab 300, context 32
    assert ok.stdout.startswith(f"checkpoint:       {trained} (")
    assert "architecture:     GPT-2 (MLP width 256)" in ok.stdout
    assert "optimizer:        AdamW (lr 0.0006)" in ok.stdout
    assert "moving average" not in ok.stdout
    assert ok.stdout.rstrip().endswith("verdict:          compatible")


def test_a_checkpoint_of_averaged_weights_says_so(trained, tmp_path):
    from gpt2_llm import Trainer

    again = Trainer.from_checkpoint(trained, log=lambda line: None, ema=0.99)
    again.train(trained.parent / "text.txt", save_path=tmp_path / "averaged.pt", steps=5, progress=False)
    result = check(tmp_path / "averaged.pt")
    assert result.returncode == 0, result.stderr
    assert ("weights:          a moving average of the training weights (--ema 0.99); a continued run goes on "
            "from those, stored beside it") in result.stdout


def test_another_vocab_is_not_compatible(trained, tmp_path):
    BPE.train("a completely different text, " * 50, vocab_size=280).save(tmp_path / "other.txt")
    bad = check(trained, tmp_path / "other.txt")
    assert bad.returncode == 1 and "NOT compatible" in bad.stdout and "is not the tokenizer" in bad.stdout


def test_weights_only_with_a_vocab_that_fits(tmp_path, trained):
    from gpt2_llm import load, save_model

    save_model(load(trained).model, tmp_path / "weights.pt")
    result = check(tmp_path / "weights.pt", trained.parent / "vocab.txt")
    assert result.returncode == 0 and "no training state (weights only)" in result.stdout


@pytest.mark.parametrize("make,message", [
    (lambda ckpt: b"junk", "is not a readable checkpoint"),
    (lambda ckpt: {**ckpt, "model_config": {**ckpt["model_config"], "n_experts": 2}}, "fields this version does not know"),
    (lambda ckpt: {**ckpt, "model_config": {**ckpt["model_config"], "n_layer": 3}}, "weights do not fit"),
    (lambda ckpt: {**ckpt, "model_config": {**ckpt["model_config"], "dropout": 2.0}}, "dropout"),
    (lambda ckpt: {**ckpt, "chat_template": {"name": "llama", "jinja": ""}}, "its chat template 'llama' is not one"),
])  # fmt: skip
def test_an_unusable_checkpoint_is_reported_as_such(trained, tmp_path, make, message):
    from gpt2_llm import load_checkpoint, save_checkpoint

    broken = make(load_checkpoint(trained))
    path = tmp_path / "broken.pt"
    if isinstance(broken, bytes):
        path.write_bytes(broken)
    else:
        save_checkpoint(path, broken)
    result = check(path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert "verdict:          unusable" in result.stdout and "compatible" not in result.stdout


def test_the_chat_template_is_named(trained, tmp_path):
    from gpt2_llm import load_checkpoint, save_checkpoint
    from gpt2_llm.instruct import TEMPLATES

    assert "chat template:    none (a model of text)" in check(trained).stdout
    save_checkpoint(tmp_path / "chat.pt", {**load_checkpoint(trained), "chat_template": TEMPLATES["chat"].to_checkpoint()})
    result = check(tmp_path / "chat.pt")
    assert result.returncode == 0
    assert "chat template:    chat (trained on instruction records; predict --chat uses it)" in result.stdout


def test_usage_errors_exit_2():
    assert check().returncode == 2
    process = subprocess.run([sys.executable, str(ROOT / "check_checkpoint.py")], capture_output=True, timeout=120)
    assert process.returncode == 2 and b"usage:" in process.stderr  # main()'s status is the process's


def test_a_transformers_folder_is_reported_as_one(trained, tmp_path):
    from gpt2_llm import load
    from gpt2_llm.export import export_folder

    loaded = load(trained)
    export_folder(loaded.model, loaded.tokenizer, tmp_path / "exported")
    result = check(tmp_path / "exported", trained.parent / "vocab.txt")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"model:            {tmp_path / 'exported'}: a transformers folder, GPT2LMHeadModel, "
                               f"model.safetensors 0.5 MB")
    assert "parameters:       121,344" in result.stdout and "embedding dim:    64" in result.stdout
    assert "no training state (a transformers folder holds weights only)" in result.stdout
    assert f"tokenizer (in tokenizer.json): 300 tokens, hash {loaded.tokenizer.hash[:16]}" in result.stdout
    assert lines[-1] == "verdict:          compatible"


def test_a_llama_folder_is_reported_with_its_class(trained, tmp_path):
    from dataclasses import replace

    from gpt2_llm import GPT2, load
    from gpt2_llm.export import export_folder

    loaded = load(trained)
    llama = replace(loaded.model.config, norm="rmsnorm", mlp="swiglu", rope=True, bias=False, n_kv_head=1)
    export_folder(GPT2(llama), loaded.tokenizer, tmp_path / "llama")
    result = check(tmp_path / "llama")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"model:            {tmp_path / 'llama'}: a transformers folder, LlamaForCausalLM, ")
    assert "architecture:     RMSNorm, swiglu MLP, 1 key/value head, RoPE, no bias (MLP width 192)" in result.stdout


def test_the_architecture_options_are_shown(tmp_path):
    from gpt2_llm import GPT2, GPT2Config, save_model

    config = GPT2Config.from_preset("tiny", vocab_size=300, mlp="swiglu", n_kv_head=1, norm="rmsnorm", qk_norm=True,
                                    tie_embeddings=False)  # fmt: skip
    save_model(GPT2(config), tmp_path / "options.pt")
    result = check(tmp_path / "options.pt")
    assert result.returncode == 0, result.stderr
    assert "architecture:     RMSNorm, swiglu MLP, 1 key/value head, QK-norm, untied head (MLP width 192)" in result.stdout
