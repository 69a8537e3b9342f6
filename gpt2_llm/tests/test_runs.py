"""Tests of gpt2_llm/runs.py: a training run as a function (new, continued, fine-tuned), the
tokenizer a run learns, the shape checks of a continued run, and the line a run ends with."""

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

import bpe
from basics import UserError
from gpt2_llm.config import ConfigError
from gpt2_llm.runs import Asked, Run, end_report, train, training_part
from gpt2_llm.vocab import load_vocab

# Quick settings: the tiny preset, a few steps on the CPU, no samples, no progress bar to speak of.
QUICK = dict(preset="tiny", steps=4, eval_every=2, batch_size=2, eval_tokens=2000, sample_tokens=0, device="cpu")


def words_text(seed: int, count: int = 6000) -> str:
    """Text of common words in a seeded order: long enough to split, varied enough to learn from."""
    rng = random.Random(seed)
    words = "the a of and to in is it that was he for on are as with his they at be this from".split()
    return " ".join(rng.choice(words) for _ in range(count)) + "\n"


class Said:
    """A `say` that keeps what a run says, one string per call."""

    def __init__(self):
        self.lines = []

    def __call__(self, *args, **kwargs):
        self.lines.append(" ".join(map(str, args)))

    def __contains__(self, text: str) -> bool:
        return any(text in line for line in self.lines)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A new run of 4 steps: (its folder, the Run, what it said)."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "t.txt").write_text(words_text(0), encoding="utf-8")
    said = Said()
    run = train(str(folder / "t.txt"), str(folder / "v.txt"), out=str(folder / "m.pt"), vocab_size=270, say=said,
                **QUICK)
    return folder, run, said


def test_a_new_run_learns_its_vocab_from_the_training_part_and_says_how_it_ended(first_run):
    folder, run, said = first_run
    assert run.result["stopped_by"] == "steps" and run.result["step"] == 4 and run.saved == folder / "m.pt"
    assert (folder / "m.pt").exists() and run.trainer.model.config.block_size == 64  # the tiny preset
    text = (folder / "t.txt").read_text(encoding="utf-8")
    vocab = load_vocab(str(folder / "v.txt"))
    assert vocab.hash == bpe.BPE.train(text[: int(len(text) * 0.9)], 270).hash  # never the validation part
    assert vocab.trained_on["held_out"] == 0.1 and vocab.trained_on["sha256"] == bpe.text_digest([folder / "t.txt"])
    assert f"v.txt not found: training a tokenizer of 270 tokens on {folder / 't.txt'}" in said
    assert "(its first 90%: the held-out part taught it nothing)" in said
    r = run.result
    assert said.lines[-1] == (f"step 4: val loss {r['val_loss']:.4f}, {r['val_bpb']:.4f} bits per byte; "
                              f"saved {folder / 'm.pt'}")


def test_a_continued_run_goes_on_from_its_step_then_has_nothing_left(first_run, tmp_path):
    folder, _, _ = first_run
    (tmp_path / "m.pt").write_bytes((folder / "m.pt").read_bytes())
    said = Said()
    args = (str(folder / "t.txt"), str(folder / "v.txt"), str(tmp_path / "m.pt"))
    run = train(*args, steps=6, say=said, device="cpu", sample_tokens=0)
    assert run.result["step"] == 6 and f"continuing {tmp_path / 'm.pt'} from step 4" in said
    done = Said()
    assert train(*args, steps=6, say=done, device="cpu").result["stopped_by"] == "done"
    assert done.lines[-1] == (f"nothing left to train: {tmp_path / 'm.pt'} is at step 6, the end of its schedule "
                              f"(give a larger --steps to go on); nothing was written")


@pytest.mark.parametrize("shape,message", [
    ({"block_size": 32}, "--context 32 does not fit {m}, whose block_size is 64: a continued run keeps its model"),
    ({"tie_embeddings": False}, "--untied does not fit {m}, whose tie_embeddings is True"),
    ({"rope": True}, "--rope does not fit {m}, whose rope is False"),
    ({"n_kv_head": 1}, "--kv-heads 1 does not fit {m}, whose kv_heads is 2"),
    ({"preset": "mini"}, "--preset mini does not fit {m}, whose n_layer is 2"),
    ({"vocab_size": 300}, "--vocab-size 300 does not fit {m}, whose tokenizer has 270 tokens"),
])  # fmt: skip
def test_a_continued_run_keeps_its_model(first_run, shape, message):
    folder, _, _ = first_run
    model = folder / "m.pt"
    with pytest.raises(UserError, match="^" + message.format(m=model).replace("(", r"\(").replace(")", r"\)")):
        train(str(folder / "t.txt"), str(folder / "v.txt"), str(model), steps=8, device="cpu", **shape)


def test_a_shape_that_agrees_with_the_checkpoint_is_fine(first_run, tmp_path):
    folder, _, _ = first_run
    (tmp_path / "m.pt").write_bytes((folder / "m.pt").read_bytes())
    run = train(str(folder / "t.txt"), str(folder / "v.txt"), str(tmp_path / "m.pt"), steps=5, n_kv_head=2,
                block_size=64, preset="tiny", device="cpu", sample_tokens=0, say=Said())  # kv heads 2: one per head
    assert run.result["step"] == 5


def test_a_continued_run_refuses_a_vocab_file_of_another_tokenizer(first_run, tmp_path):
    folder, _, _ = first_run
    other = bpe.BPE.train(words_text(1), 280)
    other.save(tmp_path / "other.txt")
    with pytest.raises(UserError, match=r"other.txt \(hash \w+, 280 tokens\) is not the tokenizer .*m.pt was trained "
                                        r"with \(hash \w+, 270 tokens\)"):
        train(str(folder / "t.txt"), str(tmp_path / "other.txt"), str(folder / "m.pt"), steps=8, device="cpu")


def test_fine_tuning_starts_from_the_model_with_its_tokenizer_and_defaults(first_run, tmp_path):
    folder, _, _ = first_run
    (tmp_path / "other.txt").write_text(words_text(2), encoding="utf-8")
    said = Said()
    run = train(str(tmp_path / "other.txt"), out=str(tmp_path / "ft.pt"), init_from=str(folder / "m.pt"),
                block_size=32, steps=2, eval_every=2, eval_tokens=2000, sample_tokens=0, device="cpu", say=said)
    assert run.trainer.model.config.block_size == 32 and run.trainer.bpe.hash == load_vocab(str(folder / "v.txt")).hash
    assert run.trainer.config.lr == 5e-5 and run.trainer.config.batch_size == 8
    assert (f"starting from {folder / 'm.pt'}: {run.trainer.model.num_parameters():,} parameters, context 32, its "
            f"own tokenizer (270 tokens); fine-tuning defaults --lr 5e-05 --warmup-steps 20 --batch-size 8") in said
    assert not (tmp_path / "vocab.txt").exists()  # the model's tokenizer: none learned


@pytest.mark.parametrize("given,flag", [
    ({"preset": "mini"}, "--preset"), ({"n_layer": 4}, "--n-layer"), ({"tie_embeddings": False}, "--untied"),
    ({"n_kv_head": 1}, "--kv-heads"), ({"bias": False}, "--no-bias"), ({"vocab_size": 512}, "--vocab-size"),
])  # fmt: skip
def test_fine_tuning_refuses_what_would_need_new_weights_before_reading_the_text(given, flag):
    with pytest.raises(UserError, match=f"^{flag} does not go with --init-from: the run keeps m.pt's shape"):
        train("missing.txt", init_from="m.pt", **given)
    with pytest.raises(UserError, match=r"^give a checkpoint to continue \(c.pt\) or --init-from .*, not both"):
        train("missing.txt", None, "c.pt", init_from="m.pt")


def test_settings_are_checked_before_anything_is_read():
    with pytest.raises(ConfigError, match="--lr must be positive, got 0"):
        train("missing.txt", lr=0.0)
    with pytest.raises(TypeError, match=r"unexpected arguments \['context'\]"):
        train("missing.txt", context=32)  # the field is block_size; --context is its flag


def test_the_training_part_is_the_text_without_its_held_out_end(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghij", encoding="utf-8")
    (tmp_path / "b.txt").write_text("klmno", encoding="utf-8")
    one, two = [tmp_path / "a.txt"], [tmp_path / "a.txt", tmp_path / "b.txt"]
    assert training_part(one, 0.2) == "abcdefgh"
    assert training_part(two, 0.5) == ("abcdefghij" + bpe.ENDOFTEXT + "klmno")[:14]  # joined as training joins them
    assert training_part(one, 0.0) is one  # nothing held out: the files, streamed


def ended(stopped_by: str, init_from=None, best=None, **result) -> str:
    best = result.get("val_loss", float("inf")) if best is None else best
    trainer = SimpleNamespace(config=SimpleNamespace(init_from=init_from, minutes=2.5, classify=False), best_val_loss=best)
    run = Run({"stopped_by": stopped_by, "step": 7, **result}, trainer, Path("m.pt"))
    asked = Asked("data/*.txt", [], "v.txt", True, None, {}, None, {})
    return end_report(run, asked, "m.pt", SimpleNamespace(world_size=1))


def test_the_last_line_says_why_the_run_ended(monkeypatch):
    monkeypatch.setattr("sys.argv", ["main.py", "train"])
    assert ended("signal", signal=2) == (
        "stopped at step 7; saved m.pt. Resume with: python main.py train 'data/*.txt' v.txt m.pt", True)
    assert ended("signal", init_from="gpt2", signal=15)[0].endswith("train 'data/*.txt' --out m.pt --resume auto")
    assert ended("time", val_loss=2.0, val_bpb=1.5) == (
        "step 7: val loss 2.0000, 1.5000 bits per byte; saved m.pt (the time budget, --minutes 2.5, ran out)", False)
    assert ended("steps", test_loss=2.5, test_bpb=1.25) == (
        "step 7: test loss 2.5000, 1.2500 bits per byte; saved m.pt", False)
    assert ended("steps") == ("step 7: saved m.pt", False)
    assert ended("steps", val_loss=2.0, val_bpb=1.5, best=1.9)[0] == (
        "step 7: val loss 2.0000, 1.5000 bits per byte; saved m.pt. An earlier checkpoint was better on the "
        "validation part (val loss 1.9000): use m.best.pt")
    assert ended("steps", val_loss=2.0, val_bpb=1.5, best=1.999)[0].endswith("saved m.pt")  # within 0.1%: noise
    monkeypatch.setattr("sys.argv", ["/usr/bin/gpt2-toolkit", "train"])
    assert ended("signal", signal=2)[0].endswith("Resume with: gpt2-toolkit train 'data/*.txt' v.txt m.pt")


def test_plan_only_says_the_plan_and_writes_nothing(tmp_path):
    (tmp_path / "t.txt").write_text(words_text(1), encoding="utf-8")
    said = Said()
    planned = train(str(tmp_path / "t.txt"), str(tmp_path / "v.txt"), out=str(tmp_path / "m.pt"), plan_only=True,
                    say=said, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]
    assert said.lines[0].startswith("plan (--minutes 10): 1 layer x 128 wide, 2 heads, context 256,")
    assert "  because: 512-token vocabulary for 0.022 MB of text" in said
    assert planned.settings["minutes"] == 10 and planned.settings["optimizer"] == "muon"
    with pytest.raises(UserError, match="--plan-only plans a new model"):
        train(str(tmp_path / "t.txt"), init_from="gpt2", plan_only=True, say=said)


def test_the_plan_is_said_first_and_kept_in_the_checkpoint(first_run):
    from gpt2_llm.loading import load

    folder, run, said = first_run
    assert said.lines[0].startswith("plan (--steps 4): 2 layers x 64 wide, 2 heads, context 64")
    stored = load(str(folder / "m.pt")).checkpoint["plan"]
    assert stored["shape"]["n_layer"] == 2 and stored["settings"]["batch_size"] == 2  # the flag given
    assert run.trainer.config.optimizer == "muon" and run.trainer.config.weight_decay == 1.0  # planned
