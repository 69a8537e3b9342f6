"""Do the hand-written replacements of torch's primitives earn their place? A whole training step
with each one swapped for torch's own, one at a time, and with all of them swapped.

    python benchmarks/bench_primitives.py                    # the recipe's shape (README)
    python benchmarks/bench_primitives.py --shape default    # `main.py train` with no flags
    python benchmarks/bench_primitives.py --shape default --vocab-size 8192 --memory   # a 20 MB text's vocab
    python benchmarks/bench_primitives.py --shape gpt2 --batch-size 4 --rounds 2 --warmup 1 --memory

The replacements (gpt2_llm/fast_cpu.py), and torch's primitive each is measured against:

    CE        fast_cpu.cross_entropy (chunked on a CPU)   F.cross_entropy on the real vocab's columns

Issue 28 keeps a replacement only where it saves at least 10% of a whole step, or of its peak
memory, on the machine it is for. Four more were measured with this script at commit 6ea81e5 and
deleted after it: ReLU^2's written-out backward, a cheaper CPU dropout mask, a batched Muon, and
the written-out attention as a speed path on short bf16 contexts (BENCHMARKS.md, "Hand-written replacements", has
the figures; `git checkout 6ea81e5` repeats them).

Shapes: "recipe" is `--preset mini --n-layer 4 --context 512 --vocab-size 2048 --batch-size 4
--optimizer muon --muon-lr 0.012 --mlp relu2 --untied --rope --qk-norm --dropout 0.2
--weight-decay 1.0`; "default" is the small preset, GELU, AdamW, no dropout, batch 16, and the
vocab size main.py picks for a 1 MB text (2048; --vocab-size for a larger text's); "gpt2" is
`train --init-from gpt2` as BENCHMARKS.md's fine-tuning table runs it (GPT-2's shape and vocab,
context 1024, no dropout, the fine-tuning defaults' batch of 8, AdamW). A step is what the trainer runs
(profile_step.step_parts): forward and backward under bf16 autocast where the CPU has it, gradient
clipping, the optimizers' steps, zero_grad, on random token ids.

Timing: every variant has its own model (same seed) in one process; after warm-up steps the
variants take turns, one step each per round, so that a drift in the machine's speed touches all
alike; the table gives each variant's median step and its ratio to today's. Memory (--memory): each
variant runs alone in a fresh process, and the table gives the peak resident memory the process
reached (ru_maxrss) and how far above the memory held before its first step that peak rose.
The swaps are made here, by replacing the library's module attributes: the library has no switch.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import gpt2_llm.gpt2  # noqa: E402
from gpt2_llm import GPT2, GPT2Config  # noqa: E402
from gpt2_llm.config import FINETUNE_DEFAULTS, TrainConfig  # noqa: E402
from gpt2_llm.hardware import device_name, pick_dtype  # noqa: E402
from profile_step import step_parts  # noqa: E402  (benchmarks/ is the script's folder)


def torch_cross_entropy(logits, targets, vocab_size=None, label_smoothing=0.0):
    """fast_cpu.cross_entropy's contract with torch's kernel: the padding columns sliced off."""
    return F.cross_entropy(logits[:, :vocab_size], targets, label_smoothing=label_smoothing)


# Each swap: the module attributes the library looks up at call time, and torch's primitive for them.
SWAPS = {
    "CE": [(gpt2_llm.gpt2, "cross_entropy", torch_cross_entropy)],
}


SHAPES = ("recipe", "default", "gpt2")


def shape(name: str, vocab_size: int | None = None, batch_size: int | None = None) -> tuple[GPT2Config, TrainConfig]:
    """The model and training settings of a shape (SHAPES, the module's docstring)."""
    if name == "recipe":
        config = GPT2Config.from_preset("mini", n_layer=4, block_size=512, vocab_size=2048, dropout=0.2, mlp="relu2",
                                        tie_embeddings=False, rope=True, qk_norm=True)
        train = TrainConfig(batch_size=4, optimizer="muon", muon_lr=0.012, weight_decay=1.0)
    elif name == "default":
        config, train = GPT2Config.from_preset("small", vocab_size=2048), TrainConfig()
    else:  # without dropout, as BENCHMARKS.md's fine-tuning table (GPT-2's own 0.1 in attention is another story)
        config, train = GPT2Config.from_preset("gpt2", vocab_size=50257), TrainConfig(**FINETUNE_DEFAULTS)
    config = replace(config, vocab_size=vocab_size) if vocab_size else config
    return config, (replace(train, batch_size=batch_size) if batch_size else train)


def variants(config: GPT2Config, train: TrainConfig) -> dict[str, list[str]]:
    """Variant name -> the swaps it makes; only swaps that touch this shape's step."""
    used = {"CE": True}  # a replacement that only some shapes reach says so here
    swaps = [name for name, on in used.items() if on]
    return {"today": [], **{f"torch {name}": [name] for name in swaps}, **({"all torch": swaps} if len(swaps) > 1 else {})}


@contextmanager
def swapped(names: list[str]):
    changes = [change for name in names for change in SWAPS[name]]
    saved = [(module, attr, getattr(module, attr)) for module, attr, _ in changes]
    try:
        for module, attr, replacement in changes:
            setattr(module, attr, replacement)
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)


def build(config: GPT2Config, train: TrainConfig, swaps: list[str]):
    """A fresh model (seed 0) and its step's parts, made with the swaps in place (Muon's class is
    chosen when the optimizer is made)."""
    torch.manual_seed(0)
    with swapped(swaps):
        model = GPT2(config)
        parts, dtype = step_parts(model, train)
    return list(parts.values()), dtype


def run_step(parts, swaps: list[str]) -> float:
    """One whole training step with the swaps in place; seconds."""
    with swapped(swaps):
        start = time.perf_counter()
        for part in parts:
            part()
        return time.perf_counter() - start


def time_variants(config: GPT2Config, train: TrainConfig, chosen: dict[str, list[str]], rounds: int,
                  warmup: int) -> dict[str, float]:  # fmt: skip
    """Each variant's median seconds per step, the variants taking turns round by round; each round
    starts one variant further on, so that none always follows the same one."""
    runs = {name: (build(config, train, swaps)[0], swaps) for name, swaps in chosen.items()}
    names = list(runs)
    times = {name: [] for name in runs}
    for round_ in range(warmup + rounds):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            seconds = run_step(*runs[name])
            if round_ >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(t) for name, t in times.items()}


def resident_kb() -> int:
    """The memory this process holds now (Linux's /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() // 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure_memory(config: GPT2Config, train: TrainConfig, swaps: list[str], steps: int = 3) -> dict[str, int]:
    """In this process (a fresh one): resident memory before the first step and the peak after
    `steps` steps (AdamW's and Muon's state appear at the first), in kB."""
    parts, _ = build(config, train, swaps)
    before = resident_kb()
    for _ in range(steps):
        run_step(parts, swaps)
    return {"before": before, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def memory_in_subprocesses(args, names: list[str]) -> dict[str, dict[str, int]]:
    found = {}
    for name in names:
        command = [sys.executable, __file__, "--shape", args.shape, "--threads", str(args.threads), "--memory-of", name]
        command += ["--vocab-size", str(args.vocab_size)] if args.vocab_size else []
        command += ["--batch-size", str(args.batch_size)] if args.batch_size else []
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        found[name] = json.loads(out.strip().splitlines()[-1])
    return found


def print_table(medians: dict[str, float] | None, memory: dict[str, dict[str, int]] | None) -> None:
    head = "| variant |" + (" ms per step | vs today |" if medians else "")
    head += " peak RSS MB | vs today | step's rise MB |" if memory else ""
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for name in medians or memory:
        row = f"| {name} |"
        if medians:
            row += f" {medians[name] * 1e3:.0f} | {medians[name] / medians['today']:.3f} |"
        if memory:
            m, peak0 = memory[name], memory["today"]["peak"]
            row += f" {m['peak'] / 1024:.0f} | {m['peak'] / peak0:.3f} | {(m['peak'] - m['before']) / 1024:.0f} |"
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="recipe")
    parser.add_argument("--vocab-size", type=int, help="in place of the shape's (a larger text gets a larger one)")
    parser.add_argument("--batch-size", type=int, help="in place of the shape's")
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="only these (today's always)")
    parser.add_argument("--rounds", type=int, default=10, help="timed steps of each variant after the warm-up (0: none)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant first")
    parser.add_argument("--threads", type=int, default=2, help="torch's threads (default 2: this machine's cores)")
    parser.add_argument("--memory", action="store_true", help="also each variant's peak memory, in a process of its own")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # the child process of --memory
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, train = shape(args.shape, args.vocab_size, args.batch_size)
    chosen = {name: swaps for name, swaps in variants(config, train).items()
              if not args.variants or name == "today" or name in args.variants}  # fmt: skip
    if args.memory_of:
        print(json.dumps(measure_memory(config, train, chosen[args.memory_of])))
        return
    memory = memory_in_subprocesses(args, list(chosen)) if args.memory else None
    medians = time_variants(config, train, chosen, args.rounds, args.warmup) if args.rounds else None
    dtype = pick_dtype("auto", torch.device("cpu"))
    print(f"{args.shape}: {config.n_layer} layers x {config.n_embd}, {config.mlp}, batch {train.batch_size} x "
          f"context {config.block_size}, vocab {config.vocab_size}, dropout {config.dropout}/{config.attn_dropout_prob} "
          f"(attention), {train.optimizer}, {str(dtype).removeprefix('torch.')} autocast; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {device_name(torch.device('cpu'))}; medians of {args.rounds} rounds")
    print_table(medians, memory)


if __name__ == "__main__":
    main()
