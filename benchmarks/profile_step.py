"""Where one training step of the Tiny Shakespeare recipe's model goes: forward and backward,
gradient clipping, AdamW's step, Muon's step (its Newton-Schulz iterations), on this CPU.

    python benchmarks/profile_step.py                  # the recipe's shape, batch 8
    python benchmarks/profile_step.py --batch-size 12
    python benchmarks/profile_step.py --n-layer 6       # the mini preset's 6 layers (the recipes before the tenth session)

The model is the recipe's (mini preset with 4 layers, 2048 tokens, ReLU^2, untied head, RoPE,
QK-norm, dropout 0.2) on random token ids, trained with the trainer's own optimizers (make_optimizer,
make_muon) in bf16 autocast where the CPU has it. Each part is timed on its own, over timed steps
after warm-up ones; the table gives medians.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpt2_llm import GPT2, GPT2Config  # noqa: E402
from gpt2_llm.config import TrainConfig  # noqa: E402
from gpt2_llm.hardware import autocast, pick_dtype, setup_device  # noqa: E402
from gpt2_llm.trainer import make_muon, make_optimizer  # noqa: E402


def step_parts(model: GPT2, train: TrainConfig, device: torch.device = torch.device("cpu")):
    """The parts of one training step of `model` as the trainer runs them, in order, each a
    callable (name -> callable), on a batch of random token ids; and the autocast dtype.

    The device is set up as the trainer sets it (setup_device), the optimizers are the trainer's
    own (make_optimizer, make_muon), and the precision is what main.py train picks: bf16 autocast
    where the CPU has it. One gradient accumulation micro-step, no loss scaling (bf16 needs none).
    """
    setup_device(device)
    config = model.config
    adamw, muon = make_optimizer(model, train, device), make_muon(model, train)
    dtype = pick_dtype("auto", device)
    ids = torch.randint(0, config.vocab_size, (train.batch_size, config.block_size + 1))

    def forward_backward():
        with autocast(device, dtype):
            _, loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()

    parts = {"forward + backward": forward_backward,
             "clip": lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip),
             "AdamW step": adamw.step, "Muon step": muon.step if muon is not None else None,
             "zero_grad": lambda: model.zero_grad(set_to_none=True)}
    return {name: part for name, part in parts.items() if part is not None}, dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-layer", type=int, default=4, help="blocks (default 4, the recipe's; the mini preset has 6)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warm-up steps)")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPT2Config.from_preset("mini", n_layer=args.n_layer, vocab_size=2048, dropout=0.2, mlp="relu2",
                                    tie_embeddings=False, rope=True, qk_norm=True)
    model = GPT2(config)
    train = TrainConfig(batch_size=args.batch_size, lr=2e-3, optimizer="muon", muon_lr=0.012, weight_decay=1.0)
    parts, dtype = step_parts(model, train)
    times = {name: [] for name in parts}
    for step in range(3 + args.steps):
        for name, part in parts.items():
            start = time.perf_counter()
            part()
            if step >= 3:
                times[name].append(time.perf_counter() - start)

    medians = {name: statistics.median(t) for name, t in times.items()}
    total = sum(medians.values())
    print(f"{config.n_layer} layers, batch {args.batch_size} x context {config.block_size}, "
          f"{dtype}, {torch.get_num_threads()} threads, medians of {args.steps} steps")
    print("| part | ms | share |")
    print("|---|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e3:.0f} | {seconds / total:.0%} |")
    print(f"| the step | {total * 1e3:.0f} | {args.batch_size * config.block_size / total:,.0f} tokens/s |")


if __name__ == "__main__":
    main()
