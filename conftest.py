"""Shared test fixtures: the reference data in ../shared/data (never copied into the repo)."""

import os
import signal
from pathlib import Path

import pytest


def pytest_configure(config):
    """Under pytest-xdist (the README's `-n 2`) each worker, and every command it starts, uses one
    thread: two workers with torch's default of a thread per core would oversubscribe the cores,
    which can make torch's parallel kernels many times slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)
        # The workers ignore Ctrl-C (their controller handles it), and a command started with it
        # ignored ignores it too: the tests that interrupt commands need Python's own handler back.
        signal.signal(signal.SIGINT, signal.default_int_handler)


# GPT2_TEST_DATA_DIR names another folder (an empty or missing one shows what runs without it).
DATA_DIR = Path(os.environ.get("GPT2_TEST_DATA_DIR") or Path(__file__).resolve().parent.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The reference texts and GPT-2's tokenizer files. Without them, the tests that compare against
    them skip (the others make the text they need: gpt2_llm/tests/conftest.py's some_text)."""
    if not (DATA_DIR / "tinyshakespeare.txt").is_file():
        pytest.skip(f"reference data not found at {DATA_DIR} (../shared/data beside the checkout, or "
                    f"GPT2_TEST_DATA_DIR)")
    return DATA_DIR
