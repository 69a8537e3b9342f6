"""Dropout whose mask is cheap to draw on a CPU.

torch's CPU dropout draws one random number per element (bernoulli_): 4.8 ms forward and backward
for the (8, 256, 384) activations of the `mini` preset at batch 8, and 12% of a bf16 training step
with its 13 dropout layers (on an AMD EPYC). One 64-bit random number holds four 16-bit draws, and
the mask multiplies as bytes, which cuts a layer to 2-3 ms and dropout's share of the step to
4-5% (BENCHMARKS.md, "A cheaper dropout mask" and "Eleventh session").
GPUs, and compiled models, keep torch's own kernels.
"""

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # the draws are 16-bit: the rate is p to within 1 / 65536


def cpu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x with each element zeroed with probability p (to within 1/65536) and the rest scaled by
    1 / (1 - that probability), so the expected value of every element is unchanged."""
    dropped = round(p * _LEVELS)  # of the 65536 values a draw takes, this many drop the element
    if dropped >= _LEVELS:
        return x * 0.0
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    draws = words.view(torch.int16)[:n].view(x.shape)  # uniform over -32768 .. 32767
    # True for 65536 - dropped of the 65536 values. Read as 0/1 bytes: x times a byte mask ran three
    # times as fast as x times a bool mask on an Intel Xeon (BENCHMARKS.md, "Eleventh session").
    keep = (draws >= dropped - _LEVELS // 2).view(torch.uint8)
    # Scaled after the product, not through a mask of x's dtype: in bf16 the scale itself would be
    # rounded (1/0.9 by 0.16%), and every kept element with it, the same way.
    return torch.mul(x, keep).mul_(_LEVELS / (_LEVELS - dropped))


def drop(x: torch.Tensor, p: float) -> torch.Tensor:
    """F.dropout in training: cpu_dropout on a CPU when running eagerly, torch's kernel elsewhere."""
    if p == 0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.dropout(x, p, training=True)
    return cpu_dropout(x, p)


class Dropout(nn.Dropout):
    """nn.Dropout (the same argument, state and global random generator), drawing its masks with
    drop() above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.inplace:
            return super().forward(x)
        return drop(x, self.p)
