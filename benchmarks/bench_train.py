"""Quality in a fixed time: train on Tiny Shakespeare for a wall-clock budget, report test bits per byte.

    python benchmarks/bench_train.py                       # the README recipe, 10 minutes
    python benchmarks/bench_train.py --minutes 1.4         # the same recipe in 84 seconds
    python benchmarks/bench_train.py --minutes 1.4 --dropout 0   # ...without dropout (better in so short a run)
    python benchmarks/bench_train.py --minutes 3 -- --preset tiny --lr 3e-3    # any train flags after --
    python benchmarks/bench_train.py --keep runs/recipe    # keep the model (for probe_calibration.py)
    python benchmarks/bench_train.py --text book.txt       # another text (benchmarks/extract_book.py makes one)

It runs the real command line (`main.py train`) in a fresh folder, exactly as a user would, and
reads the result from the metrics log. The recipe holds out the text's last 10% as a test part
(--test-fraction 0.1) and validates on the 10% before it: settings are chosen on the validation
figure, and the test figure, read once at the end, is the one to report. Bits per byte compare across tokenizers; on this
ASCII text one byte is one character, so nats per character = bits per byte x ln 2 (nanoGPT's
character-level models report nats per character).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

# The recipe (also in the README; the runs that chose it are in BENCHMARKS.md and docs/history.md):
# the `mini` preset with 4 layers instead of its 6 (384 wide; on a slow CPU 4 layers get half as
# many steps again into the 10 minutes, and end better), a context of 512 tokens at batch 4 (the
# preset's 256 at batch 8, the same tokens a step, validated 0.0015 worse), dropout 0.2 outside
# attention, a 2048-token vocabulary (learned from the training part of the text only, as every
# run's own tokenizer is), Muon at a peak rate of 0.012 for the blocks' matrices (AdamW at --lr
# 2e-3 for embeddings, head, norms and biases), ReLU^2 MLPs, rotary positions, RMS-normalised
# queries and keys, an untied head; weight decay 1.0 (times each optimizer's learning rate, on the
# matrices), a moving average of the weights (decay 0.99) as the model evaluated and saved, bf16
# autocast where the CPU has it (auto), and the schedule fitted to the time budget. The last 10%
# of the text is the test part, the 10% before it validation.
RECIPE = ["--preset", "mini", "--n-layer", "4", "--context", "512", "--vocab-size", "2048", "--lr", "2e-3",
          "--batch-size", "4", "--eval-every", "200", "--optimizer", "muon", "--muon-lr", "0.012", "--mlp", "relu2",
          "--untied", "--rope", "--qk-norm", "--dropout", "0.2", "--weight-decay", "1.0", "--ema", "0.99",
          "--test-fraction", "0.1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget (default 10)")
    parser.add_argument("--text", type=Path, default=DATA, help="training text (default: Tiny Shakespeare)")
    parser.add_argument("--dropout", default=None, help="replaces the flags' dropout (0 suits an 84-second run)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="train in this folder and keep it (model.pt, vocab.txt, the metrics log); default: a temporary one")
    parser.add_argument("train_args", nargs="*", help="flags for main.py train, after -- (default: the recipe)")
    args = parser.parse_args()
    train_args = args.train_args or RECIPE
    if args.dropout is not None:  # main.py train takes the last --dropout given
        train_args = [*train_args, "--dropout", args.dropout]

    if args.keep is not None:
        if (args.keep / "model.pt").exists() or (args.keep / "vocab.txt").exists():
            sys.exit(f"bench_train: {args.keep} already holds a run (model.pt or vocab.txt); give a new folder")
        args.keep.mkdir(parents=True, exist_ok=True)
    place = nullcontext(args.keep) if args.keep is not None else tempfile.TemporaryDirectory(prefix="bench_train_")
    with place as folder:
        folder = Path(folder)
        command = [sys.executable, str(ROOT / "main.py"), "train", str(args.text), str(folder / "vocab.txt"),
                   "--out", str(folder / "model.pt"), "--minutes", str(args.minutes), *train_args]
        shown = " ".join(["python main.py", *command[2:]])
        print("command:", shown if args.keep is not None else shown.replace(str(folder), "<tmp>"), flush=True)
        start = time.monotonic()
        subprocess.run(command, check=True)
        wall = time.monotonic() - start
        records = [json.loads(line) for line in (folder / "model.metrics.jsonl").read_text().splitlines()]

    evals = [r for r in records if r.get("eval")]
    steps = [r for r in records if "loss" in r]
    last = evals[-1] if evals else {"step": records[-1]["step"], "val_bpb": math.nan}  # nan: --val-fraction 0
    test = next((r["test_bpb"] for r in records if r.get("test")), math.nan)  # nan: no --test-fraction
    print()
    print("| text | budget | wall (incl. tokenizer, eval) | steps | tokens/s | final val bpb | test bpb | test nats/char |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.text.name} | {args.minutes:g} min | {wall:.0f} s | {last['step']} | {steps[-1]['tokens_per_s']:,} | "
          f"{last['val_bpb']:.4f} | {test:.4f} | {test * math.log(2):.4f} |")
    print(f"\nmachine: {platform.processor() or platform.machine()}, {platform.system()}; python {platform.python_version()}")


if __name__ == "__main__":
    main()
