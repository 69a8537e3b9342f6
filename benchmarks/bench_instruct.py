"""Fine-tuning on instructions: train on a rule-made instruction set, score exact answers on held-out prompts.

    python benchmarks/bench_instruct.py                       # the recipe, with and without prompt masking
    python benchmarks/bench_instruct.py --minutes 3 -- --preset tiny --lr 3e-3    # any train flags after --
    python benchmarks/bench_instruct.py --init-from base.pt --lora 8 --minutes 5  # full fine-tuning against LoRA

It makes the data (make_instructions.py: 4,500 training records, 500 held-out ones), learns a
tokenizer from the training records as the model reads them (in the Alpaca template), then runs
the real command line, `main.py train train.jsonl vocab.txt --minutes M ...`, once with the loss on
the responses only (the default) and once with --no-mask-prompt, each in a fresh folder. Each
model answers every held-out instruction greedily, up to its end-of-turn token, and an answer
counts when it is exactly the expected one. A few answers are also asked through
`main.py predict --chat` to check that the command line answers the same.

The tokenizer: GPT-2's pre-tokenization pattern with two changes, so that the tasks' letters and
digits are tokens of their own: digits one by one and without the space before them (as LLaMA's
tokenizer does; " 27" is " ", "2", "7", so each digit has one id wherever it stands), and a run of
capitals letter by letter (a code "KEMVO" is five tokens), while ordinary and capitalised words
("Below", " instruction") merge as usual. Reversing a code or adding numbers
is then a matter of moving and combining tokens, which a small model can learn, instead of
knowing how each of hundreds of merged tokens is spelled.

With --init-from MODEL the runs fine-tune that model (with its own tokenizer: none is learned), and
with --lora R they are full fine-tuning against LoRA adapters of rank R (issue 31), both with the
loss on the responses; flags after -- go to both.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import make_instructions  # beside this file

from gpt2_llm.data import records_tokenizer

PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{Lu}?\p{Ll}+| ?\p{Lu}| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
VOCAB_SIZE = 512  # more than the records offer: every word of the template merges whole (497 tokens here)

# The recipe, chosen by the runs in BENCHMARKS.md: the tiny preset made 4 layers of 4 heads, 128
# wide (0.9M weights, about 40,000 tokens a second here: many steps in the budget, which these
# tasks need more than width), a context that holds the longest record (72 tokens), dropout 0.1
# (against memorising 4,050 records), a high learning rate, as small models take, and Muon for the
# blocks' matrices (90.8% against AdamW's 82.8% in the same 8 minutes; see BENCHMARKS.md).
RECIPE = ["--preset", "tiny", "--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--context", "96",
          "--dropout", "0.1", "--lr", "3e-3", "--batch-size", "32", "--eval-every", "500", "--warmup-steps", "100",
          "--optimizer", "muon"]


def answers(model_path: Path, records: list[dict], max_tokens: int = 16) -> list[str]:
    """The model's greedy answer to each record's instruction (and input), up to its end of turn."""
    import torch

    from gpt2_llm.instruct import end_of_turn_id, prompt_ids, template_from_checkpoint
    from gpt2_llm.loading import load

    loaded = load(model_path)
    tokenizer, model = loaded.tokenizer, loaded.model
    template = template_from_checkpoint(loaded.checkpoint.get("chat_template"), str(model_path))
    stop = end_of_turn_id(tokenizer)
    out = []
    with torch.inference_mode():
        for record in records:
            user = {"role": "user", "content": record["instruction"], "input": record["input"]}
            ids = prompt_ids(template, [user], tokenizer)
            new = model.generate(ids, max_tokens, greedy=True, stop_token=stop)[len(ids) :]
            out.append(tokenizer.decode([t for t in new if t != stop]))
    return out


def cli_answer(model_path: Path, instruction: str) -> str:
    """The answer of `main.py predict --chat` (one instruction, no input), as printed."""
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "predict", "--chat", instruction, "16",
                             str(model_path), "--greedy"], capture_output=True, text=True, check=True)
    return result.stdout.removesuffix("\n")


def run(name: str, folder: Path, minutes: float, train_args: list[str], test: list[dict]) -> dict:
    model = folder / f"{name}.pt"
    vocab = [] if "--init-from" in train_args else [str(folder / "vocab.txt")]  # a base brings its own
    command = [sys.executable, str(ROOT / "main.py"), "train", str(folder / "train.jsonl"), *vocab,
               "--out", str(model), "--minutes", str(minutes), *train_args]
    print("command:", " ".join(["python main.py", *command[2:]]).replace(str(folder), "<tmp>"), flush=True)
    start = time.monotonic()
    subprocess.run(command, check=True)
    wall = time.monotonic() - start
    records = [json.loads(line) for line in (folder / f"{name}.metrics.jsonl").read_text().splitlines()]
    # The checkpoint of the lowest validation loss (the run keeps it as NAME.best.pt): early stopping,
    # since a small model overfits 4,500 records within the budget.
    best = model.with_name(f"{name}.best.pt")
    got = answers(best, test)
    # The command line must answer as the library does (the instructions without an input).
    for record, answer in [(r, a) for r, a in zip(test, got) if not r["input"]][:3]:
        assert cli_answer(best, record["instruction"]) == answer, (record, answer)
    right = Counter(r["task"] for r, a in zip(test, got) if a == r["output"])
    return {"wall": wall, "steps": [r for r in records if "loss" in r][-1]["step"],
            "val": [r for r in records if r.get("eval")][-1], "right": right,
            "examples": [(r["instruction"], r["input"], r["output"], a) for r, a in zip(test, got)][:8]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget of each run (default 8)")
    parser.add_argument("--count", type=int, default=5000, help="records made, a tenth held out (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data (default 0)")
    parser.add_argument("--only", default=None, help="run one of the two (masked, unmasked; with --lora: full, loraR)")
    parser.add_argument("--init-from", default=None, help="fine-tune this model (its tokenizer) instead of the recipe")
    parser.add_argument("--lora", type=int, default=None, help="with --init-from: full fine-tuning against LoRA of this rank")
    parser.add_argument("train_args", nargs="*", help="flags for main.py train, after -- (default: the recipe)")
    args = parser.parse_args()
    train_args = args.train_args or ([] if args.init_from else RECIPE)
    variants = {"masked": [], "unmasked": ["--no-mask-prompt"]}
    if args.init_from:
        train_args = ["--init-from", args.init_from, *train_args]
        variants = {"full": [], f"lora{args.lora}": ["--lora", str(args.lora)]} if args.lora else {"full": []}

    with tempfile.TemporaryDirectory(prefix="bench_instruct_") as folder:
        folder = Path(folder)
        records = make_instructions.make(args.count, args.seed)
        test, train = records[: args.count // 10], records[args.count // 10 :]
        make_instructions.write_jsonl(folder / "train.jsonl", train)
        if not args.init_from:
            records_tokenizer([folder / "train.jsonl"], VOCAB_SIZE, pattern=PATTERN).save(folder / "vocab.txt")
        results = {name: run(name, folder, args.minutes, train_args + flags, test)
                   for name, flags in variants.items() if args.only in (None, name)}

    tasks = Counter(r["task"] for r in test)
    names = list(results)
    print()
    print("| task | held-out prompts | " + " | ".join(f"exact match, {n}" for n in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for task in [t.__name__ for t in make_instructions.TASKS]:
        cells = " | ".join(f"{results[n]['right'][task] / tasks[task]:.1%}" for n in names)
        print(f"| {task} | {tasks[task]} | {cells} |")
    overall = " | ".join(f"**{sum(results[n]['right'].values()) / len(test):.1%}**" for n in names)
    print(f"| **all** | {len(test)} | {overall} |")
    print()
    print("| run | steps | wall (incl. evaluations) | final val loss (responses) | final val bpb |")
    print("|---|---:|---:|---:|---:|")
    for n in names:
        r = results[n]
        print(f"| {n} | {r['steps']} | {r['wall']:.0f} s | {r['val']['val_loss']:.4f} | {r['val']['val_bpb']:.4f} |")
    for n in names:
        print(f"\nfirst answers, {n}:")
        for instruction, given, expected, got in results[n]["examples"]:
            print(f"  {instruction} {given!r}: expected {expected!r}, got {got!r}")
    print(f"\nmachine: {platform.processor() or platform.machine()}, {platform.system()}; python {platform.python_version()}")


if __name__ == "__main__":
    main()
