"""Hand-written replacements of torch primitives, kept only where they earn it on a CPU.

Each one here saves at least 10% of a whole training step or of its peak memory on a CPU, as
benchmarks/bench_primitives.py measures it against torch's own, and is tested against torch's own
(tests/test_fast_cpu.py). Everything else uses torch's primitives. Today there is one:

cross_entropy: the model's loss. On a CPU it never holds the float32 log-softmax of all the logits
    that F.cross_entropy keeps for its backward pass; with a vocab of 8192 or more that is a fifth
    or more of a step's peak memory (BENCHMARKS.md).
"""

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int | None = None,
                  label_smoothing: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Mean cross-entropy of logits (N, padded vocab) against targets (N,); targets of -100 are ignored.
    Only the first vocab_size columns are classes (default: all); the rest are padding. With
    label_smoothing e, each row's loss is (1 - e) x -log p(target) + e x the mean of -log p over
    the classes, as F.cross_entropy's label_smoothing.

    Equal to F.cross_entropy (tested), but on a CPU, eagerly, when a backward pass will follow, it
    takes the chunked path below, which holds 4 bytes a logit where torch's holds about 18 (bf16
    logits), and with a large vocab saves time too. A GPU's memory is fast enough for torch's fused
    kernel, and a loop of small chunks would only add kernel launches.
    """
    vocab_size = vocab_size or logits.size(1)
    chunked = (logits.device.type == "cpu" and not torch.compiler.is_compiling()  # the compiler fuses on its own
               and torch.is_grad_enabled() and logits.requires_grad)
    if chunked:
        return _ChunkedCrossEntropy.apply(logits, targets, vocab_size, label_smoothing)
    if label_smoothing:  # the mean over the classes must not take in the padding columns
        return F.cross_entropy(logits[:, :vocab_size], targets, label_smoothing=label_smoothing)
    if logits.size(1) > vocab_size:
        # A GPU's fused kernel wants the rows whole: rule the padding columns out with -inf logits
        # (probability 0, gradient 0) rather than copy the first vocab_size columns out.
        logits = logits.index_fill(1, torch.arange(vocab_size, logits.size(1), device=logits.device), float("-inf"))
    return F.cross_entropy(logits, targets)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Cross-entropy and its gradient, computed together a few rows at a time.

    F.cross_entropy casts all the logits to float32, keeps their log-softmax for the backward pass,
    then reads it back with a gradient tensor of the same size: several passes over N x vocab
    floats (400 MB at batch 8 x 256 with GPT-2's vocab), far more than any cache. Here each chunk
    of rows is taken to float32 while it sits in the cache, and since a backward pass follows, the
    gradient is made there and then, from the same exponentials:

        d loss / d logits of row i = (softmax(row i) - one_hot(target i)) * kept_i / count

    and written once, in the logits' own dtype. The backward pass only scales it. With label
    smoothing e the target is (1 - e) x one_hot + e / V, the loss (1 - e) x -log p(target) + e x
    the mean of -log p over the V classes, i.e. log-sum-exp - (1 - e) x logit(target) - e x the
    mean logit.
    """

    CHUNK_ELEMENTS = 1 << 19  # float32 values per chunk: 2 MB, about a core's L2 cache

    @staticmethod
    def forward(ctx, logits, targets, V, smoothing=0.0):
        N, padded = logits.shape
        step = max(1, _ChunkedCrossEntropy.CHUNK_ELEMENTS // V)
        kept = targets != -100  # (N,), the positions that count
        count = kept.sum().clamp(min=1)  # stays a tensor: no wait for the device
        weight = (kept / count).unsqueeze(1)  # (N, 1): each row's share of the mean
        safe_targets = targets.masked_fill(~kept, 0).unsqueeze(1)  # (N, 1); ignored rows point at 0
        losses = torch.empty(N, 1, dtype=torch.float32, device=logits.device)
        grad = logits.new_empty(N, padded)
        grad[:, V:] = 0.0  # the padding columns are not classes
        for i in range(0, N, step):
            rows = slice(i, i + step)
            exps = logits[rows, :V].to(torch.float32, copy=True)  # (n, V), a float32 chunk in the cache
            top = exps.amax(dim=1, keepdim=True)
            exps.sub_(top).exp_()  # shifted by the row's maximum, so nothing overflows
            total = exps.sum(dim=1, keepdim=True)
            lse = total.log() + top  # log-sum-exp of the row
            losses[rows] = lse - (1 - smoothing) * logits[rows].gather(1, safe_targets[rows]).float()
            if smoothing:
                losses[rows] -= smoothing * logits[rows, :V].float().mean(dim=1, keepdim=True)
            exps.mul_(weight[rows] / total)  # softmax, times the row's share
            exps.scatter_add_(1, safe_targets[rows], -(1 - smoothing) * weight[rows])  # minus the target
            if smoothing:
                exps.sub_(weight[rows] * (smoothing / V))
            grad[rows, :V] = exps
        ctx.save_for_backward(grad)
        return (losses.squeeze(1) * weight.squeeze(1)).sum()

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        if grad_loss.device.type == "cpu" and grad_loss.item() == 1.0:
            return grad, None, None, None  # the usual case: no pass over the gradient at all
        return grad * grad_loss, None, None, None
