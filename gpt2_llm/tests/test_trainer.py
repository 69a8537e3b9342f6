"""Tests of gpt2_llm/trainer.py: the schedule, accumulation, pinned losses, exact resume, NaN
handling and checkpoint safety."""

import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bpe import BPE
from gpt2_llm import GPT2, GPT2Config, CheckpointError, load_checkpoint
from gpt2_llm import TrainConfig
from gpt2_llm.trainer import Trainer, TrainingError, best_path, get_lr, pick_dtype

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, data_dir):
    folder = tmp_path_factory.mktemp("corpus")
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000]
    (folder / "text.txt").write_text(text, encoding="utf-8")
    tokenizer = BPE.train(text, vocab_size=300)
    return folder / "text.txt", tokenizer


def tiny_trainer(tokenizer, seed=0, **overrides) -> Trainer:
    torch.manual_seed(seed)
    config = GPT2Config.from_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=32)
    options = dict(batch_size=4, lr=3e-3, warmup_steps=2, eval_every=5, eval_tokens=2000, log_every=1,
                   device="cpu", dtype="float32", seed=seed)
    return Trainer(GPT2(config), tokenizer, log=lambda line: None, **{**options, **overrides})


def losses(metrics: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]


# ---- pure pieces --------------------------------------------------------------------------------


def test_get_lr_table():
    # lr 1.0, warm-up 2 steps, 6 steps in all, floor 0.1: warm-up 0.5, 1.0, then the cosine
    # 0.1 + 0.45 * (1 + cos(pi * k / 4)) for k = 0..4.
    table = [get_lr(step, 1.0, 2, 6, 0.1) for step in range(8)]
    expected = [0.5, 1.0, 1.0, 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 0.55,
                0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4)), 0.1, 0.1]
    assert table == pytest.approx(expected, abs=1e-12)
    assert get_lr(0, 3e-4, 0, 10) == pytest.approx(3e-4)  # no warm-up: start at the peak


def test_config_errors_name_the_flag():
    with pytest.raises(ValueError, match="--batch-size must be at least 1.*--lr must be positive"):
        TrainConfig(batch_size=0, lr=-1)
    with pytest.raises(ValueError, match="--dtype"):
        TrainConfig(dtype="float8")


def test_dtype_choice():
    assert pick_dtype("float32", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    auto = pick_dtype("auto", torch.device("cpu"))
    from gpt2_llm.hardware import cpu_has_bf16
    assert auto == (torch.bfloat16 if cpu_has_bf16() else torch.float32)


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


def test_pinned_first_losses(corpus, tmp_path):
    """A seeded tiny model's first losses: any change in the math (init, loss, optimizer, data) fails here."""
    trainer = tiny_trainer(corpus[1], seed=0)
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", max_steps=6, progress=False)
    assert losses(tmp_path / "m.metrics.jsonl") == pytest.approx(PINNED, abs=2e-4)


PINNED = [5.74499, 5.61461, 5.43883, 5.23988, 5.20195, 5.18891]  # re-pinned when the embedding was padded to 64 rows (its init draws changed)


# ---- resume and checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["random", "epoch"])
def test_resume_gives_the_same_losses(corpus, tmp_path, mode):
    text, tokenizer = corpus
    straight = tiny_trainer(tokenizer, batch_mode=mode)
    straight.train(text, save_path=tmp_path / "a.pt", max_steps=12, progress=False)
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
            trainer._stop_signal = 2  # what the SIGINT handler sets
        return loss

    trainer._train_step = step_then_maybe_stop
    result = trainer.train(text, save_path=path, max_steps=total, progress=False)
    assert result["stopped_by"] == "signal" and result["step"] == stop_at


def test_checkpoint_holds_everything_and_loads_without_pickles(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1])
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", max_steps=5, progress=False)
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
        trainer.train(corpus[0], save_path=tmp_path / "m.pt", max_steps=10, progress=False)
    assert load_checkpoint(tmp_path / "m.pt")["state"]["step"] == 3  # the one saved at step 3


def test_crafted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model_config": {}, "model": {}, "x": Exploit()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(Exploit(), f)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pkl")
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1])
    trainer.save(tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")


KILLER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    from gpt2_llm.checkpoint import save_checkpoint
    k = 0
    while True:
        k += 1
        save_checkpoint(sys.argv[1], {{"model_config": {{}}, "model": {{"w": torch.full((400_000,), float(k))}}}})
        print(k, flush=True)
""")


def test_kill_during_save_never_corrupts(tmp_path):
    """SIGKILL a process that saves in a loop, many times: the file always loads, whole."""
    script = tmp_path / "saver.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    path = tmp_path / "ckpt.pt"
    import random
    import time

    rng = random.Random(0)
    seen = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one save is complete
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        value = load_checkpoint(path)["model"]["w"]
        assert torch.all(value == value[0])  # one save's data, never a mix
        assert value[0] >= 1
        seen += 1
        leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        for p in leftovers:  # a killed writer may leave its temporary file; never the checkpoint
            p.unlink()
    assert seen == 8


def test_gpt2_save_load_round_trip_through_the_one_loader(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1])
    trainer.model.save(tmp_path / "w.pt")
    model = GPT2.load(tmp_path / "w.pt")
    x = torch.randint(0, corpus[1].vocab_size, (2, 10))
    torch.testing.assert_close(model(x)[0], trainer.model.eval()(x)[0])


def test_time_budget_stops_training(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    result = trainer.train(corpus[0], save_path=tmp_path / "m.pt", max_minutes=0.02, progress=False)
    assert result["stopped_by"] in ("time", "steps")
    assert trainer.step >= 1 and (tmp_path / "m.pt").exists()
    if trainer.step > 10:  # the schedule's length was fitted to the budget after 10 steps
        assert trainer.total_steps is not None


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
    model = GPT2.load(tmp_path / "m.pt")
    assert model.config.block_size == 32


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_training_runs_and_learns(corpus, tmp_path, dtype):
    trainer = tiny_trainer(corpus[1], dtype=dtype, eval_every=1000)
    assert trainer.scaler.is_enabled() == (dtype == "float16")  # fp16 needs loss scaling, bf16 does not
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", max_steps=20, progress=False)
    first, last = losses(tmp_path / "m.metrics.jsonl")[0], losses(tmp_path / "m.metrics.jsonl")[-1]
    assert last < first - 0.3


# ---- the fast path and MFU ------------------------------------------------------------------------


def test_fused_adamw_on_cpu_and_mfu_in_the_metrics(corpus, tmp_path):
    trainer = tiny_trainer(corpus[1], eval_every=1000)
    assert all(group["fused"] for group in trainer.optimizer.param_groups)
    trainer.train(corpus[0], save_path=tmp_path / "m.pt", max_steps=3, progress=False)
    records = [json.loads(line) for line in (tmp_path / "m.metrics.jsonl").read_text().splitlines()]
    peak, source = trainer.peak_flops()
    assert "float32 matrix product measured on" in source
    for r in records:
        if "loss" in r:
            steps_per_s = r["tokens_per_s"] / trainer.tokens_per_step
            expected = steps_per_s * trainer.model.flops_per_token() * trainer.tokens_per_step / peak
            assert r["mfu"] == pytest.approx(expected, rel=0.02, abs=2e-4)


def test_peak_flops_is_measured_once_and_cached(tmp_path, monkeypatch):
    from gpt2_llm import hardware

    calls = []
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda device, dtype: calls.append(dtype) or 1.5e12)
    cpu = torch.device("cpu")
    assert hardware.peak_flops(cpu, torch.bfloat16, tmp_path)[0] == 1.5e12
    assert hardware.peak_flops(cpu, torch.bfloat16, tmp_path)[0] == 1.5e12  # from the cache file
    assert calls == [torch.bfloat16]
    hardware.peak_flops(cpu, torch.float32, tmp_path)  # another dtype is another entry
    assert calls == [torch.bfloat16, torch.float32]
    assert len(json.loads((tmp_path / "peak_flops.json").read_text())) == 2


def test_gpu_peaks_come_from_the_table(monkeypatch):
    from gpt2_llm import hardware

    monkeypatch.setattr(hardware, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    flops, source = hardware.peak_flops(torch.device("cuda"), torch.bfloat16)
    assert flops == 989e12 and "data sheet" in source
    assert hardware.peak_flops(torch.device("cuda"), torch.float32)[0] == 989e12 / 2  # TF32
    monkeypatch.setattr(hardware, "device_name", lambda device: "NVIDIA H100 PCIe")
    assert hardware.peak_flops(torch.device("cuda"), torch.bfloat16)[0] == 756e12


def test_measured_matmul_flops_is_plausible():
    flops = __import__("gpt2_llm.hardware", fromlist=["x"]).measure_matmul_flops(torch.device("cpu"), torch.float32, 0.05)
    assert 1e9 < flops < 1e14


# ---- several processes: torchrun with gloo on the loopback ---------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args, env=None):
    """`torchrun --nproc_per_node=nproc main.py train ...` on this machine, as a Popen."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(ROOT / "main.py"), "train",
               *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)


def train_args(corpus, tmp_path, *extra):
    vocab = tmp_path / "vocab.txt"
    if not vocab.exists():
        corpus[1].save(vocab)
    return [corpus[0], vocab, "--preset", "tiny", "--context", "32", "--batch-size", "4", "--dtype", "float32",
            "--device", "cpu", "--warmup-steps", "2", "--lr", "3e-3", "--eval-tokens", "2000", "--log-every", "1",
            *extra]


def test_two_processes_train_like_one_with_the_same_global_batch(corpus, tmp_path):
    args = train_args(corpus, tmp_path, "--steps", "6", "--eval-every", "3")
    ddp = torchrun(2, *args, "--out", tmp_path / "ddp.pt")
    _, err = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, err.decode()[-3000:]
    assert b"global batch 4 x 1 accumulation x 2 processes x 32 tokens = 256 tokens per step" in err
    assert err.count(b"step 6: val loss") == 1  # rank 0 alone reports
    one = subprocess.run([sys.executable, str(ROOT / "main.py"), "train", *map(str, args), "--grad-accum", "2",
                          "--out", str(tmp_path / "one.pt")], capture_output=True, cwd=ROOT, timeout=300)
    assert one.returncode == 0, one.stderr.decode()[-3000:]
    a, b = load_checkpoint(tmp_path / "ddp.pt"), load_checkpoint(tmp_path / "one.pt")
    assert a["state"]["step"] == b["state"]["step"] == 6
    for name, weight in a["model"].items():
        torch.testing.assert_close(weight, b["model"][name], atol=2e-5, rtol=1e-4, msg=name)
    assert losses(tmp_path / "ddp.metrics.jsonl") == pytest.approx(losses(tmp_path / "one.metrics.jsonl"), abs=1e-4)


def test_resume_under_torchrun_matches_an_uninterrupted_run(corpus, tmp_path):
    import signal
    import time

    args = train_args(corpus, tmp_path, "--steps", "400", "--eval-every", "50")
    straight = torchrun(2, *args, "--out", tmp_path / "a.pt")
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err.decode()[-3000:]

    stopped = torchrun(2, *args, "--out", tmp_path / "b.pt")
    metrics = tmp_path / "b.metrics.jsonl"
    deadline = time.monotonic() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 30) and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode != 0
    stopped_at = load_checkpoint(tmp_path / "b.pt")["state"]["step"]
    assert 30 <= stopped_at < 400, err.decode()[-3000:]

    resumed = torchrun(2, *args, "--out", tmp_path / "b.pt", "--resume", "auto")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-3000:]
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert b["state"]["step"] == 400
    # Separate processes may differ in the last bit of a float32 sum (see test_main.py); a resume
    # that lost anything (data position, optimizer, random state) differs by far more.
    for name, weight in a["model"].items():
        torch.testing.assert_close(weight, b["model"][name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_rank_that_dies_ends_the_run_with_an_error(corpus, tmp_path):
    import signal
    import time
    import uuid

    marker = uuid.uuid4().hex
    run = torchrun(2, *train_args(corpus, tmp_path, "--steps", "100000", "--eval-every", "1000"),
                   "--out", tmp_path / "m.pt", env={"GPT2_TEST_RUN": marker})
    metrics = tmp_path / "m.metrics.jsonl"
    deadline = time.monotonic() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    rank1 = [pid for pid in _pids_with_env(f"GPT2_TEST_RUN={marker}") if "RANK=1" in _environ(pid)]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGKILL)
    try:
        _, err = run.communicate(timeout=120)  # torchrun stops the other rank: no hang
    finally:
        run.kill()
    assert run.returncode != 0
    assert b"main.py FAILED" in err or b"ChildFailedError" in err or b"exitcode" in err


def _environ(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _pids_with_env(entry: str) -> list[int]:
    """Worker processes (python ... main.py train) whose environment holds `entry`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and entry in _environ(int(proc.name)):
            cmdline = (proc / "cmdline").read_bytes()
            if b"main.py" in cmdline and b"torch.distributed.run" not in cmdline:
                pids.append(int(proc.name))
    return pids
