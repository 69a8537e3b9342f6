"""Tests of gpt2_llm/trainer.py: the schedule, accumulation, pinned losses, exact resume, NaN
handling, checkpoints on schedule, what a run shows (progress lines, samples, the loss picture),
MFU, and evaluation as a plain function."""

import io
import os
import signal
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bpe import BPE
from gpt2_llm import GPT2, GPT2Config, load, load_checkpoint
from gpt2_llm.averaging import WeightAverage
import gpt2_llm.trainer
from gpt2_llm.config import MUON_LR, ConfigError, TrainConfig
from gpt2_llm.data import load_tokens, split_tokens, validation_windows
from gpt2_llm.tests.conftest import assert_close, losses, records
from gpt2_llm.trainer import (Progress, Trainer, TrainingError, best_path, evaluate, get_lr, loss_picture_path,
                              step_memory)


def tiny_trainer(tokenizer, seed=0, block_size=32, **overrides) -> Trainer:
    torch.manual_seed(seed)
    config = GPT2Config.from_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=block_size)
    options = dict(batch_size=4, lr=3e-3, warmup_steps=2, eval_every=5, eval_tokens=2000, log_every=1,
                   device="cpu", dtype="float32", seed=seed)
    return Trainer(GPT2(config), tokenizer, log=lambda line: None, **{**options, **overrides})


def with_fake_clock(trainer: Trainer, seconds_per_step) -> list[float]:
    """Make each optimizer step take `seconds_per_step(step)` seconds of a clock that nothing else moves."""
    now = [0.0]
    original = trainer._train_step

    def timed_step(model):
        now[0] += seconds_per_step(trainer.step)
        return original(model)

    trainer.clock = lambda: now[0]
    trainer._train_step = timed_step
    return now


# ---- pure pieces --------------------------------------------------------------------------------


def test_get_lr_table():
    # lr 1.0, warm-up 2 steps, 6 steps in all, floor 0.1: warm-up 0.5, 1.0, then the cosine
    # 0.1 + 0.45 * (1 + cos(pi * k / 4)) for k = 0..4.
    table = [get_lr(step, 1.0, 2, 6, 0.1) for step in range(8)]
    expected = [0.5, 1.0, 1.0, 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 0.55,
                0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4)), 0.1, 0.1]
    assert table == pytest.approx(expected, abs=1e-12)
    assert get_lr(0, 3e-4, 0, 10) == pytest.approx(3e-4)  # no warm-up: start at the peak


def test_weight_decay_only_on_matrices(corpus):
    trainer = tiny_trainer(corpus[1])
    decayed, plain = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert trainer.optimizer.defaults["betas"] == (0.9, 0.95)


# ---- the math of a step -----------------------------------------------------------------------


def test_gradient_accumulation_equals_one_big_batch(corpus):
    tokenizer = corpus[1]
    x = torch.randint(0, tokenizer.vocab_size, (8, 33), generator=torch.Generator().manual_seed(0))
    whole = tiny_trainer(tokenizer, batch_size=8, grad_accum=1)
    split = tiny_trainer(tokenizer, batch_size=2, grad_accum=4)
    whole.batches = iter([(x[:, :-1], x[:, 1:])])
    split.batches = iter([(x[i : i + 2, :-1], x[i : i + 2, 1:]) for i in range(0, 8, 2)])
    # Compare the gradients the optimizer receives (Adam's first step divides by |g|, which would
    # turn rounding noise in near-zero gradients into full-size differences in the weights).
    grads = {}
    for name, trainer in (("whole", whole), ("split", split)):
        trainer.optimizer.step = lambda name=name, t=trainer: grads.setdefault(
            name, [p.grad.clone() for p in t.model.parameters()])
    loss_whole, loss_split = whole._train_step(whole.model), split._train_step(split.model)
    assert loss_whole.item() == pytest.approx(loss_split.item(), abs=1e-6)
    names = [name for name, _ in whole.model.named_parameters()]
    for name, a, b in zip(names, grads["whole"], grads["split"]):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4, msg=name)


def test_pinned_first_losses(shakespeare_corpus, tmp_path):
    """A seeded tiny model's first losses: any change in the math (init, loss, optimizer, data) fails here."""
    trainer = tiny_trainer(shakespeare_corpus[1], seed=0)
    trainer.train(shakespeare_corpus[0], save_path=tmp_path / "m.pt", steps=6, progress=False)
    assert losses(tmp_path / "m.metrics.jsonl") == pytest.approx(PINNED, abs=2e-4)


PINNED = [5.74499, 5.61461, 5.43883, 5.23988, 5.20195, 5.18891]  # re-pinned when the embedding was padded to 64 rows (its init draws changed)


# ---- resume and checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["random", "epoch"])
def test_resume_gives_the_same_losses(corpus, tmp_path, mode):
    text, tokenizer = corpus
    straight = tiny_trainer(tokenizer, batch_mode=mode)
    straight.train(text, save_path=tmp_path / "a.pt", steps=12, progress=False)
    # Stop a second run after 7 of the 12 steps, as Ctrl-C would, then resume from its checkpoint.
    first = tiny_trainer(tokenizer, batch_mode=mode)
    _train_until(first, text, tmp_path / "b.pt", total=12, stop_at=7)
    again = Trainer.from_checkpoint(tmp_path / "b.pt", log=lambda line: None)
    assert again.step == 7
    again.train(text, save_path=tmp_path / "b.pt", progress=False)
    assert losses(tmp_path / "b.metrics.jsonl") == losses(tmp_path / "a.metrics.jsonl")
    final_a = load_checkpoint(tmp_path / "a.pt")["model"]
    final_b = load_checkpoint(tmp_path / "b.pt")["model"]
    for name in final_a:
        torch.testing.assert_close(final_a[name], final_b[name], atol=0, rtol=0, msg=name)


def _train_until(trainer, text, path, total, stop_at):
    """Run `trainer` on a schedule of `total` steps, stopping (with a save) after `stop_at`."""
    original = trainer._train_step

    def step_then_maybe_stop(model):
        loss = original(model)
        if trainer.step + 1 == stop_at:
            trainer._signal_received = 2  # what the SIGINT handler sets
        return loss

    trainer._train_step = step_then_maybe_stop
    result = trainer.train(text, save_path=path, steps=total, progress=False)
    assert result["stopped_by"] == "signal" and result["step"] == stop_at


def test_a_signal_that_lands_while_the_ranks_agree_stops_the_next_step(corpus):
    """Under torchrun the handler may run between a rank's reduction of the stop flags and the use
    of its result; the signal must then stop the next step on every rank, not vanish."""
    trainer = tiny_trainer(corpus[1])

    class TwoRanks:  # stands in for the process group: the other rank reports nothing
        world_size, is_main, exchanges = 2, True, 0

        def max(self, values):
            self.exchanges += 1
            if self.exchanges == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # the signal arrives during the first exchange
            return list(values)

    trainer.dist = TwoRanks()
    with trainer._signals_caught():
        assert trainer._agree(False) == (False, False) and trainer._stop_signal is None  # the ranks go on alike...
        trainer._agree(False)
    assert trainer._stop_signal == signal.SIGTERM  # ...and stop together one step later


def test_checkpoint_holds_everything_and_loads_without_pickles(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1])
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=5, progress=False)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert set(ckpt) >= {"format_version", "model_config", "model", "optimizer", "train_config", "state", "rng",
                         "data", "tokenizer"}
    assert ckpt["state"]["step"] == 5 and ckpt["state"]["tokens_seen"] == 5 * 4 * 32
    assert BPE.from_text(ckpt["tokenizer"]["text"]).hash == corpus[1].hash == ckpt["tokenizer"]["hash"]
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])
    assert best_path(tmp_path / "m.pt").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=3)
    original = trainer._train_step

    def poisoned(model):
        loss = original(model)
        return loss * float("nan") if trainer.step >= 4 else loss

    trainer._train_step = poisoned
    with pytest.raises(TrainingError, match="loss became nan at step 5.*last good checkpoint"):
        trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=10, progress=False)
    assert load_checkpoint(tmp_path / "m.pt")["state"]["step"] == 3  # the one saved at step 3


def test_epochs_set_the_schedule(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    trainer.train(corpus[0], num_epochs=0.05, save_path=tmp_path / "m.pt", progress=False)
    train_tokens = int(len(np.fromfile(next(corpus[0].parent.glob("*.tokens.bin")), dtype=np.uint16)) * 0.9)
    assert trainer.step == math.ceil(0.05 * train_tokens / trainer.tokens_per_step)


def test_original_python_api(corpus, tmp_path):
    text, tokenizer = corpus
    tokenizer.save(tmp_path / "vocab.txt")
    trainer = Trainer.create_trainer_from_vocab(tmp_path / "vocab.txt", preset="tiny", model_config={"block_size": 32},
                                                batch_size=4, device="cpu", dtype="float32", eval_every=1000)
    assert trainer.model.config.vocab_size == tokenizer.vocab_size
    result = trainer.train(text, num_epochs=0.02, save_path=tmp_path / "m.pt", progress=False)
    assert result["stopped_by"] == "steps" and (tmp_path / "m.pt").exists()
    model = load(tmp_path / "m.pt").model
    assert model.config.block_size == 32


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_training_runs_and_learns(corpus, tmp_path, dtype):
    trainer = tiny_trainer(corpus[1], dtype=dtype, eval_every=1000)
    assert trainer.scaler.is_enabled() == (dtype == "float16")  # fp16 needs loss scaling, bf16 does not
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=20, progress=False)
    first, last = losses(tmp_path / "m.metrics.jsonl")[0], losses(tmp_path / "m.metrics.jsonl")[-1]
    assert last < first - 0.3




def test_train_takes_one_spelling_of_the_stop_settings(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1])
    with pytest.raises(TypeError, match="max_steps.*it takes steps, minutes, epochs"):
        trainer.train(corpus[0], save_path=tmp_path / "m.pt", max_steps=3, progress=False)


def test_nothing_left_to_train_writes_nothing(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=3, progress=False)
    before = (tmp_path / "m.pt").read_bytes()
    again = Trainer.from_checkpoint(tmp_path / "m.pt", log=lambda line: None)
    result = again.train(corpus[0], save_path=tmp_path / "m.pt", progress=False)
    assert result == {"stopped_by": "done", "step": 3}
    assert (tmp_path / "m.pt").read_bytes() == before


# ---- the time budget, with a clock the test controls ---------------------------------------------


def test_time_budget_fits_the_schedule_to_the_measured_speed(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    with_fake_clock(trainer, lambda step: 1.0)
    result = trainer.train(corpus[0], save_path=tmp_path / "m.pt", minutes=0.5, progress=False)
    # Fitted after 10 steps of 1 s: the 20 s left hold int(20 / (1 + eval share)) = 19 more steps,
    # where evaluations cost 62 windows x 32 tokens / 128 tokens per step / 1000 steps / 3 = 0.5%.
    assert trainer.total_steps == 29 and result["stopped_by"] == "steps" and result["step"] == 29
    assert load_checkpoint(tmp_path / "m.pt")["state"]["step"] == 29


def test_time_budget_counts_from_budget_start_when_the_command_began_earlier(corpus, tmp_path):
    """runs.train sets budget_start when the command begins, so the tokenizer's time is the budget's
    too: 10 s already spent leave 20 s of the 30, which hold 19 steps of 1 s (evaluations' share as above)."""
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    now = with_fake_clock(trainer, lambda step: 1.0)
    now[0], trainer.budget_start = 10.0, 0.0
    result = trainer.train(corpus[0], save_path=tmp_path / "m.pt", minutes=0.5, progress=False)
    assert trainer.total_steps == 19 and result["step"] == 19 and trainer.budget_start is None


def planned_lengths(trainer: Trainer) -> list[int | None]:
    """The schedule's length as each step's learning rate is set."""
    plans, original = [], trainer._set_lr
    trainer._set_lr = lambda step: (plans.append(trainer.total_steps), original(step))
    return plans


@pytest.mark.parametrize("speeds, plans_at_10", [((1.0, 2.0), 29), ((2.0, 1.0), 14)], ids=["slows", "speeds-up"])
def test_time_budget_refits_a_run_whose_speed_changes_to_end_with_the_budget(corpus, tmp_path, speeds, plans_at_10):
    """The speed changes after step 10, where the schedule was fitted; the refits every tenth of the
    budget (3 s) time the steps since the last one and move the schedule's end to the budget's end:
    10 x 1 s + 10 x 2 s, or 10 x 2 s + 10 x 1 s, both fill the 30 s with 20 steps."""
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    now = with_fake_clock(trainer, lambda step: speeds[0] if step < 10 else speeds[1])
    plans = planned_lengths(trainer)
    result = trainer.train(corpus[0], save_path=tmp_path / "m.pt", minutes=0.5, progress=False)
    assert plans[10] == plans_at_10 and plans[-1] == 20
    assert result["stopped_by"] == "steps" and result["step"] == 20 and now[0] == 30.0
    assert load_checkpoint(tmp_path / "m.pt")["state"]["step"] == 20


def test_time_budget_stops_a_run_whose_schedule_outlasts_it(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    with_fake_clock(trainer, lambda step: 1.0 if step < 25 else 10.0)  # a sudden slowdown after the last refit
    result = trainer.train(corpus[0], save_path=tmp_path / "m.pt", minutes=0.5, progress=False)
    assert result["stopped_by"] == "time" and result["step"] == 26  # 25 x 1 s + 10 s: past the 30 s budget
    assert load_checkpoint(tmp_path / "m.pt")["state"]["step"] == 26


def test_mfu_in_the_metrics_is_the_hand_computed_figure(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    assert all(group["fused"] for group in trainer.optimizer.param_groups)  # fused AdamW on the CPU too
    with_fake_clock(trainer, lambda step: 1.0)
    trainer._peak = (1e8, "a test's figure")
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=3, progress=False)
    # The tiny preset at vocab 300, context 32: weights used in products N = 300x64 (the tied
    # embedding) + 2 layers x (64x192 + 192 + 64x64 + 64 + 64x256 + 256 + 256x64 + 64 + 4 x 64)
    # + the final norm's 128 = 119,296; FLOPs per token = 6N + 12 x 2 layers x 64 x 32 = 764,928.
    # One step of 128 tokens a second on a peak of 1e8 FLOP/s: MFU = 764,928 x 128 / 1e8.
    for r in (r for r in records(tmp_path / "m.metrics.jsonl") if "loss" in r):
        assert r["tokens_per_s"] == 128 and r["mfu"] == 0.9791 and r["tokens"] == 128 * r["step"]


# ---- checkpoints on schedule, samples, the loss picture, progress lines -------------------------


def test_without_a_validation_split_checkpoints_are_still_saved_every_eval_every(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], val_fraction=0.0, eval_every=3)
    saved, original = [], trainer.save

    def save(path):
        original(path)
        saved.append(load_checkpoint(path)["state"]["step"])  # what a kill -9 right now would leave

    trainer.save = save
    result = trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=10, progress=False)
    assert saved == [3, 6, 9, 10] and result["stopped_by"] == "steps"
    assert not [r for r in records(tmp_path / "m.metrics.jsonl") if r.get("eval")]


def test_samples_at_each_evaluation_use_their_own_random_numbers(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=3, sample_tokens=8, sample_prompt="ROMEO:")
    state = torch.get_rng_state()
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=6, progress=False)
    samples = [r for r in records(tmp_path / "m.metrics.jsonl") if "sample" in r]
    assert [r["step"] for r in samples] == [3, 6] and {r["sample_prompt"] for r in samples} == {"ROMEO:"}
    # At most 8 tokens made. A token that ends inside a character decodes to U+FFFD, which encodes to
    # several: each U+FFFD counts as one of the tokens that made it.
    for text in (r["sample"] for r in samples):
        assert len(corpus[1].encode(text.replace("\ufffd", ""), allowed_special="all")) + text.count("\ufffd") <= 8
    # The same run without samples draws the same batches and dropout masks: the same losses.
    plain = tiny_trainer(corpus[1], eval_every=3, sample_tokens=0)
    torch.set_rng_state(state)
    plain.train(corpus[0], save_path=tmp_path / "p.pt", steps=6, progress=False)
    assert losses(tmp_path / "p.metrics.jsonl") == losses(tmp_path / "m.metrics.jsonl")
    assert not [r for r in records(tmp_path / "p.metrics.jsonl") if "sample" in r]


def test_default_sample_prompt_is_the_first_whole_line_of_the_validation_text(corpus, tmp_path):
    text, tokenizer = corpus
    trainer = tiny_trainer(tokenizer, eval_every=3, sample_tokens=4)
    trainer.train(text, save_path=tmp_path / "m.pt", steps=3, progress=False)
    [sample] = [r for r in records(tmp_path / "m.metrics.jsonl") if "sample" in r]
    tokens = np.fromfile(next(text.parent.glob("text.txt.*.tokens.bin")), dtype=np.uint16)
    val_text = tokenizer.decode(tokens[len(tokens) - int(len(tokens) * 0.1):][:64].tolist())
    line = val_text.split("\n", 1)[1]
    assert line.startswith(sample["sample_prompt"]) and len(sample["sample_prompt"]) > 10


def test_loss_picture_is_drawn_beside_the_checkpoint(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=2)
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=4, progress=False)
    picture = loss_picture_path(tmp_path / "m.pt")
    assert picture == tmp_path / "m.loss.png" and picture.read_bytes().startswith(b"\x89PNG")


def test_progress_without_a_terminal_is_plain_lines():
    stream = io.StringIO()
    with Progress(total=10, initial=0, enabled=True, stream=stream) as progress:
        progress.advance(3)  # between log steps nothing is printed
        progress.report({"step": 4, "loss": 5.0, "lr": 1e-3, "tokens_per_s": 12800, "mfu": 0.012,
                         "elapsed_s": 2.0}, steps_per_s=2.0)  # fmt: skip
    assert stream.getvalue() == "step 4/10 | loss 5.0000 | lr 1.00e-03 | 12,800 tok/s | mfu 1.2% | 0:02 elapsed, 0:03 left\n"


def test_a_run_logged_to_a_file_prints_one_line_per_log_step(corpus, tmp_path, capsys):
    trainer = tiny_trainer(corpus[1], eval_every=1000, log_every=2)
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=6, progress=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.split(" |")[0] for line in lines] == ["step 1/6", "step 2/6", "step 4/6", "step 6/6"]
    assert "\r" not in capsys.readouterr().err


# ---- evaluation: a plain function --------------------------------------------------------------


def test_evaluate_is_the_mean_loss_and_bits_per_byte_of_the_windows(corpus):
    torch.manual_seed(0)
    tokenizer = corpus[1]
    model = GPT2(GPT2Config.from_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=16))
    tokens = np.array(tokenizer.encode("To be, or not to be, that is the question. " * 8), dtype=np.uint16)
    windows, num_bytes = validation_windows(tokens, 16, tokenizer)
    result = evaluate(model, windows, num_bytes, batch_size=3)
    logits, _ = model(windows[:, :-1])
    expected = F.cross_entropy(logits.reshape(-1, logits.size(-1)), windows[:, 1:].reshape(-1)).item()
    assert result["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert result["val_ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert result["val_bpb"] == pytest.approx(expected * windows[:, 1:].numel() / math.log(2) / num_bytes, rel=1e-5)
    assert model.training  # left as it was


def test_a_fresh_run_starts_a_fresh_metrics_log_and_a_continued_one_drops_what_comes_after_it(corpus, tmp_path):
    metrics = tmp_path / "m.metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 9.0}\n')  # an older run's log under the same name
    trainer = tiny_trainer(corpus[1], eval_every=4)
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=4, progress=False)
    assert [r["step"] for r in records(metrics) if "loss" in r] == [1, 2, 3, 4]
    # As if the run had gone on past its checkpoint of step 4 and been killed mid-line.
    with open(metrics, "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "eval": true, "val_loss": 1.0}\n{"step": 7, "lo')
    again = Trainer.from_checkpoint(tmp_path / "m.pt", log=lambda line: None)
    again.train(corpus[0], save_path=tmp_path / "m.pt", steps=6, progress=False)
    assert [r["step"] for r in records(metrics) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records(metrics) if r.get("eval")] == [4, 6]
    assert 1.0 not in [r["loss"] for r in records(metrics) if "loss" in r]


def test_with_steps_and_minutes_the_schedule_is_the_shorter_of_the_two(corpus, tmp_path):
    lines = []
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    trainer.log = lines.append
    with_fake_clock(trainer, lambda step: 1.0)
    result = trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=100_000, minutes=0.5, progress=False)
    assert trainer.total_steps == 29 and result["stopped_by"] == "steps"  # as with --minutes alone
    assert "schedule: 100,000 steps (--steps), or fewer to fit --minutes 0.5" in lines
    short = tiny_trainer(corpus[1], eval_every=1000)
    with_fake_clock(short, lambda step: 1.0)
    short.train(corpus[0], save_path=tmp_path / "s.pt", steps=12, minutes=0.5, progress=False)
    assert short.total_steps == 12  # the budget shortens a schedule, never lengthens it
    with pytest.raises(ValueError, match="--steps and --epochs both give the schedule's length"):
        tiny_trainer(corpus[1], steps=5, epochs=1.0)


def test_a_failed_save_never_loses_the_run(corpus, tmp_path, monkeypatch):
    import errno

    from gpt2_llm import trainer as trainer_module

    real_save = trainer_module.save_checkpoint

    def disk_full_for_the_target(path, checkpoint):
        if path == tmp_path / "m.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(path, checkpoint)

    monkeypatch.setattr(trainer_module, "save_checkpoint", disk_full_for_the_target)
    lines = []
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    trainer.log = lines.append
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=3, progress=False)
    assert trainer.saved_to == tmp_path / "m.rescued.pt" and not (tmp_path / "m.pt").exists()
    assert load_checkpoint(tmp_path / "m.rescued.pt")["state"]["step"] == 3
    assert any(f"could not write {tmp_path / 'm.pt'} (No space left on device): saved the checkpoint of step 3 as "
               f"{tmp_path / 'm.rescued.pt'} instead" in line for line in lines)


def test_the_default_warm_up_is_a_tenth_of_the_schedule_at_most_100(corpus, tmp_path):
    short = tiny_trainer(corpus[1], warmup_steps=None, eval_every=1000)
    short.train(corpus[0], save_path=tmp_path / "s.pt", steps=30, progress=False)
    lrs = [r["lr"] for r in records(tmp_path / "s.metrics.jsonl") if "loss" in r]
    assert short.warmup_steps == 3 and lrs[:4] == pytest.approx([1e-3, 2e-3, 3e-3, 3e-3]) and max(lrs) <= 3e-3 + 1e-12
    assert tiny_trainer(corpus[1], warmup_steps=None, steps=5000).warmup_steps == 100
    assert tiny_trainer(corpus[1], warmup_steps=7).warmup_steps == 7


def test_the_schedule_is_refitted_once_an_evaluation_has_been_timed(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=5)
    now = with_fake_clock(trainer, lambda step: 1.0)
    original = trainer._evaluate_sample_save_draw

    def slow_evaluation(run, last):  # an evaluation, sample, save and picture that take 10 s
        original(run, last)
        now[0] += 10.0

    trainer._evaluate_sample_save_draw = slow_evaluation
    result = trainer.train(corpus[0], save_path=tmp_path / "m.pt", minutes=1.0, progress=False)
    # 1 s a step plus 10 s every 5 steps: 20 steps and their 4 evaluations fill the 60 s exactly.
    # Counting evaluations as forward passes only (as before one was timed) would plan 29 steps
    # there, which the budget would cut short of the schedule's end.
    assert result["stopped_by"] == "steps" and trainer.total_steps == 20 and now[0] == 60.0


# ---- Muon, gradient checkpointing, memory of the options -------------------------------------------


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(corpus):
    torch.manual_seed(0)
    config = GPT2Config.from_preset("tiny", vocab_size=300, block_size=32, mlp="swiglu", qk_norm=True,
                                    tie_embeddings=False)  # fmt: skip
    trainer = Trainer(GPT2(config), corpus[1], log=lambda line: None, optimizer="muon", device="cpu", dtype="float32")
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    muon = [names[id(p)] for group in trainer.muon.param_groups for p in group["params"]]
    decayed, plain = ([names[id(p)] for p in group["params"]] for group in trainer.optimizer.param_groups)
    per_block = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_fc2.weight", "mlp.c_proj.weight"]
    assert muon == [f"decoder.h.{i}.{name}" for i in range(2) for name in per_block]
    assert decayed == ["wte.weight", "wpe.weight", "lm_head.weight"]
    gains_and_biases = ["ln_1.weight", "ln_1.bias", "attn.c_attn.bias", "attn.c_proj.bias", "attn.q_norm.weight",
                        "attn.k_norm.weight", "ln_2.weight", "ln_2.bias", "mlp.c_fc.bias", "mlp.c_fc2.bias",
                        "mlp.c_proj.bias"]  # fmt: skip
    assert plain == [f"decoder.h.{i}.{name}" for i in range(2) for name in gains_and_biases] + ["ln_f.weight", "ln_f.bias"]
    assert trainer.optimizer.param_groups[0]["weight_decay"] == trainer.muon.param_groups[0]["weight_decay"] == 0.1
    assert trainer.muon.param_groups[0]["adjust_lr_fn"] == "original" and trainer.muon.param_groups[0]["momentum"] == 0.95
    assert tiny_trainer(corpus[1]).muon is None  # AdamW alone by default


def test_one_schedule_scales_both_learning_rates(corpus):
    trainer = tiny_trainer(corpus[1], optimizer="muon", muon_lr=0.05, warmup_steps=2)
    trainer.total_steps = 6
    for step in range(7):
        trainer._set_lr(step)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(get_lr(step, 3e-3, 2, 6, 0.1), abs=1e-15)
        assert trainer.muon.param_groups[0]["lr"] == pytest.approx(get_lr(step, 0.05, 2, 6, 0.1), abs=1e-15)
    assert tiny_trainer(corpus[1], optimizer="muon").muon.defaults["lr"] == 0.02  # torch's example value


def test_muon_moves_only_its_matrices_as_torchs_muon_does(corpus):
    trainer = tiny_trainer(corpus[1], optimizer="muon", lr=1e-12, warmup_steps=0)  # AdamW all but frozen
    x = torch.randint(0, 300, (4, 33), generator=torch.Generator().manual_seed(0))
    trainer.batches = iter([(x[:, :-1], x[:, 1:])])
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    reference = torch.nn.Linear(64, 192, bias=False)  # block 0's c_attn, stepped by hand with torch's Muon
    reference.weight.data.copy_(before["decoder.h.0.attn.c_attn.weight"])
    trainer._set_lr(0)
    trainer.total_steps = 10
    original_step = trainer.muon.step

    def step_and_copy():  # the (clipped) gradient Muon is given
        reference.weight.grad = trainer.model.decoder.h[0].attn.c_attn.weight.grad.clone()
        return original_step()

    trainer.muon.step = step_and_copy
    trainer._train_step(trainer.model)
    torch.optim.Muon([reference.weight], lr=trainer.muon.param_groups[0]["lr"], weight_decay=0.1,
                     adjust_lr_fn="original").step()  # fmt: skip
    assert_close(trainer.model.decoder.h[0].attn.c_attn.weight, reference.weight, atol=1e-7)
    for name, p in trainer.model.named_parameters():
        moved = (p - before[name]).abs().max().item()
        assert (moved > 1e-4) == (name.startswith("decoder.") and p.dim() == 2), name


def test_resume_with_muon_and_gradient_checkpointing_gives_the_same_losses(corpus, tmp_path):
    text, tokenizer = corpus
    options = dict(optimizer="muon", grad_checkpoint=True)
    straight = tiny_trainer(tokenizer, **options)
    straight.train(text, save_path=tmp_path / "a.pt", steps=10, progress=False)
    first = tiny_trainer(tokenizer, **options)
    _train_until(first, text, tmp_path / "b.pt", total=10, stop_at=6)
    assert "muon" in load_checkpoint(tmp_path / "b.pt")  # Muon's momentum is stored beside AdamW's state
    again = Trainer.from_checkpoint(tmp_path / "b.pt", log=lambda line: None)
    assert again.muon is not None and again.config.grad_checkpoint
    again.train(text, save_path=tmp_path / "b.pt", progress=False)
    assert losses(tmp_path / "b.metrics.jsonl") == losses(tmp_path / "a.metrics.jsonl")
    final_a, final_b = load_checkpoint(tmp_path / "a.pt")["model"], load_checkpoint(tmp_path / "b.pt")["model"]
    for name in final_a:
        torch.testing.assert_close(final_a[name], final_b[name], atol=0, rtol=0, msg=name)


def test_a_continued_run_keeps_its_optimizer(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=2, progress=False)
    with pytest.raises(ValueError, match=r"--optimizer muon does not fit .*m.pt, trained with adamw: a continued run "
                                         r"keeps its optimizer"):  # fmt: skip
        Trainer.from_checkpoint(tmp_path / "m.pt", optimizer="muon")
    assert Trainer.from_checkpoint(tmp_path / "m.pt", log=lambda line: None, optimizer="adamw").muon is None


def test_gradient_checkpointing_changes_no_loss(corpus, tmp_path, monkeypatch):
    from gpt2_llm import decoder as decoder_module

    real_checkpoint, calls = decoder_module.checkpoint, []
    monkeypatch.setattr(decoder_module, "checkpoint", lambda *a, **kw: calls.append(1) or real_checkpoint(*a, **kw))
    for name, recompute in (("plain", False), ("recomputed", True)):
        trainer = tiny_trainer(corpus[1], eval_every=1000, grad_checkpoint=recompute)
        trainer.train(corpus[0], save_path=tmp_path / f"{name}.pt", steps=4, progress=False)
        assert len(calls) == (4 * trainer.model.config.n_layer if recompute else 0)  # every block of every step
    assert losses(tmp_path / "recomputed.metrics.jsonl") == losses(tmp_path / "plain.metrics.jsonl") != []


def test_step_memory_follows_the_shapes_of_the_options():
    gpt2 = GPT2Config()
    C, L, T, V, b = 768, 12, 1024, 50304, 8
    logits = b * T * V * (2 * 2 + 4)
    # GPT-2: 12 L C^2 + (V + T) C weights at 16 bytes, Korthikanti's 34 C values a layer and token.
    assert step_memory(gpt2, b, torch.bfloat16) == 16 * (12 * L * C * C + (V + T) * C) + b * T * L * 34 * C + logits
    # One key/value head of 64: the two matrices lose C x (C - 64) each, the activations 4 x (C - 64).
    mqa = replace(gpt2, n_kv_head=1)
    assert step_memory(gpt2, b, torch.bfloat16) - step_memory(mqa, b, torch.bfloat16) == (
        16 * L * 2 * C * (C - 64) + b * T * L * 4 * (C - 64))
    # SwiGLU at width 2048: as many weights as the GELU MLP (3 x 2048 = 2 x 3072), and as many activations
    # (6 x 2048 = 4 x 3072); at width 3072 (--n-inner) half as many again of both.
    swiglu = replace(gpt2, mlp="swiglu")
    assert step_memory(swiglu, b, torch.bfloat16) == step_memory(gpt2, b, torch.bfloat16)
    assert step_memory(replace(swiglu, n_inner=3072), b, torch.bfloat16) - step_memory(gpt2, b, torch.bfloat16) == (
        16 * L * C * 3072 + b * T * L * 2 * 3072)
    # An untied head adds V x C weights; recomputation keeps one layer's 34 C and every layer's input.
    assert step_memory(replace(gpt2, tie_embeddings=False), b, torch.bfloat16) - step_memory(gpt2, b, torch.bfloat16) == 16 * V * C
    assert step_memory(gpt2, b, torch.bfloat16, grad_checkpoint=True) == (
        16 * (12 * L * C * C + (V + T) * C) + b * T * (L * 2 * C + 34 * C) + logits)
    # --ema keeps a float32 average of every weight.
    assert step_memory(gpt2, b, torch.bfloat16, averaged=True) - step_memory(gpt2, b, torch.bfloat16) == (
        4 * (12 * L * C * C + (V + T) * C))


# ---- the moving average of the weights (--ema) -------------------------------------------------------


def test_the_moving_average_follows_its_formula_and_swaps_in_and_out_exactly():
    model = torch.nn.Linear(2, 1, bias=False)
    average = WeightAverage(model, decay=0.5)
    expected = model.weight.detach().clone()
    for t, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update()
        keep = min(0.5, (1 + t) / (10 + t))  # the warm-up's 0.1, 0.18, ... up to t = 7, then the decay
        expected = keep * expected + (1 - keep) * value
    assert average.updates == 12
    torch.testing.assert_close(average.average[0], expected, rtol=1e-6, atol=0)
    with average.swapped_in():
        torch.testing.assert_close(model.weight.detach(), expected, rtol=1e-6, atol=0)
    assert (model.weight == 12.0).all()  # the weights themselves back, exactly


def test_the_averages_state_dict_names_a_tied_weight_twice(corpus):
    trainer = tiny_trainer(corpus[1], ema=0.5)
    assert trainer.model.config.tie_embeddings
    with torch.no_grad():
        trainer.model.wte.weight.add_(1.0)  # the weights move; the average has not taken them in
    state = trainer.average.state_dict(trainer.model)
    assert state.keys() == trainer.model.state_dict().keys()
    torch.testing.assert_close(state["lm_head.weight"], state["wte.weight"], atol=0, rtol=0)
    torch.testing.assert_close(state["wte.weight"] + 1.0, trainer.model.wte.weight.detach(), atol=0, rtol=0)


def test_with_ema_the_checkpoint_holds_the_average_and_resumes_exactly(corpus, tmp_path):
    text, tokenizer = corpus
    options = dict(ema=0.8, eval_every=4, optimizer="muon")
    straight = tiny_trainer(tokenizer, **options)
    result = straight.train(text, save_path=tmp_path / "a.pt", steps=10, progress=False)
    first = tiny_trainer(tokenizer, **options)
    _train_until(first, text, tmp_path / "b.pt", total=10, stop_at=6)
    again = Trainer.from_checkpoint(tmp_path / "b.pt", log=lambda line: None)
    assert again.average.updates == 6
    again.train(text, save_path=tmp_path / "b.pt", progress=False)
    assert losses(tmp_path / "b.metrics.jsonl") == losses(tmp_path / "a.metrics.jsonl")
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    for key in ("model", "training_weights"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], atol=0, rtol=0, msg=f"{key} {name}")
    name = "decoder.h.0.mlp.c_fc.weight"
    assert (a["model"][name] - a["training_weights"][name]).abs().max() > 1e-4  # the average is not the weights
    # The log says that the evaluations are the average's, and holds both optimizers' rates: one
    # schedule from two peaks (the loss picture draws both).
    logged = records(tmp_path / "a.metrics.jsonl")
    assert [r.get("ema") for r in logged if r.get("eval")] == [0.8] * 3  # steps 4, 8 and the last
    steps = [r for r in logged if "loss" in r]
    assert steps and all(r["muon_lr"] == pytest.approx(r["lr"] * MUON_LR / straight.config.lr) for r in steps)
    # The reported loss is the average's: the model every reader of the checkpoint gets.
    model = GPT2(GPT2Config(**a["model_config"]))
    model.load_state_dict(a["model"])
    c = straight.config
    _, held_out, _ = split_tokens(load_tokens(text, tokenizer), c.val_fraction, 32)
    windows, num_bytes = validation_windows(held_out, 32, tokenizer, c.eval_tokens)
    assert result["val_loss"] == pytest.approx(evaluate(model, windows, num_bytes, c.batch_size)["val_loss"], rel=1e-6)


def test_a_run_continued_without_ema_goes_on_from_the_weights_not_their_average(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], ema=0.8, eval_every=1000)
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=5, progress=False)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    plain = Trainer.from_checkpoint(tmp_path / "m.pt", log=lambda line: None, ema=0.0)
    assert plain.average is None
    for name, value in plain.model.state_dict().items():
        torch.testing.assert_close(value, ckpt["training_weights"][name], atol=0, rtol=0, msg=name)
    plain.train(corpus[0], save_path=tmp_path / "m.pt", steps=7, progress=False)
    assert "training_weights" not in load_checkpoint(tmp_path / "m.pt")


def test_training_weights_that_do_not_fit_the_model_are_refused_in_one_line(corpus, tmp_path):
    from gpt2_llm import save_checkpoint
    from gpt2_llm.checkpoint import CheckpointError

    trainer = tiny_trainer(corpus[1], ema=0.8, eval_every=1000)
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=2, progress=False)
    ckpt = load_checkpoint(tmp_path / "m.pt")
    del ckpt["training_weights"]["wpe.weight"]
    save_checkpoint(tmp_path / "broken.pt", ckpt)
    with pytest.raises(CheckpointError, match=r"broken.pt: its training weights do not fit its model \(a damaged file\?\)$"):
        Trainer.from_checkpoint(tmp_path / "broken.pt", log=lambda line: None)


# ---- instruction records ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alpaca_records(tmp_path_factory):
    """(a JSON-lines file of 200 Alpaca records of unequal lengths, a tokenizer learned from them)."""
    import json
    import random

    from gpt2_llm.data import read_records

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("records") / "data.jsonl"
    lines = []
    for k in range(200):
        word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 30)))
        lines.append(json.dumps({"instruction": "Reverse the word.", "input": word, "output": word[::-1]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    template, conversations = read_records([path])
    return path, BPE.train("<|endoftext|>".join(template.render(c) for c in conversations), vocab_size=300)


def test_padding_never_leaks_into_the_loss(alpaca_records):
    from gpt2_llm.data import encode_examples, instruction_eval_set, read_records

    torch.manual_seed(0)
    path, tokenizer = alpaca_records
    model = GPT2(GPT2Config.from_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=128))
    template, conversations = read_records([path])
    examples, _ = encode_examples(conversations[:5], template, tokenizer, 128)
    assert len(set(examples.lengths.tolist())) > 1  # unequal lengths: the batch has padding
    one_by_one, count = 0.0, 0
    for k in range(5):  # each example alone, unpadded
        x, y = examples.batch([k], pad_id=0)
        n = int((y != -100).sum())
        one_by_one += model(x, y)[1].item() * n
        count += n
    for pad_id in (0, tokenizer.vocab_size - 1):
        (x, y), num_bytes = instruction_eval_set(examples, tokenizer, pad_id)
        result = evaluate(model, (x, y), num_bytes, batch_size=5)  # one padded batch
        assert result["val_loss"] == pytest.approx(one_by_one / count, abs=1e-5)
        assert model(x, y)[1].item() == pytest.approx(one_by_one / count, abs=1e-5)  # untrimmed, too


def test_a_run_on_records_trains_on_the_answers_and_stores_its_template(alpaca_records, tmp_path):
    from gpt2_llm.data import read_records
    from gpt2_llm.instruct import TEMPLATES, encode_segments

    path, tokenizer = alpaca_records
    lines = []
    trainer = tiny_trainer(tokenizer, block_size=150, eval_every=4)  # the records have 119 to 175 tokens
    trainer.log = lines.append
    result = trainer.train(path, save_path=tmp_path / "m.pt", steps=4, progress=False)
    assert result["stopped_by"] == "steps" and math.isfinite(result["val_loss"])
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["chat_template"] == TEMPLATES["alpaca"].to_checkpoint()
    assert ckpt["data"]["kind"] == "instructions"
    # The records longer than the context (151 tokens: 150 inputs and the last target) are cut.
    template, conversations = read_records([path])
    too_long = [len(encode_segments(template.segments(c), tokenizer)[0]) > 151 for c in conversations]
    held_out = too_long[9::10]
    assert 0 < sum(too_long) < 200
    [line] = [line for line in lines if line.startswith("instructions:")]
    assert line == (f"instructions: 200 alpaca records, 180 to train on (loss on the responses only), 20 held out; "
                    f"{sum(too_long)} longer than the context of 150 tokens were cut "
                    f"({sum(too_long) - sum(held_out)} of those to train on)")
    samples = [r for r in records(tmp_path / "m.metrics.jsonl") if "sample" in r]
    assert samples[0]["sample_prompt"].endswith("### Response:\n")  # a held-out instruction, ready for its answer


def test_no_mask_prompt_trains_on_every_position_but_validates_on_the_answers(alpaca_records, tmp_path):
    path, tokenizer = alpaca_records
    masked, everything = tiny_trainer(tokenizer, block_size=150), tiny_trainer(tokenizer, block_size=150, mask_prompt=False)
    results = [t.train(path, save_path=tmp_path / f"{k}.pt", steps=1, progress=False)
               for k, t in enumerate((masked, everything))]
    xm, ym = next(masked.batches)
    xe, ye = next(everything.batches)
    assert torch.equal(xm, xe)  # the same examples in the same order
    padding = ye == -100
    assert padding.any()  # unequal lengths, padded
    # Without the mask every position but the padding counts; with it, the answers' only.
    counted = ym != -100
    assert not (counted & padding).any() and 0 < counted.sum() < (~padding).sum() / 2
    assert torch.equal(ye[counted], ym[counted])
    assert results[0]["val_loss"] != results[1]["val_loss"]  # the models differ after a step, but
    # both validate on the answers alone (the same targets: compare the result with evaluate's own)
    (_, val_everything), (_, val_masked) = (t._instruction_data([path]).val for t in (everything, masked))
    assert torch.equal(val_everything, val_masked)
    assert (val_masked != -100).sum() < val_masked.numel() / 2


def test_a_run_on_records_resumes_exactly(alpaca_records, tmp_path):
    path, tokenizer = alpaca_records
    tiny_trainer(tokenizer).train(path, save_path=tmp_path / "a.pt", steps=10, progress=False)
    _train_until(tiny_trainer(tokenizer), path, tmp_path / "b.pt", total=10, stop_at=6)
    again = Trainer.from_checkpoint(tmp_path / "b.pt", log=lambda line: None)
    assert again.chat_template["name"] == "alpaca"
    again.train(path, save_path=tmp_path / "b.pt", progress=False)
    assert losses(tmp_path / "b.metrics.jsonl") == losses(tmp_path / "a.metrics.jsonl")


def test_a_checkpoint_of_text_does_not_continue_on_records(corpus, alpaca_records, tmp_path):
    from gpt2_llm.data import DataError

    text, tokenizer = corpus
    tiny_trainer(tokenizer).train(text, save_path=tmp_path / "m.pt", steps=2, progress=False)
    again = Trainer.from_checkpoint(tmp_path / "m.pt", log=lambda line: None)
    with pytest.raises(DataError, match="trained on text, not on instruction records"):
        again.train(alpaca_records[0], save_path=tmp_path / "m.pt", steps=4, progress=False)


def test_time_budget_a_fit_made_while_the_machine_was_busy_does_not_end_the_run_early(corpus, tmp_path):
    """Steps 10 and 11 take a minute each (another program held the cores), then 1 s again. The
    refit after step 11 times that one-minute step and plans 2 more, which run in 2 s, long before
    the next refit (a tenth of the 300 s budget later): the schedule ends at step 14 with 2:48
    left. The run goes on at the lowest learning rate until the budget ends instead of stopping."""
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    now = with_fake_clock(trainer, lambda step: 60.0 if 10 <= step < 12 else 1.0)
    plans = planned_lengths(trainer)
    lines = []
    trainer.log = lines.append
    result = trainer.train(corpus[0], save_path=tmp_path / "m.pt", minutes=5, progress=False)
    assert result["stopped_by"] == "time" and now[0] >= 300
    assert plans[13] == 14 and set(plans[14:]) == {14}  # no refit after the end: the rate stays on its floor
    assert result["step"] == 14 + 168  # the 168 s left, at 1 s a step
    floor = trainer.config.lr * trainer.config.min_lr_ratio
    assert all(group["lr"] == pytest.approx(floor) for group in trainer.optimizer.param_groups)
    assert "the schedule ended at step 14 with 2:48 of the budget left" in " ".join(lines)


def test_time_budget_with_steps_stops_at_the_steps(corpus, tmp_path):
    """--steps with --minutes: the steps are the user's limit, reached well within the budget."""
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    with_fake_clock(trainer, lambda step: 1.0)
    result = trainer.train(corpus[0], save_path=tmp_path / "m.pt", minutes=5, steps=30, progress=False)
    assert result["stopped_by"] == "steps" and result["step"] == 30


def test_label_smoothing_reaches_the_training_loss_only(corpus, tmp_path, monkeypatch):
    seen = []  # (training mode, label_smoothing) of every forward pass with targets
    real_forward = GPT2.forward

    def watched(model, ids, targets=None, **settings):
        if targets is not None:
            seen.append((model.training, settings.get("label_smoothing", 0.0)))
        return real_forward(model, ids, targets, **settings)

    monkeypatch.setattr(GPT2, "forward", watched)
    trainer = tiny_trainer(corpus[1], label_smoothing=0.2, eval_every=2)
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", steps=3, progress=False)
    assert seen.count((True, 0.2)) == 3 and (False, 0.0) in seen  # the steps smoothed, the evaluations not
    assert set(seen) == {(True, 0.2), (False, 0.0)}


def test_the_test_part_is_read_once_at_the_end_and_reported_beside_validation(corpus, tmp_path):
    text, tokenizer = corpus
    trainer = tiny_trainer(tokenizer, val_fraction=0.1, test_fraction=0.2, eval_every=3)
    read = []  # every set of windows an evaluation reads, in order
    real_evaluate = gpt2_llm.trainer.evaluate

    def watched(model, windows, *args, **kwargs):
        read.append(windows)
        return real_evaluate(model, windows, *args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(gpt2_llm.trainer, "evaluate", watched)
        result = trainer.train(text, save_path=tmp_path / "m.pt", steps=7, progress=False)
    tokens = load_tokens(text, tokenizer)
    _, val, test = split_tokens(tokens, 0.1, 32, 0.2)
    assert len(test) == int(len(tokens) * 0.2) and len(val) == int(len(tokens) * 0.1)
    test_windows, test_bytes = validation_windows(test, 32, tokenizer)
    # Validation at steps 3, 6 and the last; the test part once, after the last validation.
    assert [torch.equal(w, test_windows) for w in read] == [False, False, False, True]
    model = GPT2(GPT2Config(**load_checkpoint(tmp_path / "m.pt")["model_config"]))
    model.load_state_dict(load_checkpoint(tmp_path / "m.pt")["model"])
    expected = evaluate(model, test_windows, test_bytes, trainer.config.batch_size)
    assert result["test_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
    assert result["test_bpb"] == pytest.approx(expected["val_bpb"], rel=1e-6)
    assert result["val_loss"] != result["test_loss"]
    logged = records(tmp_path / "m.metrics.jsonl")
    assert logged[-1] == {"step": 7, "test": True, **{k: round(v, 5) for k, v in result.items() if k.startswith("test_")}}


def test_test_fraction_is_checked():
    with pytest.raises(ConfigError, match="--test-fraction must be in"):
        TrainConfig(test_fraction=1.0)
    with pytest.raises(ConfigError, match="leave nothing to train on"):
        TrainConfig(val_fraction=0.5, test_fraction=0.5)
