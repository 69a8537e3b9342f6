"""The chunked cross-entropy against F.cross_entropy: the loss, the gradient, the padding columns,
ignored targets, label smoothing; on both of its paths (the chunked one a CPU takes in training,
torch's kernel elsewhere)."""

import pytest
import torch
import torch.nn.functional as F

from gpt2_llm.fast_cpu import cross_entropy
from gpt2_llm.tests.conftest import assert_close


@pytest.fixture(params=["chunked", "fused kernel"])
def path(request, monkeypatch):
    """Each test runs on both paths: the chunked one a CPU takes in training, and torch's kernel,
    the path a GPU or the compiler takes."""
    if request.param == "fused kernel":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cross_entropy_equals_torchs(dtype):
    torch.manual_seed(0)
    logits = (3 * torch.randn(50, 1000)).to(dtype).requires_grad_()
    targets = torch.randint(0, 1000, (50,))
    targets[[3, 17]] = -100  # ignored positions
    loss = cross_entropy(logits, targets)
    (2.5 * loss).backward()  # a scale, as gradient accumulation gives
    fused_grad, logits.grad = logits.grad, None
    expected = F.cross_entropy(logits.float(), targets)
    (2.5 * expected).backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert fused_grad.dtype == dtype
    # float32: rounding only; bfloat16: at most two steps of its 8-bit mantissa at the largest value.
    atol = 1e-7 if dtype == torch.float32 else 2**-7 * logits.grad.abs().max().item()
    assert_close(fused_grad, logits.grad, atol=atol)
    assert not fused_grad[[3, 17]].any()


def test_cross_entropy_leaves_the_padding_columns_out(path):
    torch.manual_seed(0)
    padded = torch.randn(40, 128).requires_grad_()
    targets = torch.randint(0, 97, (40,))
    loss = cross_entropy(padded, targets, 97)
    loss.backward()
    real = padded.detach()[:, :97].clone().requires_grad_()
    expected = F.cross_entropy(real, targets)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert_close(padded.grad[:, :97], real.grad, atol=1e-7)
    assert not padded.grad[:, 97:].any()


def test_ignored_targets_get_no_gradient_and_the_loss_is_the_mean_of_the_others(path):
    """The loss mask of instruction records: targets of -100 (a prompt, padding) are left out."""
    torch.manual_seed(0)
    logits = torch.randn(12, 128).requires_grad_()
    targets = torch.randint(0, 97, (12,))
    masked = targets.clone()
    masked[:7] = -100  # a prompt of 7 positions, then a response of 5
    loss = cross_entropy(logits, masked, 97)
    loss.backward()
    log_p = logits.detach()[:, :97].log_softmax(dim=-1)
    by_hand = -sum(log_p[i, targets[i]] for i in range(7, 12)) / 5  # divided by the 5 counted, not by 12
    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-6)
    assert not logits.grad[:7].any()  # exactly zero: the prompt's predictions are not trained
    assert (logits.grad[7:, :97].abs().sum(dim=1) > 0).all()
    other = logits.detach().clone()
    other[:7] = 100 * torch.randn(7, 128)  # whatever the model predicts at the prompt's positions
    assert cross_entropy(other, masked, 97).item() == pytest.approx(loss.item(), abs=1e-6)


def test_label_smoothing_matches_torchs_over_the_real_columns(path):
    """--label-smoothing: the same loss and gradient as F.cross_entropy(label_smoothing=e) on the
    vocab_size real columns, with the padding columns and ignored targets left out."""
    torch.manual_seed(0)
    targets = torch.randint(0, 97, (60,))
    padded = 3 * torch.randn(60, 128)
    padded[torch.arange(60), targets] += 8.0  # a confident model: smoothing then costs it something
    padded.requires_grad_()
    targets[[5, 40]] = -100
    loss = cross_entropy(padded, targets, 97, label_smoothing=0.1)
    (2.5 * loss).backward()
    real = padded.detach()[:, :97].clone().requires_grad_()
    expected = F.cross_entropy(real, targets, label_smoothing=0.1)
    (2.5 * expected).backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert_close(padded.grad[:, :97], real.grad, atol=1e-7)
    assert not padded.grad[:, 97:].any() and not padded.grad[[5, 40]].any()
    # A different loss from the plain one: for a confident model, higher.
    assert loss.item() > F.cross_entropy(real.detach(), targets).item() + 0.5
