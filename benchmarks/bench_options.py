"""What two architecture options buy: memory from --grad-checkpoint, KV-cache bytes from --kv-heads.

    python benchmarks/bench_options.py                  # both parts
    python benchmarks/bench_options.py --part checkpoint --batch 2     # a smaller batch
    python benchmarks/bench_options.py --part gqa

checkpoint: training steps of GPT-2 medium (355M weights, random, GPT-2's vocabulary) at context
    1024, bf16 autocast where the CPU has it, AdamW, with and without gradient checkpointing. Each
    setting runs in a fresh child process, so its peak memory (the process's peak resident set,
    ru_maxrss) is its own; the time per step is the median of the steps after the first.
gqa: a GPT-2 124M-shaped model (12 heads, random weights) with 12, 2 and 1 key/value heads
    generates 128 tokens after a 16-token prompt for a batch of 16, greedily: the KV cache's bytes
    (every layer's keys and values, allocated for the whole context) and tokens per second.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def checkpoint_child(batch: int, steps: int, recompute: bool) -> None:
    """One setting of the checkpoint part, in this process: print 'ms_per_step loss'."""
    import torch

    from gpt2_llm.config import GPT2Config
    from gpt2_llm.gpt2 import GPT2

    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_preset("gpt2-medium", vocab_size=50257, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 50257, (batch, 1025))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(ids[:, :-1], ids[:, 1:], recompute=recompute)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    print(f"{1000 * statistics.median(times[1:]):.0f} {loss.item():.6f}")


def run_child(*args: str) -> tuple[str, int]:
    """Run this script with args in a child process; its output and peak resident memory in bytes."""
    child = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child {args} failed")
    return output.strip(), usage.ru_maxrss * 1024  # KiB on Linux


def checkpoint_part(batch: int, steps: int) -> None:
    print(f"\nGPT-2 medium, batch {batch} x 1024, bf16 autocast, AdamW; {steps} steps each, median after the first")
    print("| --grad-checkpoint | ms per step | peak memory | loss after the last step |")
    print("|---|---:|---:|---:|")
    rows = {}
    for recompute in (False, True):
        output, peak = run_child("--child-checkpoint", str(batch), str(steps), str(int(recompute)))
        ms, loss = output.split()
        rows[recompute] = (float(ms), peak)
        print(f"| {'on' if recompute else 'off'} | {float(ms):,.0f} | {peak / 2**30:.2f} GiB | {loss} |", flush=True)
    (ms_off, peak_off), (ms_on, peak_on) = rows[False], rows[True]
    print(f"\npeak memory {peak_on / peak_off - 1:+.1%}, time per step {ms_on / ms_off - 1:+.1%} "
          "(the bar: memory -40% or more for at most +35% time)")


def gqa_part() -> None:
    import torch

    from gpt2_llm.config import GPT2Config
    from gpt2_llm.gpt2 import GPT2

    batch, prompt, new = 16, 16, 128
    print(f"\nGPT-2 124M shape (12 heads), batch {batch}, {prompt}-token prompts, {new} new tokens, greedy, float32")
    print("| key/value heads | KV cache | of the full cache | tokens/s (median of 3) |")
    print("|---:|---:|---:|---|")
    ids = torch.randint(0, 50257, (batch, prompt), generator=torch.Generator().manual_seed(0))
    full = None
    for kv_heads in (12, 2, 1):
        torch.manual_seed(0)
        model = GPT2(GPT2Config.from_preset("gpt2", vocab_size=50257, n_kv_head=kv_heads)).eval()
        cache = model.new_cache(batch)
        model.prefill(ids, cache)  # allocates the whole cache
        cache_bytes = sum(k.nbytes + v.nbytes for k, v in zip(cache.k, cache.v))
        times = []
        for _ in range(3):
            start = time.perf_counter()
            model.generate(ids, new, greedy=True)
            times.append(time.perf_counter() - start)
        rate = batch * new / statistics.median(times)
        full = full or cache_bytes
        print(f"| {kv_heads} | {cache_bytes / 2**20:,.0f} MiB | {cache_bytes / full:.0%} | {rate:,.0f} |", flush=True)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child-checkpoint":
        checkpoint_child(int(sys.argv[2]), int(sys.argv[3]), bool(int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["checkpoint", "gqa", "both"], default="both")
    parser.add_argument("--batch", type=int, default=8, help="batch of the checkpoint part (default 8)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per setting (default 3)")
    args = parser.parse_args()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}")
    if args.part in ("checkpoint", "both"):
        checkpoint_part(args.batch, args.steps)
    if args.part in ("gqa", "both"):
        gqa_part()


if __name__ == "__main__":
    main()
