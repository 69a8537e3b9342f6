"""DDP overhead on a CPU: 2 gloo processes with 1 thread each against 1 process with 2 threads,
same model, same data, same global batch (the single process accumulates 2 micro-batches).

    python benchmarks/bench_ddp.py            # the figure in BENCHMARKS.md
    python benchmarks/bench_ddp.py --quick    # a smoke run

Both runs are `main.py train` on Tiny Shakespeare with the `mini` preset (6 layers, 384 wide,
context 256) and a 2048-token vocabulary, in the dtype `--dtype auto` picks. Tokens/s are taken
from the metrics log between step `--skip` and the last step, so start-up and the first,
slower steps are left out. Each configuration runs `--repeats` times, alternating; medians.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=10, help="steps left out of the timing at the start")
    p.add_argument("--batch-size", type=int, default=8, help="per process; the single process accumulates 2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="12 steps, 1 repeat")
    return p.parse_args(argv)


def tokens_per_s(metrics: Path, skip: int, tokens_per_step: int) -> float:
    records = [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
    first = next(r for r in records if r["step"] >= skip)
    last = records[-1]
    return (last["step"] - first["step"]) * tokens_per_step / (last["elapsed_s"] - first["elapsed_s"])


def run(kind: str, folder: Path, args, vocab: Path) -> float:
    out = folder / f"{kind}.pt"
    common = [str(DATA), str(vocab), "--preset", "mini", "--steps", str(args.steps), "--eval-every", "100000",
              "--log-every", "1", "--out", str(out), "--overwrite", "--batch-size", str(args.batch_size)]
    env = dict(os.environ)
    if kind == "ddp":
        env["OMP_NUM_THREADS"] = "1"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(ROOT / "main.py"), "train", *common]
    else:
        env.pop("OMP_NUM_THREADS", None)
        command = [sys.executable, str(ROOT / "main.py"), "train", *common, "--grad-accum", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{kind} run failed:\n{done.stderr[-2000:]}")
    return tokens_per_s(out.with_suffix(".metrics.jsonl"), args.skip, 2 * args.batch_size * 256)


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.steps, args.skip, args.repeats = 12, 4, 1
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        vocab = folder / "vocab.txt"
        subprocess.run([sys.executable, str(ROOT / "main.py"), "tokenize", str(DATA), "--vocab-size", "2048",
                        "-o", str(vocab)], check=True, capture_output=True, cwd=ROOT)  # fmt: skip
        rates = {"single": [], "ddp": []}
        for _ in range(args.repeats):
            for kind in rates:
                rates[kind].append(run(kind, folder, args, vocab))
                print(f"  {kind}: {rates[kind][-1]:,.0f} tokens/s", file=sys.stderr)
    single, ddp = statistics.median(rates["single"]), statistics.median(rates["ddp"])
    global_batch = 2 * args.batch_size
    print(f"mini preset, vocab 2048, context 256, global batch {global_batch} x 256 tokens, "
          f"steps {args.skip}..{args.steps}, {args.repeats} runs each (medians)")
    print("\n| run | tokens/s | ratio |")
    print("|---|---:|---:|")
    print(f"| 1 process, 2 threads, batch {args.batch_size} x 2 accumulation | {single:,.0f} | 1.00x |")
    print(f"| 2 gloo processes, 1 thread each, batch {args.batch_size} | {ddp:,.0f} | {ddp / single:.2f}x |")


if __name__ == "__main__":
    main()
