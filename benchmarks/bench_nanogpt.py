"""The peer, run as it is: Karpathy's nanoGPT trained on a text from its own checkout, scored as bench_train.py scores ours.

    python benchmarks/bench_nanogpt.py ../nanoGPT                         # 10 minutes on Tiny Shakespeare, 80/10/10
    python benchmarks/bench_nanogpt.py ../nanoGPT --max-iters 2500         # a fixed number of iterations
    python benchmarks/bench_nanogpt.py ../nanoGPT --max-iters 2500 --val-fraction 0 --vocab-size 0  # nanoGPT's 90/10

It writes the text as nanoGPT's character-level data (train.bin, val.bin and meta.pkl, made as
its data/shakespeare_char/prepare.py makes them: one id per distinct character of the whole
text), runs the checkout's own train.py with config/train_shakespeare_char.py and the CPU flags
of the 10-minute peer (4 layers, 4 heads, 192 wide, context 128, batch 24, no dropout, learning
rate 3e-3 to 3e-4), either for --max-iters iterations or for as many as fit --minutes after a
short timing probe (the probe's time is part of the budget), then loads its checkpoint through
the checkout's model.py and scores the test part in non-overlapping windows of 128 characters,
as our trainer scores its test part in windows of its context. The parts are the byte ranges our
run of the recipe holds out: the text tokenized by a tokenizer of --vocab-size tokens learned
from its training part, cut by gpt2_llm.data.split_tokens, so test bits per byte sit beside
bench_train.py's (--vocab-size 0 cuts the characters instead, nanoGPT's own way). Bits per
byte = nats per character / ln 2 x characters / bytes of the scored text (UTF-8). Nothing of
nanoGPT is copied here: give the path of a checkout (git clone https://github.com/karpathy/nanoGPT).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

import bpe
from basics import UserError
from gpt2_llm import hardware
from gpt2_llm.data import eval_windows, split_tokens
from gpt2_llm.runs import training_part

CONTEXT = 128
CONFIG = "config/train_shakespeare_char.py"
# The peer's flags (nanoGPT's CPU example in its README, made wider and given the learning rates
# that suit a 10-minute run on a 2-core CPU); --max_iters and --lr_decay_iters are added per run.
PEER = ["--device=cpu", "--compile=False", "--dtype=float32", f"--block_size={CONTEXT}", "--batch_size=24",
        "--n_layer=4", "--n_head=4", "--n_embd=192", "--dropout=0.0", "--learning_rate=3e-3", "--min_lr=3e-4",
        "--warmup_iters=100"]
EVAL_ITERS = 20  # batches of nanoGPT's own loss estimate (at the first and last iteration): a log figure only
PROBE_ITERS = 40
NEEDED = ("train.py", "model.py", "configurator.py", CONFIG)


def check_checkout(path: Path) -> Path:
    missing = [name for name in NEEDED if not (path / name).is_file()]
    if not path.is_dir() or missing:
        sys.exit(f"bench_nanogpt: {path} is not a nanoGPT checkout (no {', '.join(missing) or path}); "
                 f"give the folder of `git clone https://github.com/karpathy/nanoGPT`")
    return path.resolve()


def cut_points(path: Path, text: str, val_fraction: float, test_fraction: float, vocab_size: int) -> tuple[int, int]:
    """The character offsets where the validation and the test parts begin: where `main.py train`
    with a tokenizer of `vocab_size` tokens cuts the text (its tokenizer learned from the training
    part, the tokens cut by split_tokens, a cut inside a character moved to its start), or with
    vocab_size 0 where split_tokens cuts the characters themselves."""
    if vocab_size == 0:
        train, val, _ = split_tokens(np.arange(len(text)), val_fraction, 1, test_fraction)
        cuts = (len(train), len(train) + len(val))
    else:
        tokenizer = bpe.BPE.train(training_part([path], val_fraction + test_fraction), vocab_size)
        tokens = np.concatenate([np.asarray(ids) for ids in tokenizer.iter_encode_file(path, allowed_special="all")])
        train, val, _ = split_tokens(tokens, val_fraction, 1, test_fraction)
        raw, ends = text.encode("utf-8"), (train.tolist(), train.tolist() + val.tolist())
        cuts = tuple(len(raw[: len(tokenizer.decode_bytes(ids))].decode("utf-8", errors="ignore")) for ids in ends)
    sizes = {"training": cuts[0], "validation": cuts[1] - cuts[0] if val_fraction else None, "test": len(text) - cuts[1]}
    short = [name for name, size in sizes.items() if size is not None and size <= CONTEXT]
    if short:
        raise UserError(f"the text is too short: each part needs over {CONTEXT} characters, and the "
                        f"{' and '.join(short)} {'parts have' if len(short) > 1 else 'part has'} fewer")
    return cuts


def write_data(text: str, cuts: tuple[int, int], folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """nanoGPT's character-level data in `folder`; the ids of the whole text and each id's UTF-8
    length in bytes. With no validation part, val.bin is the test part, as in nanoGPT's 90/10."""
    chars = sorted(set(text))
    if len(chars) > 65535:
        sys.exit(f"bench_nanogpt: the text has {len(chars):,} distinct characters; nanoGPT's uint16 data holds 65,535")
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    train_end, val_end = cuts
    folder.mkdir(parents=True, exist_ok=True)
    ids[:train_end].tofile(folder / "train.bin")
    ids[train_end:val_end if val_end > train_end else None].tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return ids, np.array([len(c.encode("utf-8")) for c in chars])


def run_train(checkout: Path, work: Path, name: str, iters: int, eval_interval: int, echo_every: int) -> dict:
    """Run the checkout's train.py for `iters` iterations (it takes iterations 0..iters, saving the
    model of iteration `iters`); its log goes to work/name.log. Returns its wall time, its
    per-iteration times in ms and its last own loss estimate."""
    flags = [*PEER, f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--dataset={work / 'data'}",
             f"--out_dir={work / name}", f"--eval_interval={eval_interval}", f"--eval_iters={EVAL_ITERS}",
             "--log_interval=1", "--always_save_checkpoint=True"]
    if any("=" in flag.split("=", 1)[1] for flag in flags):
        sys.exit(f"bench_nanogpt: nanoGPT's flags cannot hold '=': use a --work folder without one ({work})")
    start, times, estimate = time.monotonic(), [], None
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "train.py", CONFIG, *flags], cwd=checkout, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            log.write(line)
            if line.startswith("iter "):  # "iter 12: loss 2.4, time 251.3ms, mfu ..."
                times.append(float(line.split("time ")[1].split("ms")[0]))
                show = int(line.split()[1].rstrip(":")) % echo_every == 0
            else:
                show = line.startswith("step ")
                estimate = line.strip() if show else estimate
            if show:
                print(f"  nanoGPT {name}: {line.strip()}", flush=True)
    if proc.wait() != 0:
        last = (work / f"{name}.log").read_text().strip().splitlines()[-1:] or [""]
        sys.exit(f"bench_nanogpt: nanoGPT's train.py failed (exit {proc.returncode}): {last[0]}")
    return {"wall": time.monotonic() - start, "times": times, "estimate": estimate}


def iterations_for(minutes: float, checkout: Path, work: Path) -> tuple[int, float]:
    """As many iterations as fit the budget after a probe of PROBE_ITERS (the probe's time spent
    from it): the run's fixed cost (start, first loss estimate) is the probe's wall less its
    iterations, and the last estimate costs as much again as the first."""
    probe = run_train(checkout, work, "probe", PROBE_ITERS, PROBE_ITERS + 1, PROBE_ITERS)
    per_iter = statistics.median(probe["times"][1:]) / 1000
    fixed = probe["wall"] - per_iter * len(probe["times"])
    first_estimate = probe["times"][0] / 1000 - per_iter
    iters = int((60 * minutes - probe["wall"] - fixed - first_estimate) / per_iter) - 1
    print(f"probe: {per_iter * 1000:.0f} ms/iteration, {probe['wall']:.0f} s in all; {max(iters, 0):,} iterations fit", flush=True)
    if iters < 1:
        sys.exit(f"bench_nanogpt: --minutes {minutes:g} is too short: the probe alone took {probe['wall']:.0f} s")
    return iters, probe["wall"]


def load_model(checkout: Path, checkpoint: Path) -> torch.nn.Module:
    """nanoGPT's model from its own model.py (imported from the checkout) with the run's weights."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", checkout / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = module.GPT(module.GPTConfig(**saved["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in saved["model"].items()})
    return model.eval()


@torch.no_grad()
def score(model: torch.nn.Module, ids: np.ndarray, byte_lengths: np.ndarray) -> dict:
    """Nats per character and bits per byte over non-overlapping windows of CONTEXT characters
    (eval_windows, as our trainer scores a part): every character but the first is predicted,
    up to a tail shorter than a window."""
    windows = eval_windows(ids.astype(np.int64), CONTEXT)
    x, y = windows[:, :-1], windows[:, 1:].contiguous()  # nanoGPT views the targets flat
    total = 0.0
    for xb, yb in zip(x.split(64), y.split(64)):
        _, loss = model(xb, yb)
        total += loss.item() * yb.numel()
    num_bytes = int(byte_lengths[y.numpy()].sum())
    return {"nats_per_char": total / y.numel(), "bpb": total / math.log(2) / num_bytes, "chars": y.numel(), "bytes": num_bytes}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("nanogpt", type=Path, help="a nanoGPT checkout (git clone https://github.com/karpathy/nanoGPT)")
    parser.add_argument("--text", type=Path, default=DATA, help="the text, UTF-8 (default: Tiny Shakespeare)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=10.0, help="training budget, the probe included (default 10)")
    budget.add_argument("--max-iters", type=int, default=None, help="train this many iterations instead (no probe)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="as main.py train's (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="as main.py train's (default 0.1)")
    parser.add_argument("--vocab-size", type=int, default=2048,
                        help="cut the parts where our run with a tokenizer of this size cuts them (default 2048, the "
                             "recipe's); 0 cuts the characters, as nanoGPT does")
    parser.add_argument("--work", type=Path, default=None, help="keep the data, logs and checkpoint here (default: a temporary folder)")
    args = parser.parse_args()
    if not 0 < args.test_fraction < 1 or not 0 <= args.val_fraction < 1 - args.test_fraction:
        parser.error("need 0 < --test-fraction < 1 and 0 <= --val-fraction < 1 - --test-fraction")
    if args.max_iters is not None and args.max_iters < 1 or args.minutes <= 0 or args.vocab_size < 0:
        parser.error("--max-iters and --minutes must be positive, --vocab-size 0 or more")
    return args


def main() -> None:
    args = parse_args()
    checkout = check_checkout(args.nanogpt)
    start = time.monotonic()  # the wall column counts the tokenizer that finds the cuts, as bench_train's counts ours
    try:
        text = args.text.read_bytes().decode("utf-8")
        cuts = cut_points(args.text, text, args.val_fraction, args.test_fraction, args.vocab_size)
    except (OSError, UnicodeDecodeError, UserError) as e:  # UserError: too short, not UTF-8
        sys.exit(f"bench_nanogpt: {args.text}: {e}")
    if args.work is not None and (args.work / "run").exists():
        sys.exit(f"bench_nanogpt: {args.work} already holds a run; give a new folder")
    place = nullcontext(args.work) if args.work is not None else tempfile.TemporaryDirectory(prefix="bench_nanogpt_")
    with place as folder:
        work = Path(folder).resolve()
        ids, byte_lengths = write_data(text, cuts, work / "data")
        print(f"parts (characters): train [0, {cuts[0]:,}), validation [{cuts[0]:,}, {cuts[1]:,}), "
              f"test [{cuts[1]:,}, {len(text):,}); {int(byte_lengths.size)} distinct characters", flush=True)
        train_start = time.monotonic()
        iters, probe_wall = (args.max_iters, 0.0) if args.max_iters else iterations_for(args.minutes, checkout, work)
        run = run_train(checkout, work, "run", iters, iters, max(1, iters // 10))
        trained = time.monotonic() - train_start
        model = load_model(checkout, work / "run" / "ckpt.pt")
        test = score(model, ids[cuts[1]:], byte_lengths)
        val = score(model, ids[cuts[0]:cuts[1]], byte_lengths) if cuts[1] > cuts[0] else {"bpb": math.nan}
        wall = time.monotonic() - start
    report(args, iters, run, trained, probe_wall, wall, val, test)


def report(args, iters: int, run: dict, trained: float, probe_wall: float, wall: float, val: dict, test: dict) -> None:
    per_iter = statistics.median(run["times"][1:]) if len(run["times"]) > 1 else math.nan
    chars_per_s = 24 * CONTEXT / per_iter * 1000
    budget = f"{iters:,} iters" if args.max_iters else f"{args.minutes:g} min"
    print(f"\nnanoGPT: {iters:,} iterations, median {per_iter:.1f} ms each, training {trained - probe_wall:.0f} s"
          f"{f' (+ probe {probe_wall:.0f} s)' if probe_wall else ''}; its own last estimate: {run['estimate']}")
    print(f"test part: {test['chars']:,} characters scored, {test['bytes']:,} bytes; "
          f"{test['nats_per_char']:.4f} nats/char")
    print()
    print("| text | budget | wall (incl. tokenizer, eval) | steps | tokens/s | final val bpb | test bpb | test nats/char |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.text.name} (nanoGPT) | {budget} | {wall:.0f} s | {iters} | {chars_per_s:,.0f} | "
          f"{val['bpb']:.4f} | {test['bpb']:.4f} | {test['nats_per_char']:.4f} |")
    print(f"\nmachine: {hardware.device_name(torch.device('cpu'))}; torch {torch.__version__}; tokens are characters")


if __name__ == "__main__":
    main()
