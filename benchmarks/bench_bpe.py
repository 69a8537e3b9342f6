"""Tokenizer benchmark: bpe.py side by side with Hugging Face `tokenizers` and `tiktoken`.

    python benchmarks/bench_bpe.py                 # everything (about 5 minutes on 2 cores)
    python benchmarks/bench_bpe.py --quick         # Tiny Shakespeare only, fewer repeats

Each measurement runs ours and theirs alternately in one process, `--repeats` times, and
reports medians, so the machine's noise hits both sides alike. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bpe  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
EOT = bpe.ENDOFTEXT


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def medians(fns: dict, repeats: int) -> dict:
    """Run each function `repeats` times, interleaved, and return the median seconds of each."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def read(name: str) -> str:
    with open(DATA / name, encoding="utf-8", newline="") as f:
        return f.read()


def hf_trainer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tok, trainer



def training_times(path: Path, vocab_size: int, repeats: int) -> dict:
    """Median seconds to train a tokenizer on `path`: ours (default workers) and HF's (default threads)."""

    def ours():
        bpe.BPE.train(path, vocab_size)

    def theirs():
        tok, trainer = hf_trainer(vocab_size)
        tok.train([str(path)], trainer)

    return medians({"ours": ours, "hf": theirs}, repeats)


def bench_training(corpora: list[str], vocab_sizes: list[int], repeats: int) -> None:
    print("\n### Training time (s, median of %d), same corpus file, same vocab size\n" % repeats)
    print("| corpus | vocab | bpe.py | HF tokenizers | ratio (ours / HF) |")
    print("|---|---:|---:|---:|---:|")
    for name in corpora:
        path = DATA / name
        for vocab_size in vocab_sizes:
            m = training_times(path, vocab_size, repeats)
            print(f"| {name} | {vocab_size} | {m['ours']:.2f} | {m['hf']:.2f} | {m['ours'] / m['hf']:.2f} |", flush=True)


def bench_compression(corpora: list[str], vocab_sizes: list[int]) -> None:
    print("\n### Bytes per token, same vocab size (HF trained with train_from_iterator on the whole text)\n")
    print("| corpus | vocab | bpe.py | HF tokenizers | difference |")
    print("|---|---:|---:|---:|---:|")
    for name in corpora:
        text = read(name)
        n_bytes = len(text.encode())
        for vocab_size in vocab_sizes:
            ours = bpe.BPE.train(text, vocab_size)
            tok, trainer = hf_trainer(vocab_size)
            tok.train_from_iterator([text], trainer)
            a = n_bytes / len(ours.encode_ordinary(text))
            b = n_bytes / len(tok.encode(text).ids)
            print(f"| {name} | {vocab_size} | {a:.4f} | {b:.4f} | {100 * (a / b - 1):+.2f}% |", flush=True)


def gpt2_tokenizers():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    enc, merges = str(DATA / "gpt2" / "encoder.json"), str(DATA / "gpt2" / "vocab.bpe")

    def ours():
        return bpe.BPE.from_gpt2(enc, merges)

    def tik():
        ranks = data_gym_to_mergeable_bpe_ranks(merges, enc)
        return tiktoken.Encoding("gpt2-offline", pat_str=bpe.GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})

    def hf():
        tok = Tokenizer(models.BPE.from_file(enc, merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok

    return ours, tik, hf


def bench_encoding(corpora: list[str], repeats: int) -> None:
    make_ours, make_tik, make_hf = gpt2_tokenizers()
    print("\n### Encode and decode, GPT-2 vocabulary, single thread (MB/s, median of %d)\n" % repeats)
    print("Cold: a fresh tokenizer for each run (built outside the timing). Warm: the same text again.\n")
    print("| corpus | MB | bpe.py cold | bpe.py warm | tiktoken | HF tokenizers | cold / tiktoken | warm / tiktoken | cold / HF | bpe.py decode | tiktoken decode |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    tik, hf = make_tik(), make_hf()
    for name in corpora:
        text = read(name)
        mb = len(text.encode()) / 1e6
        fresh = [make_ours() for _ in range(repeats)]
        warm = make_ours()
        ids = warm.encode_ordinary(text)
        assert ids == tik.encode_ordinary(text), f"GPT-2 parity broken on {name}"
        cold_t, warm_t, tik_t, hf_t, dec_t, tdec_t = [], [], [], [], [], []
        for r in range(repeats):
            cold_t.append(timed(lambda: fresh[r].encode_ordinary(text)))
            warm_t.append(timed(lambda: warm.encode_ordinary(text)))
            tik_t.append(timed(lambda: tik.encode_ordinary(text)))
            if r == 0 or mb < 5:  # HF runs at ~1 MB/s: once on the large corpus
                hf_t.append(timed(lambda: hf.encode(text)))
            dec_t.append(timed(lambda: warm.decode(ids)))
            tdec_t.append(timed(lambda: tik.decode(ids)))
        c, w, t, h, d, td = (mb / statistics.median(x) for x in (cold_t, warm_t, tik_t, hf_t, dec_t, tdec_t))
        print(f"| {name} | {mb:.1f} | {c:.2f} | {w:.2f} | {t:.2f} | {h:.2f} | {c / t:.2f} | {w / t:.2f} | {c / h:.1f} | {d:.1f} | {td:.1f} |", flush=True)


def bench_long_piece() -> None:
    make_ours, make_tik, _ = gpt2_tokenizers()
    ours, tik = make_ours(), make_tik()
    print("\n### One pre-token with no spaces (letters), GPT-2 vocabulary\n")
    print("| characters | bpe.py (s) | per 100k chars | tiktoken (s) |")
    print("|---:|---:|---:|---:|")
    for n in (10_000, 100_000, 1_000_000):
        text = ("abcdefghijklmnopqrstuvwxy" * (n // 25 + 1))[:n]
        a = timed(lambda: ours.encode_ordinary(text))
        b = timed(lambda: tik.encode_ordinary(text))
        print(f"| {n:,} | {a:.2f} | {a / n * 1e5:.3f} | {b:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Tiny Shakespeare only, 3 repeats")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    corpora = ["tinyshakespeare.txt"] if args.quick else ["tinyshakespeare.txt", "gutenberg_en.txt"]
    repeats = 3 if args.quick else args.repeats
    bench_training(corpora, [4096, 16384], repeats)
    bench_compression(corpora, [4096, 16384])
    bench_encoding(corpora, repeats)
    bench_long_piece()


if __name__ == "__main__":
    main()
