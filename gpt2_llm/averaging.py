"""A moving average of a model's weights (`--ema`), evaluated, sampled and saved in their place.

At the end of a run the weights still move with the noise of each batch: one step of a few
thousand tokens pushes them one way, the next another. An exponential moving average of the
weights (Polyak averaging: Polyak and Juditsky 1992; the uniform "stochastic weight averaging" of
Izmailov et al. 2018 is a cousin) keeps what the steps agree on and cancels much of that noise.
On Tiny Shakespeare it lowers the held-out loss of the README's recipe by about 0.03 bits per byte
(BENCHMARKS.md). After update t (counted from 0) the average is

    average = k * average + (1 - k) * weights,    k = min(decay, (1 + t) / (10 + t))

The second term of k lets the average follow the weights closely in the first steps, when they
are far from where they end up (the warm-up of TensorFlow's ExponentialMovingAverage); later k is
the decay, and the average spans about the last 1 / (1 - decay) steps (100 at 0.99).

The average is kept in float32 beside the weights (4 more bytes a weight) and the optimizer
never sees it: training goes on from the weights themselves.
"""

from contextlib import contextmanager

import torch


class WeightAverage:
    """The moving average of a model's parameters (buffers are not learned and are not averaged)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0  # how many steps the average has taken in
        # Each tensor once (a tied one too); frozen ones (--train-blocks, --lora) do not move and are left out.
        self.weights = [w for w in model.parameters() if w.requires_grad]
        self.average = [w.detach().float().clone() for w in self.weights]
        position = {id(w): i for i, w in enumerate(self.weights)}
        # Every name a weight has in the model's state dict: a tied weight has two.
        self.names = {name: position[id(w)] for name, w in model.named_parameters(remove_duplicate=False)
                      if id(w) in position}

    @torch.no_grad()
    def update(self) -> None:
        """Take in the weights after an optimizer step."""
        t = self.updates
        keep = min(self.decay, (1 + t) / (10 + t))
        for average, weight in zip(self.average, self.weights):
            average.lerp_(weight.float(), 1 - keep)
        self.updates += 1

    def state_dict(self, model: torch.nn.Module) -> dict:
        """The model's state dict with the average in place of each weight (in the weight's dtype)."""
        state = model.state_dict()
        return {**state, **{name: self.average[i].to(state[name].dtype) for name, i in self.names.items()}}

    @contextmanager
    def swapped_in(self):
        """The average in the model's weights for the length of the block (an evaluation, a
        sample); the weights themselves back afterwards, exactly."""
        kept = [w.detach().clone() for w in self.weights]
        with torch.no_grad():
            for weight, average in zip(self.weights, self.average):
                weight.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for weight, value in zip(self.weights, kept):
                    weight.copy_(value)
