"""The CPU dropout: the rate, the scale, the gradient, the random state, and where the model uses it."""

import pytest
import torch
from torch import nn

from gpt2_llm.config import GPT2Config
from gpt2_llm.dropout import Dropout, cpu_dropout
from gpt2_llm.gpt2 import GPT2


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_drops_at_the_rate_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(1 << 20)
    y = cpu_dropout(x, p)
    dropped = round(p * 65536)
    scale = 65536 / (65536 - dropped)
    kept = y != 0
    # Every element is either dropped or scaled by exactly 1 / (1 - rate).
    assert torch.equal(y[kept], torch.full_like(y[kept], scale))
    # 2^20 draws: the fraction dropped has a standard deviation under 0.0005 around p.
    assert abs((~kept).float().mean().item() - p) < 0.003
    assert abs(y.mean().item() - 1.0) < 0.006


def test_each_of_the_four_draws_in_a_random_word_is_unbiased():
    """One 64-bit number gives four elements their draws (elements 4i .. 4i+3). Each of the four
    must drop at the rate: a draw that took the number's sign bit from a non-negative range
    would never drop at p = 0.5."""
    torch.manual_seed(1)
    y = cpu_dropout(torch.ones(1 << 20), 0.5)
    per_position = (y == 0).view(-1, 4).float().mean(dim=0)  # 2^18 draws each: sd 0.001
    assert torch.allclose(per_position, torch.full((4,), 0.5), atol=0.005)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 32, requires_grad=True)
    y = cpu_dropout(x, 0.25)
    y.backward(torch.ones_like(y))
    expected = torch.where(y != 0, torch.tensor(65536 / (65536 - 16384)), torch.tensor(0.0))
    assert torch.equal(x.grad, expected)


def test_follows_the_global_seed_and_draws_anew_each_call():
    x = torch.randn(8, 16, 24)
    torch.manual_seed(3)
    first, second = cpu_dropout(x, 0.2), cpu_dropout(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(cpu_dropout(x, 0.2), first)
    assert not torch.equal(first, second)


def test_bf16_keeps_its_dtype_and_odd_sizes_work():
    torch.manual_seed(4)
    x = torch.ones(3, 5, 7, dtype=torch.bfloat16)  # 105 elements: not a multiple of four draws
    y = cpu_dropout(x, 0.2)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert set(y.unique().tolist()) <= {0.0, 1.25}


def test_the_module_is_nn_dropout_in_eval_mode_and_at_the_edges():
    drop = Dropout(0.3)
    assert isinstance(drop, nn.Dropout) and drop.state_dict() == {}
    x = torch.randn(10, 10)
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(cpu_dropout(x, 1.0), torch.zeros_like(x))


def test_the_model_drops_with_it_everywhere_dropout_was():
    model = GPT2(GPT2Config(vocab_size=64, n_layer=2, n_head=2, n_embd=16, block_size=8, dropout=0.1))
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 1 + 2 * 2  # the embeddings', and the two branches of each block
    assert all(type(m) is Dropout and m.p == 0.1 for m in drops)
