"""Scaling benchmark: several processes, and a corpus larger than memory.

    python benchmarks/bench_scale.py             # (a) and (b) on gutenberg_en.txt (about 3 minutes on 2 cores)
    python benchmarks/bench_scale.py --memory    # (c) alone: a generated 1.1 GB file (1.7 GB of temporary disk)
    python benchmarks/bench_scale.py --quick     # (a), (b) and (c) on small inputs, 1 repeat (about 30 s)

(a) Tokenizer training on gutenberg_en.txt (20.6 MB). The pre-tokenize-and-count phase
    (`bpe.count_pretokens`) with 1 and with 2 workers (bar: 2 workers at least 1.6x faster);
    then whole training, ours with its default workers against Hugging Face `tokenizers`
    (ByteLevel BPE with its default threads), same vocab size (bar: ours faster).
(b) Encoding gutenberg_en.txt with GPT-2's vocabulary (`BPE.iter_encode_file`, a fresh tokenizer
    for each run, built outside the timing) with 1 and with 2 workers (bar: at least 1.6x faster).
(c) `load_tokens` on a generated text of about 1 GB (Gutenberg's lines, shuffled afresh for each
    copy) with GPT-2's vocabulary and the default workers, in a child process. The memory of
    that process and its workers, added up, is sampled from /proc every 50 ms (bar: peak RSS
    under 1.5 GB). Linux only. The text and its token file are deleted afterwards.

Parts (a) and (b) each run in a fresh process. Timings are medians of --repeats runs, the
compared sides alternating in that process so that the machine's noise hits both alike.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_bpe import DATA, medians, training_times  # bench_bpe puts the repository on sys.path

import bpe  # noqa: E402

GUTENBERG = DATA / "gutenberg_en.txt"
MEMORY_BAR = 1.5e9  # bytes
SPEEDUP_BAR = 1.6


def gpt2_tokenizer() -> bpe.BPE:
    return bpe.BPE.from_gpt2(DATA / "gpt2" / "encoder.json", DATA / "gpt2" / "vocab.bpe")


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def bench_training(path: Path, vocab_sizes: list[int], repeats: int) -> None:
    mb = path.stat().st_size / 1e6
    specials = [bpe.ENDOFTEXT]

    def count(workers: int):
        return lambda: bpe.count_pretokens(bpe.iter_text_chunks(path, specials), bpe.GPT2_PATTERN, specials, workers)

    m = medians({1: count(1), 2: count(2)}, repeats)
    print(f"\n### (a) Tokenizer training: pre-tokenize and count (s, median of {repeats})\n")
    print("| corpus | MB | 1 worker | 2 workers | speed-up | bar (>= 1.6x) |")
    print("|---|---:|---:|---:|---:|---|")
    speedup = m[1] / m[2]
    print(f"| {path.name} | {mb:.1f} | {m[1]:.2f} | {m[2]:.2f} | {speedup:.2f}x | {verdict(speedup >= SPEEDUP_BAR)} |", flush=True)

    workers = bpe.default_workers(path.stat().st_size)
    print(f"\n### (a) Whole tokenizer training (s, median of {repeats}): ours with {workers} worker(s), "
          f"HF tokenizers with its default threads\n")
    print("| corpus | vocab | bpe.py | HF tokenizers | ours / HF | bar (< 1) |")
    print("|---|---:|---:|---:|---:|---|")
    for vocab_size in vocab_sizes:
        m = training_times(path, vocab_size, repeats)
        ratio = m["ours"] / m["hf"]
        print(f"| {path.name} | {vocab_size} | {m['ours']:.2f} | {m['hf']:.2f} | {ratio:.2f} | {verdict(ratio < 1)} |", flush=True)


def bench_encoding(path: Path, repeats: int) -> None:
    mb = path.stat().st_size / 1e6
    times: dict[int, list[float]] = {1: [], 2: []}
    ids_seen: dict[int, int] = {}
    for _ in range(repeats):
        for workers in times:
            tok = gpt2_tokenizer()  # cold: its cache of pieces is empty, as on a first run
            start = time.perf_counter()
            ids_seen[workers] = sum(len(ids) for ids in tok.iter_encode_file(path, workers=workers))
            times[workers].append(time.perf_counter() - start)
    assert ids_seen[1] == ids_seen[2], "1 and 2 workers gave different numbers of tokens"
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"\n### (b) Corpus encoding, GPT-2 vocabulary, cold tokenizer (s, median of {repeats})\n")
    print("| corpus | MB | tokens | 1 worker | 2 workers | MB/s with 2 | speed-up | bar (>= 1.6x) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {path.name} | {mb:.1f} | {ids_seen[1]:,} | {one:.2f} | {two:.2f} | {mb / two:.1f} | {one / two:.2f}x | "
          f"{verdict(one / two >= SPEEDUP_BAR)} |", flush=True)


# ---- (c) memory ---------------------------------------------------------------------------------


def write_big_text(path: Path, target_bytes: int) -> int:
    """Copies of Gutenberg's lines, each copy in a new random order, until target_bytes."""
    with open(GUTENBERG, encoding="utf-8", newline="") as f:
        lines = f.read().splitlines(keepends=True)
    copies = math.ceil(target_bytes / GUTENBERG.stat().st_size)
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8", newline="") as f:
        for _ in range(copies):
            rng.shuffle(lines)
            f.write("".join(lines))
    return path.stat().st_size


def tree_memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of process `root` and all its descendants, each added up (from /proc).

    RSS counts a page in every process that maps it, so pages that a forked worker still shares
    with its parent count twice; PSS splits a shared page among its processes, so it adds up to
    the memory the processes take together.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue  # the process ended meanwhile
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])  # the field after the state, past the name
            children.setdefault(parent, []).append(int(entry))
    rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                sizes = dict(line.split(":") for line in f.read().splitlines()[1:])
        except OSError:
            continue
        rss += int(sizes["Rss"].split()[0]) * 1024  # "1784 kB"
        pss += int(sizes["Pss"].split()[0]) * 1024
    return rss, pss


def measure_memory(target_bytes: int) -> dict:
    """Encode a generated text of about target_bytes with load_tokens in a child process;
    return its size, token count and time, and the peak memory of the child and its workers."""
    with tempfile.TemporaryDirectory(prefix="bench_scale.") as folder:
        text = Path(folder) / "big.txt"
        size = write_big_text(text, target_bytes)
        child = subprocess.Popen([sys.executable, __file__, "--encode-in-child", str(text)], stdout=subprocess.PIPE, text=True)
        peak_rss = peak_pss = 0
        while child.poll() is None:
            rss, pss = tree_memory(child.pid)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.05)
        if child.returncode != 0:
            raise RuntimeError(f"the encoding child failed with exit code {child.returncode}")
        report = json.loads(child.stdout.read())
    return {"bytes": size, "peak_rss": peak_rss, "peak_pss": peak_pss, **report}


def encode_in_child(path: str) -> None:
    """Run by measure_memory in a fresh process: load_tokens, then a JSON report on stdout."""
    from gpt2_llm.data import load_tokens

    tok = gpt2_tokenizer()
    start = time.perf_counter()
    tokens = load_tokens(path, tok)
    seconds = time.perf_counter() - start
    print(json.dumps({"tokens": len(tokens), "seconds": seconds, "workers": bpe.default_workers(os.path.getsize(path))}))


def bench_memory(target_bytes: int) -> None:
    if not os.path.exists("/proc/self/smaps_rollup"):
        sys.exit("--memory reads /proc/PID/smaps_rollup: it needs Linux 4.14 or later")
    r = measure_memory(target_bytes)
    print("\n### (c) load_tokens on a large text, GPT-2 vocabulary, default workers\n")
    print("Peak memory of the encoding process and its workers added up, sampled every 50 ms: RSS (pages a "
          "worker shares with its parent after fork counted twice) and PSS (shared pages split, so the "
          "true total).\n")
    print("| text (GB) | tokens | workers | seconds | MB/s | peak RSS (GB) | peak PSS (GB) | bar (RSS < 1.5 GB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {r['bytes'] / 1e9:.2f} | {r['tokens']:,} | {r['workers']} | {r['seconds']:.0f} | "
          f"{r['bytes'] / 1e6 / r['seconds']:.1f} | {r['peak_rss'] / 1e9:.2f} | {r['peak_pss'] / 1e9:.2f} | "
          f"{verdict(r['peak_rss'] < MEMORY_BAR)} |", flush=True)


def quick_corpus(folder: str, size: int) -> Path:
    """The first `size` bytes of Gutenberg (cut at a line end) as a file of its own."""
    with open(GUTENBERG, encoding="utf-8", newline="") as f:
        text = f.read(size)
    path = Path(folder) / "gutenberg_head.txt"
    path.write_text(text[: text.rindex("\n") + 1], encoding="utf-8", newline="")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small inputs, 1 repeat: checks that the script works")
    parser.add_argument("--memory", action="store_true", help="run (c) alone, on a 1 GB text")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--encode-in-child", metavar="PATH", help=argparse.SUPPRESS)  # measure_memory's child
    parser.add_argument("--section", choices=["training", "encoding"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.encode_in_child:
        encode_in_child(args.encode_in_child)
    elif args.section == "training":
        bench_training(GUTENBERG, [4096, 8192, 16384], args.repeats)
    elif args.section == "encoding":
        bench_encoding(GUTENBERG, args.repeats)
    elif args.memory:
        bench_memory(1 << 30)
    elif args.quick:
        with tempfile.TemporaryDirectory() as folder:
            head = quick_corpus(folder, 4_000_000)
            bench_training(head, [4096], repeats=1)
            bench_encoding(head, repeats=1)
        bench_memory(40_000_000)
    else:
        # Each part in a fresh process, as a user's command would run: forked workers copy their
        # parent's memory page by page as they touch it, so a process grown by the part before
        # (HF's trainer, large counts) would make the next part's workers start slower.
        for section in ("training", "encoding"):
            subprocess.run([sys.executable, __file__, "--section", section, "--repeats", str(args.repeats)], check=True)


if __name__ == "__main__":
    main()
