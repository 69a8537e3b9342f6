"""What dropout costs on a CPU: torch's kernel against ours (gpt2_llm/dropout.py).

    python benchmarks/bench_dropout.py
    python benchmarks/bench_dropout.py --batch 16 --steps 20

layer: one dropout (rate 0.2) forward and backward on the (batch, 256, 384) bf16 activations of the
    `mini` preset, the median of 30 calls.
step: a whole training step of the 10-minute recipe's model (`mini`, 2048 tokens, ReLU^2, RoPE,
    QK-norm, untied head, dropout 0.2 outside attention; bf16 autocast, AdamW and Muon as the
    trainer makes them; no gradient clipping), with torch's nn.Dropout in every dropout layer and then with ours, and
    without dropout for the floor; each the median of the timed steps, in one process, alternating
    the three so that a drift in the machine's speed touches all of them alike.
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
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from gpt2_llm.config import GPT2Config, TrainConfig  # noqa: E402
from gpt2_llm.dropout import Dropout, drop  # noqa: E402
from gpt2_llm.gpt2 import GPT2  # noqa: E402
from gpt2_llm.trainer import make_muon, make_optimizer  # noqa: E402


def median_ms(fn, calls: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def layer_rows(batch: int) -> None:
    x = torch.randn(batch, 256, 384, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)
    torch_ms = median_ms(lambda: F.dropout(x, 0.2, training=True).backward(grad), 30)
    ours_ms = median_ms(lambda: drop(x, 0.2).backward(grad), 30)
    print(f"| one dropout layer, forward and backward, ({batch}, 256, 384) bf16 | {torch_ms:.2f} ms | {ours_ms:.2f} ms "
          f"| {torch_ms / ours_ms:.1f}x |")


def with_dropout_layers(model: nn.Module, make) -> nn.Module:
    """model with each of its dropout layers replaced by make(rate)."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Dropout):
                setattr(module, name, make(child.p))
    return model


def step_rows(batch: int, steps: int) -> None:
    config = GPT2Config.from_preset("mini", vocab_size=2048, dropout=0.2, mlp="relu2", rope=True, qk_norm=True,
                                    tie_embeddings=False)
    train = TrainConfig(lr=2e-3, optimizer="muon")
    ids = torch.randint(0, 2048, (batch, 257))
    setups = {}
    for name, make in (("torch's nn.Dropout", nn.Dropout), ("ours", Dropout), ("no dropout", lambda p: nn.Identity())):
        torch.manual_seed(0)
        model = with_dropout_layers(GPT2(config), make)
        setups[name] = (model, [make_optimizer(model, train, torch.device("cpu")), make_muon(model, train)])

    def step(model, optimizers):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        model.zero_grad(set_to_none=True)

    times = {name: [] for name in setups}
    for name, setup in setups.items():  # warm-up
        for _ in range(2):
            step(*setup)
    for _ in range(steps):
        for name, setup in setups.items():
            start = time.perf_counter()
            step(*setup)
            times[name].append(time.perf_counter() - start)
    floor = statistics.median(times["no dropout"])
    for name, ts in times.items():
        ms = 1000 * statistics.median(ts)
        print(f"| a training step, batch {batch}, {name} | {ms:.0f} ms | {batch * 256 / ms * 1000:,.0f} tokens/s "
              f"| dropout's share: {1 - floor * 1000 / ms:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12, help="timed steps of each setting (default 12)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("| what | torch | ours | speed-up |\n|---|---:|---:|---:|")
    layer_rows(args.batch)
    print("\n| setting | median time | tokens/s | |\n|---|---:|---:|---|")
    step_rows(args.batch, args.steps)


if __name__ == "__main__":
    main()
