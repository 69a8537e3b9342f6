"""torch.optim.Muon, with the Newton-Schulz iterations of same-shape matrices run as one batch.

Muon (Jordan et al. 2024) replaces each hidden matrix's update by an orthogonalised one: its
Nesterov momentum M, scaled to norm 1, goes through five steps of the quintic iteration
X <- a X + (b A + c A^2) X, with A = X X^T, which pushes every singular value toward 1.
torch.optim.Muon runs that iteration matrix by matrix. A model's blocks all have the same shapes,
so the matrices of every layer can share each product: one batched product per shape in place of
one product per matrix (BENCHMARKS.md, "Muon in batches", has what that saves). The arithmetic is
torch's, in the same order and in bf16; only the grouping differs, so the results agree with
torch's to bf16's rounding, and the state (one momentum buffer per matrix, under torch's name) is
torch's: checkpoints move between the two.
"""

import math

import torch


def orthogonalise(matrices: list[torch.Tensor], coefficients: tuple[float, float, float], steps: int,
                  eps: float, dtype: torch.dtype = torch.bfloat16) -> list[torch.Tensor]:  # fmt: skip
    """Each matrix's Newton-Schulz orthogonalisation (torch.optim.Muon's iteration), computed in
    `dtype` (bf16 as torch does; the tests use float64) with same-shape matrices batched."""
    a, b, c = coefficients
    # A tall matrix is iterated as its transpose, so that A = X X^T is the smaller product.
    groups: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(matrices):
        rows, cols = m.shape
        groups.setdefault((min(rows, cols), max(rows, cols)), []).append(i)
    out: list[torch.Tensor] = [None] * len(matrices)  # type: ignore[list-item]
    for (rows, cols), members in groups.items():
        x = torch.empty(len(members), rows, cols, dtype=dtype, device=matrices[members[0]].device)
        for k, i in enumerate(members):  # one pass each: the cast and the transpose together
            m = matrices[i]
            x[k].copy_(m.T if m.size(0) > m.size(1) else m)
        # The spectral norm is at most the Frobenius norm: dividing by it puts every singular value
        # in (0, 1], where the iteration converges.
        x.div_(torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True).clamp(min=eps))
        for _ in range(steps):
            gram = torch.bmm(x, x.mT)
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
            x = torch.baddbmm(x, poly, x, beta=a)  # a X + (b A + c A^2) X
        for k, i in enumerate(members):
            out[i] = x[k].T if matrices[i].size(0) > matrices[i].size(1) else x[k]
    return out


def lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's scaling of the learning rate for a (rows, cols) matrix: "original"
    (the default) sqrt(max(1, rows / cols)); "match_rms_adamw" 0.2 sqrt(max(rows, cols))."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


class Muon(torch.optim.Muon):
    """torch.optim.Muon (the same arguments, defaults, state and update) whose step orthogonalises
    same-shape matrices together (orthogonalise above)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            updates = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - momentum)  # M <- momentum M + (1 - momentum) G
                # Nesterov's look-ahead, G + momentum (M - G); else M itself.
                updates.append(p.grad.lerp(buffer, momentum) if group["nesterov"] else buffer)
            directions = orthogonalise(updates, group["ns_coefficients"], group["ns_steps"], group["eps"])
            for p, direction in zip(params, directions):
                p.mul_(1 - lr * group["weight_decay"])  # decoupled weight decay, then the step
                p.add_(direction, alpha=-lr * lr_ratio(group["adjust_lr_fn"], p.shape))
        return loss
