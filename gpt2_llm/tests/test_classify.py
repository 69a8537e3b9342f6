"""Training and using a classifier (issue 31): `train --classify` through the trainer, the
checkpoint, resume, --train-blocks, and predict / eval of a classifier."""

import json
import random

import pytest
import torch

from gpt2_llm import GPT2, GPT2Config
from gpt2_llm.checkpoint import load_checkpoint
from gpt2_llm.classifier import GPT2Classifier, classify, pad_id_of, scores
from gpt2_llm.loading import load
from gpt2_llm.predict import read_positionals
from gpt2_llm.tests.conftest import losses, run_main
from gpt2_llm.trainer import Trainer

SPAM = "free win prize cash claim urgent call now offer txt".split()
HAM = "hello meet lunch tomorrow home love see you later ok".split()


def labelled_lines(n: int, seed: int = 0) -> list[str]:
    """`label<TAB>text` lines whose words tell the class (spam's words or ham's)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        label = rng.choice(["spam", "ham"])
        words = SPAM if label == "spam" else HAM
        lines.append(label + "\t" + " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))))
    return lines


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, corpus):
    path = tmp_path_factory.mktemp("labelled") / "messages.tsv"
    path.write_text("\n".join(labelled_lines(160)) + "\n", encoding="utf-8")
    return path, corpus[1]


def classifier_trainer(tokenizer, seed=0, train_blocks=None, **overrides) -> Trainer:
    torch.manual_seed(seed)
    config = GPT2Config.from_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=32)
    model = GPT2Classifier(GPT2(config), ["ham", "spam"], pad_id_of(tokenizer))
    model.train_last_blocks(train_blocks)
    options = dict(batch_size=8, lr=3e-3, warmup_steps=2, eval_every=5, log_every=1, device="cpu", dtype="float32",
                   seed=seed, classify=True, test_fraction=0.2, train_blocks=train_blocks)
    return Trainer(model, tokenizer, log=lambda line: None, **{**options, **overrides})


def test_a_classifier_learns_and_reports_accuracy_on_validation_and_test(labelled, tmp_path):
    path, tokenizer = labelled
    result = classifier_trainer(tokenizer).train(path, save_path=tmp_path / "c.pt", steps=30, progress=False)
    assert result["val_accuracy"] >= 0.9 and result["test_accuracy"] >= 0.9, result
    metrics = [json.loads(line) for line in (tmp_path / "c.metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m.get("eval")] == [5, 10, 15, 20, 25, 30]
    assert [m for m in metrics if m.get("test")][0]["test_accuracy"] == round(result["test_accuracy"], 5)
    stored = load_checkpoint(tmp_path / "c.pt")
    assert stored["classifier"]["names"] == ["ham", "spam"] and "score.weight" not in stored["model"]
    loaded = load(tmp_path / "c.pt")
    assert loaded.classes == ["ham", "spam"] and isinstance(loaded.model, GPT2Classifier)


def test_a_classifier_resumes_with_the_same_losses(labelled, tmp_path):
    path, tokenizer = labelled
    classifier_trainer(tokenizer).train(path, save_path=tmp_path / "a.pt", steps=12, progress=False)
    first = classifier_trainer(tokenizer)
    original = first._train_step

    def stop_after_seven(model):
        loss = original(model)
        if first.step + 1 == 7:
            first._signal_received = 2
        return loss

    first._train_step = stop_after_seven
    assert first.train(path, save_path=tmp_path / "b.pt", steps=12, progress=False)["stopped_by"] == "signal"
    again = Trainer.from_checkpoint(tmp_path / "b.pt", log=lambda line: None)
    assert again.step == 7 and again.config.classify
    again.train(path, save_path=tmp_path / "b.pt", progress=False)
    assert losses(tmp_path / "b.metrics.jsonl") == losses(tmp_path / "a.metrics.jsonl")
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    torch.testing.assert_close(a["classifier"]["score"], b["classifier"]["score"], atol=0, rtol=0)


def test_train_blocks_leaves_the_other_blocks_as_they_were(labelled, tmp_path):
    path, tokenizer = labelled
    trainer = classifier_trainer(tokenizer, train_blocks=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train(path, save_path=tmp_path / "c.pt", steps=6, progress=False)
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    last = trainer.model.config.n_layer - 1
    assert changed and all(k.startswith((f"gpt.decoder.h.{last}.", "gpt.ln_f.", "score.")) for k in changed), changed
    assert "score.weight" in changed
    c = trainer.model.config
    block = sum(p.numel() for p in trainer.model.gpt.decoder.h[last].parameters())
    ln_f = sum(p.numel() for p in trainer.model.gpt.ln_f.parameters())
    assert trainer.model.num_parameters(trained=True) == block + ln_f + 2 * c.n_embd


def test_a_classifier_with_ema_saves_the_average_and_loads(labelled, tmp_path):
    path, tokenizer = labelled
    trainer = classifier_trainer(tokenizer, ema=0.9)
    trainer.train(path, save_path=tmp_path / "c.pt", steps=6, progress=False)
    stored = load_checkpoint(tmp_path / "c.pt")
    assert "training_weights" in stored and "score.weight" in stored["training_weights"]
    with trainer.average.swapped_in():
        torch.testing.assert_close(stored["classifier"]["score"], trainer.model.score.weight, atol=0, rtol=0)
    Trainer.from_checkpoint(tmp_path / "c.pt", log=lambda line: None)  # continues from the weights, not the average


def test_classes_of_another_file_are_refused(labelled, tmp_path):
    from gpt2_llm.data import DataError

    path, tokenizer = labelled
    other = tmp_path / "other.tsv"
    other.write_text("a\tone text\nb\ttwo text\na\tthree\nb\tfour\n", encoding="utf-8")
    with pytest.raises(DataError, match="has the classes a, b; the model was trained on ham, spam"):
        classifier_trainer(tokenizer).train(other, save_path=tmp_path / "c.pt", steps=2, progress=False)


def test_scores_by_hand():
    truth, predicted = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2]
    result = scores(truth, predicted, 3)
    assert result["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert result["accuracy"] == pytest.approx(4 / 6)
    first, second, third = result["per_class"]
    assert (first["precision"], first["recall"], first["f1"]) == (1.0, pytest.approx(2 / 3), pytest.approx(0.8))
    assert (second["precision"], second["recall"], second["f1"]) == (0.5, 0.5, 0.5)
    assert (third["precision"], third["recall"], third["support"]) == (0.5, 1.0, 1)


def test_classify_gives_each_text_its_own_probabilities_whatever_the_batch(labelled):
    _, tokenizer = labelled
    model = classifier_trainer(tokenizer).model.eval()
    texts = ["free cash now", "see you later at home my love", "ok"]
    together = classify(model, tokenizer, texts)
    for text, found in zip(texts, together):
        alone = classify(model, tokenizer, [text])[0]
        assert found["label"] == alone["label"]
        for name in model.names:
            assert found["probabilities"][name] == pytest.approx(alone["probabilities"][name], abs=1e-6)
        assert sum(found["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("given, flags, expected", [
    (["hello", "spam.pt"], {}, ("hello", 100, "spam.pt", None, False)),
    (["hello", "20", "m.pt", "v.txt"], {}, ("hello", 20, "m.pt", "v.txt", False)),
    (["hello"], {}, ("hello", 100, "gpt2_model.pt", None, False)),
    (["spam.pt"], {"file": True}, ("", 100, "spam.pt", None, False)),
    (["5", "m.pt"], {"interactive": True}, ("", 5, "m.pt", None, True)),
    (["", "5", "m.pt"], {"interactive": True}, ("", 5, "m.pt", None, True)),
])  # fmt: skip
def test_predict_reads_a_name_in_place_of_the_count_as_the_model(given, flags, expected):
    at = read_positionals(given, **flags)
    assert (at.prompt, at.num_tokens, at.model, at.vocab_file, at.interactive) == expected


def test_the_command_line_trains_predicts_and_evaluates_a_classifier(tmp_path, corpus):
    data = tmp_path / "messages.tsv"
    data.write_text("\n".join(labelled_lines(200, seed=1)) + "\nham\t\nspam\n", encoding="utf-8")
    corpus[1].save(tmp_path / "vocab.txt")
    out = tmp_path / "spam.pt"
    trained = run_main("train", data, tmp_path / "vocab.txt", "--classify", "--preset", "tiny", "--context", 32,
                       "--steps", 40, "--eval-every", 20, "--lr", 3e-3, "--test-fraction", 0.2, "--out", out,
                       "--device", "cpu")  # fmt: skip
    err = trained.stderr.decode()
    assert trained.returncode == 0, err
    assert "left out: 1 empty texts, 1 rows without a label or a text" in err
    assert "accuracy" in err.splitlines()[-1] or "accuracy" in trained.stdout.decode()
    one = run_main("predict", "free cash prize now", out)
    assert one.returncode == 0, one.stderr.decode()
    label, probability = one.stdout.decode().split("\t")
    assert label == "spam" and 0.5 < float(probability) <= 1
    texts = tmp_path / "texts.txt"
    texts.write_text("lunch tomorrow love\nclaim your prize\n", encoding="utf-8")
    lines = run_main("predict", "--file", texts, out).stdout.decode().splitlines()
    assert [json.loads(line)["label"] for line in lines] == ["ham", "spam"]
    assert set(json.loads(lines[0])["probabilities"]) == {"ham", "spam"}
    report = run_main("eval", data, out).stdout.decode()
    assert report.startswith("accuracy 0.9") or report.startswith("accuracy 1.0000"), report
    assert "confusion (rows: true class, columns: predicted): ham, spam" in report


def test_a_file_of_one_class_is_one_line_of_error(tmp_path, corpus):
    data = tmp_path / "one.tsv"
    data.write_text("ham\tone\nham\ttwo\nham\tthree\n", encoding="utf-8")
    corpus[1].save(tmp_path / "vocab.txt")
    result = run_main("train", data, tmp_path / "vocab.txt", "--classify", "--preset", "tiny", "--steps", 2,
                      "--out", tmp_path / "m.pt")  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ") and "classification needs two or more" in err
    assert not (tmp_path / "m.pt").exists()


def test_a_tokenizer_learned_for_a_classifier_reads_the_training_texts_alone(tmp_path):
    """A word that only the held-out texts hold (many times) gets no merges; one of the training
    texts does. The parts are cut by row, whatever the texts say, so marking rows keeps them."""
    from bpe import BPE
    from gpt2_llm.labelled import read_labelled, run_parts

    data = tmp_path / "messages.tsv"
    lines = labelled_lines(200, seed=5)
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    _, train, val, test = run_parts(read_labelled(data), False, 0.1, 0.2)
    held_out = set(val.texts) | set(test.texts)
    marked = [f"{line} zyxwq zyxwq" if line.split("\t")[1] in held_out else f"{line} qvjkb qvjkb" for line in lines]
    data.write_text("\n".join(marked) + "\n", encoding="utf-8")
    result = run_main("train", data, tmp_path / "vocab.txt", "--classify", "--preset", "tiny", "--vocab-size", 320,
                      "--test-fraction", 0.2, "--steps", 1, "--out", tmp_path / "m.pt", "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert "the texts of its training part" in result.stderr.decode()
    tokenizer = BPE.load(tmp_path / "vocab.txt")
    assert len(tokenizer.encode(" qvjkb")) == 1 and len(tokenizer.encode(" zyxwq")) == 6
