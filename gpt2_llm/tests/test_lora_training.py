"""Fine-tuning with LoRA adapters (`train --init-from MODEL --lora R`, issue 31): what trains, the
checkpoint that names its base, resume, --ema, bf16, torchrun, and the adapters loaded and exported
(merged, or for PEFT)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2_llm.checkpoint import load_checkpoint
from gpt2_llm.data import split_tokens
from gpt2_llm.loading import load
from gpt2_llm.lora import adapted_layers, merged_copy
from gpt2_llm.tests.conftest import losses, run_main
from gpt2_llm.tests.test_classify import labelled_lines
from gpt2_llm.tests.test_distributed import torchrun

BASE_ARGS = ["--device", "cpu", "--dtype", "float32", "--log-every", "1", "--warmup-steps", "2", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus):
    """(a folder with a tiny language model trained for a few steps, its vocab and the corpus text;
    a labelled file)."""
    folder = tmp_path_factory.mktemp("lora")
    corpus[1].save(folder / "vocab.txt")
    result = run_main("train", corpus[0], folder / "vocab.txt", "--preset", "tiny", "--context", 32, "--steps", 10,
                      "--out", folder / "base.pt", *BASE_ARGS)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    (folder / "messages.tsv").write_text("\n".join(labelled_lines(120, seed=3)) + "\n", encoding="utf-8")
    return folder, corpus[0]


LLAMA = ["--norm", "rmsnorm", "--mlp", "swiglu", "--rope", "--no-bias", "--untied"]  # LlamaForCausalLM's shape


@pytest.fixture(scope="module")
def llama_base(base):
    """The base's folder with llama.pt: the same tiny size in Llama's shape, whose head is its own
    (so that LoRA trains the rows of the data's tokens in it and its embedding)."""
    folder, text = base
    result = run_main("train", text, folder / "vocab.txt", "--preset", "tiny", "--context", 32, "--steps", 4, *LLAMA,
                      "--out", folder / "llama.pt", *BASE_ARGS)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    return folder, text


def lora_run(folder, text, out, *extra, steps=8, start="base.pt"):
    return run_main("train", text, "--init-from", folder / start, "--lora", 4, "--steps", steps, "--eval-every", 4,
                    "--out", out, "--overwrite", *BASE_ARGS, *extra)  # fmt: skip


def test_lora_trains_only_the_adapters_and_the_checkpoint_names_its_base(base, tmp_path):
    folder, text = base
    result = lora_run(folder, text, tmp_path / "a.pt")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    # 2 blocks x (c_attn: 4 x 64 + 192 x 4, c_proj: 4 x 64 + 64 x 4)
    assert "LoRA rank 4 (alpha 4) on attention: training 3,072 of" in err
    stored = load_checkpoint(tmp_path / "a.pt")
    assert "model" not in stored and stored["lora"]["name"] == str(folder / "base.pt")
    # The tiny preset ties its head to its embedding: no rows of them train (test_an_untied_... below)
    assert stored["lora"]["settings"] == {"rank": 4, "alpha": 4.0, "dropout": 0.0, "targets": "attention",
                                          "tokens": None}  # fmt: skip
    assert set(stored["lora"]["state"]) == {f"decoder.h.{i}.attn.{m}.lora_{ab}.0" for i in (0, 1)
                                            for m in ("c_attn", "c_proj") for ab in "AB"}  # fmt: skip
    tuned, original = load(tmp_path / "a.pt").model, load(folder / "base.pt").model
    assert len(adapted_layers(tuned)) == 4
    for name, weight in original.state_dict().items():  # the base is untouched
        torch.testing.assert_close(tuned.state_dict()[name.replace("c_attn.", "c_attn.base.").replace(
            "attn.c_proj.", "attn.c_proj.base.")], weight, atol=0, rtol=0)
    assert any(v.abs().sum() > 0 for k, v in stored["lora"]["state"].items() if "lora_B" in k)  # B moved from 0
    assert run_main("predict", "ROMEO:", 5, tmp_path / "a.pt", "--seed", 1).returncode == 0
    shown = run_main(tmp_path / "a.pt", entry="check_checkpoint", text=True).stdout
    assert f"LoRA adapters:    rank 4 (alpha 4) on attention, on the base {folder / 'base.pt'} (weights' hash" in shown


def test_an_untied_models_embedding_and_head_rows_of_its_datas_tokens_train_too(llama_base, tmp_path):
    folder, text = llama_base
    result = run_main("train", text, "--init-from", folder / "llama.pt", "--lora", 4, "--steps", 6, "--out",
                      tmp_path / "a.pt", "--val-fraction", 0.5, *BASE_ARGS)  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 0, err
    loaded = load(folder / "llama.pt")
    ids = loaded.tokenizer.encode(Path(text).read_text(encoding="utf-8"), allowed_special="all")
    counts = np.bincount(split_tokens(np.array(ids), 0.5, 32)[0])  # the part before the validation half
    held = np.flatnonzero(counts)
    assert len(held) < len(set(ids))  # some tokens are in the validation half alone
    stored = load_checkpoint(tmp_path / "a.pt")["lora"]
    tokens = stored["settings"]["tokens"]
    n = len(tokens)
    # The rows' budget: 2% of the model's weights when they were chosen (with its adapters, without the
    # rows), in rows of the embedding and of the head, 64 wide each.
    assert n == int(0.02 * (load(tmp_path / "a.pt").model.num_parameters() - 2 * n * 64) / (2 * 64))
    assert 0 < n < len(held) and set(tokens) <= set(held.tolist())  # this tiny model keeps some of the tokens:
    assert counts[tokens].min() >= counts[np.setdiff1d(held, tokens)].max()  # the most frequent ones
    assert f"rows of {n:,} tokens train too (the most frequent of the {len(held):,} the training data holds, " \
           f"within 2% of the weights): {2 * n * 64:,} weights" in err  # fmt: skip
    assert {"wte.lora_rows", "lm_head.lora_rows"} <= stored["state"].keys()
    tuned = load(tmp_path / "a.pt").model
    changed = (tuned.lm_head.lora_rows != loaded.model.lm_head.weight[tokens]).any(dim=1)
    assert changed.all()  # every row trained (its token is a target, or its logit was pushed down)
    prompt = loaded.tokenizer.encode("ROMEO: to be")
    assert tuned.generate(prompt, 6, greedy=True) == merged_copy(tuned).generate(prompt, 6, greedy=True)
    shown = run_main(tmp_path / "a.pt", entry="check_checkpoint", text=True).stdout
    assert f"rank 4 (alpha 4) on attention, and the embedding's and head's rows of {n:,} tokens, on the base" in shown


@pytest.mark.parametrize("shape", ["tied", "llama"])
def test_lora_resumes_with_the_same_losses_and_ema_keeps_the_adapters_average(base, llama_base, tmp_path, monkeypatch,
                                                                              shape):  # fmt: skip
    from gpt2_llm.trainer import Trainer

    folder, text = base
    start = f"{'base' if shape == 'tied' else 'llama'}.pt"  # llama: the rows of the data's tokens train too
    assert lora_run(folder, text, tmp_path / "a.pt", "--ema", 0.9, steps=8, start=start).returncode == 0
    original = Trainer._train_step

    def stop_after_four(self, model):  # as Ctrl-C after step 4 of 8
        loss = original(self, model)
        if self.step + 1 == 4:
            self._signal_received = 2
        return loss

    monkeypatch.setattr(Trainer, "_train_step", stop_after_four)
    assert lora_run(folder, text, tmp_path / "b.pt", "--ema", 0.9, steps=8, start=start).returncode == 130
    monkeypatch.setattr(Trainer, "_train_step", original)
    again = run_main("train", text, "--out", tmp_path / "b.pt", "--resume", "auto")
    assert again.returncode == 0, again.stderr.decode()
    assert losses(tmp_path / "b.metrics.jsonl") == losses(tmp_path / "a.metrics.jsonl")
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert set(a["training_weights"]) == set(a["lora"]["state"])  # the adapters alone, not the base
    assert ("wte.lora_rows" in a["lora"]["state"]) == (shape == "llama")
    for name, tensor in a["lora"]["state"].items():
        torch.testing.assert_close(tensor, b["lora"]["state"][name], atol=0, rtol=0)
        if "lora_B" in name:
            assert not torch.equal(tensor, a["training_weights"][name])  # the average is not the weights


def test_lora_in_bf16_autocast_trains(base, tmp_path):
    folder, text = base
    result = run_main("train", text, "--init-from", folder / "base.pt", "--lora", 2, "--lora-targets", "both",
                      "--steps", 4, "--eval-every", 4, "--out", tmp_path / "a.pt", "--device", "cpu",
                      "--dtype", "bfloat16", "--lr", 3e-3)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    state = load_checkpoint(tmp_path / "a.pt")["lora"]["state"]
    assert any("mlp.c_fc" in k for k in state) and all(v.dtype == torch.float32 for v in state.values())
    assert all(torch.isfinite(v).all() for v in state.values())


def test_a_changed_or_missing_base_is_one_line(base, tmp_path):
    folder, text = base
    assert lora_run(folder, text, tmp_path / "a.pt").returncode == 0
    model = load_checkpoint(folder / "base.pt")
    from gpt2_llm.checkpoint import save_checkpoint

    moved = tmp_path / "base_copy.pt"
    save_checkpoint(moved, model)
    stored = load_checkpoint(tmp_path / "a.pt")
    stored["lora"]["path"], stored["lora"]["name"] = str(moved), str(moved)
    save_checkpoint(tmp_path / "b.pt", stored)
    assert run_main("predict", "hi", 2, tmp_path / "b.pt").returncode == 0  # the same weights elsewhere: fine
    model["model"]["ln_f.weight"] = model["model"]["ln_f.weight"] + 1
    save_checkpoint(moved, model)
    changed = run_main("predict", "hi", 2, tmp_path / "b.pt")
    assert changed.returncode == 1 and "is no longer that model (its weights' hash differs)" in changed.stderr.decode()
    moved.unlink()
    gone = run_main("predict", "hi", 2, tmp_path / "b.pt").stderr.decode()
    assert gone.startswith("error: ") and "which is not found" in gone and len(gone.strip().splitlines()) == 1


def test_lora_needs_a_model_to_start_from(base, tmp_path):
    folder, text = base
    result = run_main("train", text, folder / "vocab.txt", "--preset", "tiny", "--lora", 4, "--out", tmp_path / "a.pt")
    assert result.returncode == 1 and "--lora trains adapters on a trained model: give it with --init-from" in \
        result.stderr.decode()  # fmt: skip


@pytest.mark.parametrize("classify,start", [(False, "base.pt"), (True, "base.pt"), (False, "llama.pt")],
                         ids=["language-model", "classifier", "llama-with-rows"])  # fmt: skip
def test_exports_merged_and_for_peft_give_our_logits(llama_base, tmp_path, classify, start):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    folder, text = llama_base
    data = [folder / "messages.tsv", "--classify"] if classify else [text]
    result = run_main("train", *data, "--init-from", folder / start, "--lora", 4, "--lora-targets", "both",
                      "--steps", 6, "--eval-every", 6, "--out", tmp_path / "a.pt", *BASE_ARGS)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    ours = load(tmp_path / "a.pt").model
    assert (start == "llama.pt") == ("wte.lora_rows" in load_checkpoint(tmp_path / "a.pt")["lora"]["state"])
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    auto = transformers.AutoModelForSequenceClassification if classify else transformers.AutoModelForCausalLM
    assert run_main("export", tmp_path / "a.pt", tmp_path / "merged").returncode == 0
    assert run_main("export", tmp_path / "a.pt", tmp_path / "split", "--adapter").returncode == 0
    with torch.no_grad():
        expected = ours(ids)[0]
        merged = auto.from_pretrained(tmp_path / "merged").eval()(ids).logits
        theirs = peft.PeftModel.from_pretrained(auto.from_pretrained(tmp_path / "split" / "base"),
                                                tmp_path / "split" / "adapter").eval()(ids).logits  # fmt: skip
        again = load(tmp_path / "split" / "adapter").model(ids)[0]  # the adapter folder is a model name
    for logits in (merged, theirs, again):
        assert (logits - expected).abs().max().item() <= 1e-4


def test_lora_under_torchrun_trains_like_one_process(base, tmp_path):
    folder, _ = base
    args = [folder / "messages.tsv", "--classify", "--init-from", folder / "base.pt", "--lora", 4, "--steps", 4,
            "--eval-every", 2, "--batch-size", 4, "--dropout", 0, *BASE_ARGS]  # fmt: skip
    ddp = torchrun(2, *args, "--out", tmp_path / "ddp.pt")
    _, err = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, err.decode()[-3000:]
    one = run_main("train", *args, "--grad-accum", 2, "--out", tmp_path / "one.pt")
    assert one.returncode == 0, one.stderr.decode()[-3000:]
    a, b = load_checkpoint(tmp_path / "ddp.pt"), load_checkpoint(tmp_path / "one.pt")
    for name, tensor in a["lora"]["state"].items():
        torch.testing.assert_close(tensor, b["lora"]["state"][name], atol=2e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(a["classifier"]["score"], b["classifier"]["score"], atol=2e-5, rtol=1e-4)
