import pytest
import torch

from gpt2_llm import GPT2, GPT2Config


@pytest.fixture
def tiny_config() -> GPT2Config:
    # Small enough to run in milliseconds, with 4 heads and an MLP of its own width.
    return GPT2Config(vocab_size=97, n_layer=2, n_head=4, n_embd=32, block_size=24)


@pytest.fixture
def tiny_model(tiny_config) -> GPT2:
    torch.manual_seed(0)
    return GPT2(tiny_config).eval()
