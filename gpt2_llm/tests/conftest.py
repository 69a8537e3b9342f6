"""Shared fixtures and helpers of the package's tests."""

import json
from pathlib import Path

import pytest
import torch

from gpt2_llm import GPT2, GPT2Config


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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, data_dir):
    """(a 60 KB slice of Tiny Shakespeare as a file, a 300-token tokenizer learned from it)."""
    from bpe import BPE

    folder = tmp_path_factory.mktemp("corpus")
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
