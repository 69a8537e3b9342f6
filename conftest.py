"""Shared test fixtures: the reference data in ../shared/data (never copied into the repo)."""

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parent.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "tinyshakespeare.txt").is_file():
        pytest.fail(f"reference data not found at {DATA_DIR}: the tests expect ../shared/data beside the checkout")
    return DATA_DIR
