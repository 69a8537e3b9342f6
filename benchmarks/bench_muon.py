"""What Muon's step costs on this machine: torch.optim.Muon against ours (gpt2_llm/muon.py), which
runs the Newton-Schulz iterations of same-shape matrices as one batched product.

    python benchmarks/bench_muon.py               # the 10-minute recipe's 4 layers
    python benchmarks/bench_muon.py --n-layer 6   # the mini preset's 6
    python benchmarks/bench_muon.py --n-layer 12 --n-embd 768 --n-head 12   # GPT-2 small's matrices

The matrices are the blocks' attention and MLP weights of the recipe's model (ReLU^2 MLP, 4x
wide), each given a random gradient; both optimizers have the trainer's settings (the "original"
learning-rate scaling, weight decay 1.0, lr 0.012). Each step is timed on its own, the two
optimizers alternating so that a drift in the machine's speed touches both alike; the table gives
medians, and the largest difference between the two models' weights after the timed steps,
relative to the weights' largest value (bf16 rounding: about 1e-3).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gpt2_llm.config import GPT2Config  # noqa: E402
from gpt2_llm.gpt2 import GPT2  # noqa: E402
from gpt2_llm.muon import Muon  # noqa: E402
from gpt2_llm.trainer import muon_parameters  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--steps", type=int, default=15, help="timed steps of each (after 2 untimed ones)")
    args = parser.parse_args()

    config = GPT2Config.from_preset("mini", n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                                    vocab_size=2048, mlp="relu2", tie_embeddings=False)  # fmt: skip
    models = [GPT2(config), GPT2(config)]
    models[1].load_state_dict(models[0].state_dict())
    settings = dict(lr=0.012, weight_decay=1.0, adjust_lr_fn="original")
    weights = [[p for _, p in muon_parameters(m)] for m in models]
    optimizers = {"torch.optim.Muon": torch.optim.Muon(weights[0], **settings), "ours (batched)": Muon(weights[1], **settings)}
    generator = torch.Generator().manual_seed(0)
    for a, b in zip(*weights):
        a.grad = torch.randn(a.shape, generator=generator)
        b.grad = a.grad.clone()
    times = {name: [] for name in optimizers}
    for step in range(2 + args.steps):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            if step >= 2:
                times[name].append(time.perf_counter() - start)
    drift = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(*weights))
    shapes = sorted({tuple(p.shape) for p in weights[0]})
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{len(weights[0])} matrices of shapes {shapes}; medians of {args.steps} steps\n")
    print("| optimizer | Muon step | against torch's |")
    print("|---|---:|---:|")
    base = statistics.median(times["torch.optim.Muon"])
    for name, ts in times.items():
        print(f"| {name} | {1000 * statistics.median(ts):.1f} ms | {statistics.median(ts) / base:.2f}x |")
    print(f"\nlargest difference between the two sets of weights after {2 + args.steps} steps: {drift:.1e} of the largest weight")


if __name__ == "__main__":
    main()
