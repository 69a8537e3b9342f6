"""The batched Muon: its iteration against the formula written out, its steps against torch.optim.Muon."""

import copy

import pytest
import torch

if not hasattr(torch.optim, "Muon"):
    pytest.skip("torch.optim.Muon came with torch 2.9", allow_module_level=True)

from gpt2_llm.muon import Muon, orthogonalise  # noqa: E402

COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's defaults
SHAPES = [(48, 16), (16, 48), (48, 16), (16, 16), (24, 40), (16, 48), (16, 16)]  # tall, wide, square, repeated


def reference_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The iteration matrix by matrix, as Muon's papers write it: X = G / |G|, then
    X <- a X + b (X X^T) X + c (X X^T)^2 X, on the transpose of a tall matrix."""
    a, b, c = COEFFICIENTS
    tall = g.size(0) > g.size(1)
    x = g.T if tall else g
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x.T if tall else x


def random_matrices(shapes, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=dtype) for shape in shapes]


def test_the_batched_iteration_is_the_formula_for_every_shape():
    matrices = random_matrices(SHAPES)
    got = orthogonalise(matrices, COEFFICIENTS, steps=5, eps=1e-7, dtype=torch.float64)
    for g, x in zip(matrices, got):
        assert x.shape == g.shape
        torch.testing.assert_close(x, reference_newton_schulz(g), rtol=1e-10, atol=1e-12)


def test_the_iteration_brings_the_singular_values_near_one():
    """What it is for: five steps put every singular value of the result within about 0.3 of 1
    (the coefficients trade exactness for speed), whatever the input's scale."""
    for g in random_matrices(SHAPES, seed=1):
        s = torch.linalg.svdvals(orthogonalise([1e3 * g], COEFFICIENTS, 5, 1e-7, torch.float64)[0])
        assert s.min() > 0.6 and s.max() < 1.25, s


def test_a_zero_gradient_gives_a_zero_update_not_nans():
    (x,) = orthogonalise([torch.zeros(8, 4)], COEFFICIENTS, 5, 1e-7)
    assert torch.equal(x.float(), torch.zeros(8, 4))


def twin_models(shapes, seed=0):
    """Two identical lists of weights with identical gradients."""
    first = [torch.nn.Parameter(w) for w in random_matrices(shapes, seed, torch.float32)]
    second = [torch.nn.Parameter(w.detach().clone()) for w in first]
    return first, second


def set_gradients(weights_a, weights_b, seed):
    for a, b, g in zip(weights_a, weights_b, random_matrices([tuple(w.shape) for w in weights_a], seed, torch.float32)):
        a.grad, b.grad = g.clone(), g.clone()


@pytest.mark.parametrize("options", [dict(), dict(nesterov=False), dict(adjust_lr_fn="match_rms_adamw"),
                                     dict(weight_decay=0.0, momentum=0.9)])  # fmt: skip
def test_steps_are_torchs_muon_to_bf16_rounding(options):
    """The same update as torch.optim.Muon's, step after step (the momentum, Nesterov, the decay,
    the scaled rate). Both orthogonalise in bf16, in different groupings of the same products,
    so they agree to bf16's rounding: well within 1% of the step's size."""
    ours_w, torch_w = twin_models(SHAPES)
    settings = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="original") | options
    ours, reference = Muon(ours_w, **settings), torch.optim.Muon(torch_w, **settings)
    start = [w.detach().clone() for w in torch_w]
    for step in range(3):
        set_gradients(ours_w, torch_w, seed=10 + step)
        ours.step()
        reference.step()
    for a, b, w0 in zip(ours_w, torch_w, start):
        moved = (b - w0).abs().max()
        assert moved > 1e-3  # the steps did move the weights
        assert (a - b).abs().max() < 0.01 * moved
        torch.testing.assert_close(ours.state[a]["momentum_buffer"], reference.state[b]["momentum_buffer"])


def test_state_moves_between_torchs_muon_and_ours():
    """A checkpoint written with torch.optim.Muon resumes with ours, and the other way round."""
    ours_w, torch_w = twin_models(SHAPES[:3])
    reference = torch.optim.Muon(torch_w, lr=0.02, adjust_lr_fn="original")
    set_gradients(ours_w, torch_w, seed=20)
    reference.step()
    with torch.no_grad():
        for a, b in zip(ours_w, torch_w):
            a.copy_(b)
    ours = Muon(ours_w, lr=0.02, adjust_lr_fn="original")
    ours.load_state_dict(copy.deepcopy(reference.state_dict()))  # as a checkpoint would: no shared buffers
    assert ours.state_dict()["state"].keys() == reference.state_dict()["state"].keys()
    set_gradients(ours_w, torch_w, seed=21)
    ours.step()
    reference.step()
    for a, b in zip(ours_w, torch_w):
        torch.testing.assert_close(ours.state[a]["momentum_buffer"], reference.state[b]["momentum_buffer"])
        assert (a - b).abs().max() < 1e-4  # the same step, to bf16 rounding
    back = torch.optim.Muon([torch.nn.Parameter(w.detach().clone()) for w in ours_w], lr=0.02)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert all(torch.equal(back.state_dict()["state"][i]["momentum_buffer"], s["momentum_buffer"])
               for i, s in ours.state_dict()["state"].items())  # fmt: skip


def test_weights_without_a_gradient_are_left_alone():
    ours_w, _ = twin_models(SHAPES[:2])
    ours = Muon(ours_w, lr=0.02)
    ours_w[0].grad = torch.ones_like(ours_w[0])
    before = ours_w[1].detach().clone()
    ours.step()
    assert torch.equal(ours_w[1], before) and ours_w[1] not in ours.state
