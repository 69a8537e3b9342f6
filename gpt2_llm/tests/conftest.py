"""Shared fixtures and helpers of the package's tests."""

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from gpt2_llm import GPT2, GPT2Config

ROOT = Path(__file__).resolve().parents[2]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6) -> None:
    """|actual - expected| <= atol everywhere; on failure, say the largest difference. Compared in
    float32, so a bf16 result can be checked against a float32 reference."""
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"largest difference {diff:.3g} > {atol}"


@pytest.fixture
def tiny_config() -> GPT2Config:
    # Small enough to run in milliseconds, with 4 heads and an MLP of its own width.
    return GPT2Config(vocab_size=97, n_layer=2, n_head=4, n_embd=32, block_size=24)


@pytest.fixture
def tiny_model(tiny_config) -> GPT2:
    torch.manual_seed(0)
    return GPT2(tiny_config).eval()


def some_text(size: int, seed: int = 0) -> str:
    """`size` characters of a made-up play: speeches under their speakers' names, in sentences of
    words drawn as a language draws them (a few common, most rare). For the tests that need some
    text to learn from and not a particular one, so they run without ../shared/data; the same
    seed gives the same text."""
    import itertools

    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ther", "an", "st", "re", "ou", "ing", "ve", "wh", "ar", "el", "sh", "on",
                 "qu", "ig", "ur", "pe", "da", "nt", "is", "or", "be", "ch", "al", "gr", "ed", "ow", "fi"]  # fmt: skip
    made_up = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    lexicon = ["the", "and", "I", "to", "of", "you", "my", "a", "that", "in", "is", "not", "me", "it", "with"] + made_up
    cum_weights = list(itertools.accumulate(1 / (rank + 2) for rank in range(len(lexicon))))  # Zipf's law
    speakers = ["ROMEO", "JULIET", "First Citizen", "KING", "NURSE", "MENENIUS", "Second Servant", "PROSPERO"]
    speeches, length = [], 0
    while length < size:
        sentences = []
        for _ in range(rng.randint(1, 4)):
            words = rng.choices(lexicon, cum_weights=cum_weights, k=rng.randint(3, 14))
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", ",", "?", "!", ";", ":"]))
        speeches.append(f"{rng.choice(speakers)}:\n" + "\n".join(sentences) + "\n\n")
        length += len(speeches[-1])
    return "".join(speeches)[:size]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(60 KB of made-up text as a file, a 300-token tokenizer learned from it)."""
    from bpe import BPE

    folder = tmp_path_factory.mktemp("corpus")
    text = some_text(60_000)
    (folder / "text.txt").write_text(text, encoding="utf-8")
    return folder / "text.txt", BPE.train(text, vocab_size=300)


@pytest.fixture(scope="session")
def shakespeare_corpus(tmp_path_factory, data_dir):
    """(a 60 KB slice of Tiny Shakespeare as a file, a 300-token tokenizer learned from it): for the
    losses pinned on it."""
    from bpe import BPE

    folder = tmp_path_factory.mktemp("shakespeare")
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000]
    (folder / "text.txt").write_text(text, encoding="utf-8")
    return folder / "text.txt", BPE.train(text, vocab_size=300)


def records(metrics: Path) -> list[dict]:
    """The records of a metrics log (NAME.metrics.jsonl)."""
    return [json.loads(line) for line in Path(metrics).read_text().splitlines()]


def losses(metrics: Path) -> list[float]:
    """The training losses of a metrics log, in order."""
    return [r["loss"] for r in records(metrics) if "loss" in r]


def last_logged_step(metrics: Path) -> int:
    """The last training step in a metrics log that a run is still writing (0 before any)."""
    if not metrics.exists():
        return 0
    steps = []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written
        if "loss" in record:
            steps.append(record["step"])
    return max(steps, default=0)


# ---- command lines, run in this process --------------------------------------------------------


def run_main(*args, stdin: bytes | None = None, cwd: Path | None = None, text: bool = False,
             entry: str = "main") -> subprocess.CompletedProcess:
    """`python main.py ARGS` (or another script's main(argv), by module name), run in this process:
    the exit status, stdout and stderr as a subprocess gives them (bytes, or str with text=True).

    A process of its own costs seconds of start-up and of importing torch; this costs none. It stays
    faithful: the command gets its own sys.argv, standard streams (UTF-8, not terminals), standard
    input (empty unless given), working directory (the repository's unless given), a torch random state
    as fresh as a new process's, its warnings on its stderr; whatever process-wide state it changes
    (signal handlers, threads, the environment, random states) is put back after it. An exception
    that main() lets through, which a process would print as a traceback, propagates to fail the test."""
    import importlib

    entry_point = importlib.import_module(entry).main
    argv = [str(ROOT / f"{entry}.py"), *map(str, args)]
    out, err = io.BytesIO(), io.BytesIO()
    stdout, stderr = (io.TextIOWrapper(b, encoding="utf-8", write_through=True) for b in (out, err))
    with process_state_kept(cwd or ROOT), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), \
            invoked_as(argv, stdin or b""), warnings_to_stderr():
        try:
            code = entry_point(argv[1:])
        except SystemExit as e:  # argparse's usage errors (2) and --help (0)
            code = exit_status(e)
    stdout.flush()
    stderr.flush()
    outputs = [b.getvalue().decode("utf-8") if text else b.getvalue() for b in (out, err)]
    return subprocess.CompletedProcess([sys.executable, *argv], code, *outputs)


def exit_status(e: SystemExit) -> int:
    """The status a process ends with on `raise SystemExit(code)`; a message is printed as Python does."""
    if e.code is None or isinstance(e.code, int):
        return e.code or 0
    print(e.code, file=sys.stderr)
    return 1


@contextlib.contextmanager
def process_state_kept(cwd: Path):
    """Run in cwd, with torch's random state reset as in a new process; afterwards, put back what a
    command may change for the whole process (a process of its own would just end)."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads, environ, before, python_random = torch.get_num_threads(), dict(os.environ), os.getcwd(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(FRESH_SEED)
        try:
            os.chdir(cwd)
            yield
        finally:
            os.chdir(before)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            torch.set_num_threads(threads)
            os.environ.clear()
            os.environ.update(environ)
            random.setstate(python_random)


FRESH_SEED = torch.initial_seed()  # what a new process starts with, before any test seeds torch


@contextlib.contextmanager
def invoked_as(argv: list[str], stdin: bytes):
    """sys.argv and sys.stdin as `python SCRIPT ARGS` gives them (argv[0]: the script's path)."""
    saved = sys.argv, sys.stdin
    sys.argv, sys.stdin = argv, io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        yield
    finally:
        sys.argv, sys.stdin = saved


@contextlib.contextmanager
def warnings_to_stderr():
    """Warnings as a new process shows them, on the command's stderr (pytest would otherwise collect
    them itself, and a stray warning would not count against "one line on stderr")."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)  # Python's default filters
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        yield


def hub_offline(monkeypatch, home: Path) -> dict:
    """The Hugging Face hub offline, with its cache in home (empty unless a test fills it): set in the
    environment (the whole environment is returned, for a new process) and in this process's
    huggingface_hub, which reads the environment once, as it is imported."""
    from huggingface_hub import constants

    env = {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return dict(os.environ)
