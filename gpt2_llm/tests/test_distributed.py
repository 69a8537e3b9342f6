"""Tests of gpt2_llm/distributed.py through real torchrun jobs: gloo processes on the loopback,
launched by the test on a free port."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from gpt2_llm import load_checkpoint
from gpt2_llm.tests.conftest import last_logged_step, losses, records, run_main

ROOT = Path(__file__).resolve().parents[2]


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


# Every architecture option, with gradient checkpointing and Muon.
OPTIONS = ["--norm", "rmsnorm", "--mlp", "swiglu", "--kv-heads", "1", "--qk-norm", "--untied", "--no-bias", "--rope",
           "--grad-checkpoint", "--optimizer", "muon"]  # fmt: skip


# The plain GPT-2 run is in the slow set: the options run goes through the same DDP code and more.
@pytest.mark.parametrize("options", [pytest.param([], marks=pytest.mark.slow), OPTIONS], ids=["gpt2", "options"])
def test_two_processes_train_like_one_with_the_same_global_batch(corpus, tmp_path, options):
    args = train_args(corpus, tmp_path, "--steps", "6", "--eval-every", "3", *options)
    ddp = torchrun(2, *args, "--out", tmp_path / "ddp.pt")
    _, err = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, err.decode()[-3000:]
    assert b"global batch 4 x 1 accumulation x 2 processes x 32 tokens = 256 tokens per step" in err
    assert err.count(b"step 6: val loss") == 1  # rank 0 alone reports
    one = run_main("train", *args, "--grad-accum", "2", "--out", tmp_path / "one.pt")  # in this process
    assert one.returncode == 0, one.stderr.decode()[-3000:]
    a, b = load_checkpoint(tmp_path / "ddp.pt"), load_checkpoint(tmp_path / "one.pt")
    assert a["state"]["step"] == b["state"]["step"] == 6
    for name, weight in a["model"].items():
        torch.testing.assert_close(weight, b["model"][name], atol=2e-5, rtol=1e-4, msg=name)
    assert losses(tmp_path / "ddp.metrics.jsonl") == pytest.approx(losses(tmp_path / "one.metrics.jsonl"), abs=1e-4)
    val = [[r["val_loss"] for r in records(tmp_path / f"{run}.metrics.jsonl") if "val_loss" in r] for run in ("ddp", "one")]
    assert len(val[0]) == 2 and val[0] == pytest.approx(val[1], abs=1e-4)  # each rank scores its share of the windows


def test_two_processes_train_on_records_like_one(tmp_path):
    """Instruction records under torchrun: each rank takes its own padded batches of whole records
    (of other lengths than the other rank's); the averaged gradients are those of one process
    that accumulates the same batches."""
    import json

    from gpt2_llm.data import records_tokenizer

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Count to {k % 7}.", "output": " ".join("123456"[: k % 7])})
                            + "\n" for k in range(60)), encoding="utf-8")
    records_tokenizer([data], 300).save(tmp_path / "vocab.txt")
    args = [data, tmp_path / "vocab.txt", "--preset", "tiny", "--context", "64", "--batch-size", "3", "--dtype",
            "float32", "--device", "cpu", "--warmup-steps", "2", "--lr", "3e-3", "--log-every", "1", "--steps", "4",
            "--eval-every", "2", "--dropout", "0", "--optimizer", "adamw"]
    # Not the plan's dropout (its masks differ between ranks and accumulated batches) nor its Muon (torch's
    # runs its Newton-Schulz steps in bf16, where the gradients' last-bit differences round apart).
    ddp = torchrun(2, *args, "--out", tmp_path / "ddp.pt")
    _, err = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, err.decode()[-3000:]
    one = run_main("train", *args, "--grad-accum", "2", "--out", tmp_path / "one.pt")  # in this process
    assert one.returncode == 0, one.stderr.decode()[-3000:]
    a, b = load_checkpoint(tmp_path / "ddp.pt"), load_checkpoint(tmp_path / "one.pt")
    assert a["chat_template"]["name"] == "alpaca" and a["state"]["tokens_seen"] == b["state"]["tokens_seen"]
    for name, weight in a["model"].items():
        torch.testing.assert_close(weight, b["model"][name], atol=2e-5, rtol=1e-4, msg=name)


def test_resume_under_torchrun_matches_an_uninterrupted_run(corpus, tmp_path):


    args = train_args(corpus, tmp_path, "--steps", "200", "--eval-every", "50")
    straight = torchrun(2, *args, "--out", tmp_path / "a.pt")
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err.decode()[-3000:]

    stopped = torchrun(2, *args, "--out", tmp_path / "b.pt")
    metrics = tmp_path / "b.metrics.jsonl"
    deadline = time.monotonic() + 120
    while last_logged_step(metrics) < 30 and time.monotonic() < deadline:  # evals and samples are lines too
        time.sleep(0.05)
    stopped.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode != 0
    stopped_at = load_checkpoint(tmp_path / "b.pt")["state"]["step"]
    said = [line for line in err.decode().splitlines() if not line.startswith(("step ", " "))]
    assert 30 <= stopped_at < 200, "\n".join(said)[-4000:]

    resumed = torchrun(2, *args, "--out", tmp_path / "b.pt", "--resume", "auto")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-3000:]
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    assert b["state"]["step"] == 200
    # Separate processes may differ in the last bit of a float32 sum (see test_main.py); a resume
    # that lost anything (data position, optimizer, random state) differs by far more.
    for name, weight in a["model"].items():
        torch.testing.assert_close(weight, b["model"][name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_rank_that_dies_ends_the_run_with_an_error(corpus, tmp_path):


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
