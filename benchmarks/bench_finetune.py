"""Fine-tuning GPT-2 on this machine: tokens/s and peak memory of `main.py train --init-from`,
and the largest GPT-2 whose fine-tuning fits the machine's memory.

    python benchmarks/bench_finetune.py                          # gpt2 at batch 8, then each size at batch 1
    python benchmarks/bench_finetune.py --sizes gpt2 --batch 8   # one row

Speed and memory do not depend on the weights' values, so each model is GPT-2's shape (context
1024, GPT-2's own tokenizer from ../shared/data/gpt2) with random weights, written as a checkpoint
that `--init-from` reads; nothing is downloaded. Each row is the real command line in a fresh
process on Tiny Shakespeare: a few optimizer steps at the fine-tuning defaults' learning rate,
bf16 autocast where the CPU has it (`--dtype auto`), no validation. tokens/s is measured between
the second and the last step (the first pays for warm-up); peak memory is the process's peak
resident set (`wait4`), which includes the loaded checkpoint and the optimizer's state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"


def write_pretrained(size: str, path: Path) -> int:
    """A checkpoint of GPT-2 `size`'s shape with random weights and GPT-2's tokenizer; its parameters."""
    import torch

    from bpe import BPE
    from gpt2_llm import GPT2, GPT2Config
    from gpt2_llm.checkpoint import save_checkpoint

    tokenizer = BPE.from_gpt2(DATA / "gpt2" / "encoder.json", DATA / "gpt2" / "vocab.bpe")
    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_preset(size, vocab_size=tokenizer.vocab_size))
    save_checkpoint(path, {"model_config": model.config.__dict__, "model": model.state_dict(),
                           "tokenizer": {"text": tokenizer.to_text(), "hash": tokenizer.hash}})  # fmt: skip
    return model.num_parameters()


def fine_tune(pretrained: Path, folder: Path, batch: int, steps: int) -> dict:
    """Run main.py train --init-from in a child process; its speed, peak memory and last line."""
    out = folder / "tuned.pt"
    command = [sys.executable, str(ROOT / "main.py"), "train", str(DATA / "tinyshakespeare.txt"),
               "--init-from", str(pretrained), "--out", str(out), "--overwrite", "--steps", str(steps),
               "--batch-size", str(batch), "--val-fraction", "0", "--eval-every", str(10 * steps),
               "--log-every", "1", "--sample-tokens", "0"]  # fmt: skip
    start = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - start
    peak = usage.ru_maxrss * 1024  # KiB on Linux
    if os.waitstatus_to_exitcode(status) != 0:
        return {"error": output.strip().splitlines()[-1], "peak": peak, "wall": wall}
    records = [json.loads(line) for line in out.with_suffix(".metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "elapsed_s" in r]
    first, last = timed[1], timed[-1]  # from the end of step 2 to the end of the last step
    tokens_per_s = (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])
    for path in folder.glob("tuned*"):
        path.unlink()
    return {"tokens_per_s": tokens_per_s, "ms_per_step": 1000 * (last["elapsed_s"] - first["elapsed_s"]) /
            (last["step"] - first["step"]), "mfu": last["mfu"], "peak": peak, "wall": wall,
            "memory_line": next((line for line in output.splitlines() if line.startswith("memory:")), "")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=None, help="GPT-2 presets (default: the plan in the docstring)")
    parser.add_argument("--batch", type=int, default=None, help="batch size for every size given")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per row (default 4)")
    args = parser.parse_args()
    plan = ([(size, args.batch or 1) for size in args.sizes] if args.sizes else
            [("gpt2", 8), ("gpt2", 1), ("gpt2-medium", 1), ("gpt2-large", 1), ("gpt2-xl", 1)])  # fmt: skip
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print("| model | parameters | batch x context | tokens/s | s/step | MFU | peak memory | note |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as folder:
        folder = Path(folder)
        written = {}
        for size, batch in plan:
            if size not in written:
                for path in folder.glob("pretrained-*.pt"):
                    path.unlink()  # one model on disk at a time: gpt2-xl alone is 6 GB
                written = {size: write_pretrained(size, folder / f"pretrained-{size}.pt")}
            r = fine_tune(folder / f"pretrained-{size}.pt", folder, batch, args.steps)
            if "error" in r:
                print(f"| {size} | {written[size]:,} | {batch} x 1024 | | | | {r['peak'] / 2**30:.1f} GiB | {r['error']} |")
            else:
                print(f"| {size} | {written[size]:,} | {batch} x 1024 | {r['tokens_per_s']:,.0f} | "
                      f"{r['ms_per_step'] / 1000:.1f} | {r['mfu']:.1%} | {r['peak'] / 2**30:.1f} GiB | "
                      f"{r['memory_line'].removeprefix('memory: ')} |", flush=True)


if __name__ == "__main__":
    main()
