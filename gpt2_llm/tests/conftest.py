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
