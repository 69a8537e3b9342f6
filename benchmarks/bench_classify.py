"""Fine-tuning for classification against a bag-of-words baseline on the same split (issue 31).

    python benchmarks/bench_classify.py --init-from runs/gutenberg.pt -- --epochs 5
    python benchmarks/bench_classify.py --baseline-only

The data (default: the SMS Spam Collection in ../shared/data) is read as `train --classify`
reads it, balanced with --balance (the book's 747 + 747) and split 70/10/20 with the toolkit's fixed
seed, so every run and the baseline see the same 1,045 / 149 / 300 messages. For each seed, one
`main.py train DATA --classify` run (its own process, timed), whose test accuracy comes from its
metrics log: the test part is read once, at the run's end, and chose nothing. Arguments after `--`
go to every run. The baseline is TF-IDF over words and word pairs with logistic regression (L2,
C = 1, as scikit-learn's defaults), fitted on the training part, scored on the test part.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpt2_llm.labelled import balance, read_labelled, split  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection"


def words(text: str) -> list[str]:
    tokens = re.findall(r"\w\w+", text.lower())  # scikit-learn's default token pattern
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]


def tfidf(texts: list[str], vocabulary: dict[str, int], idf: torch.Tensor) -> torch.Tensor:
    rows = torch.zeros(len(texts), len(vocabulary))
    for i, text in enumerate(texts):
        for word, n in Counter(words(text)).items():
            if word in vocabulary:
                rows[i, vocabulary[word]] = n
    rows *= idf
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def baseline(train, test, classes: int) -> float:
    """TF-IDF (smoothed idf, L2-normalised rows) and multinomial logistic regression, L2 penalty
    with C = 1, fitted by L-BFGS; the test part's accuracy."""
    df = Counter(word for text in train.texts for word in set(words(text)))
    vocabulary = {word: k for k, word in enumerate(sorted(df))}
    n = len(train.texts)
    idf = torch.tensor([math.log((1 + n) / (1 + df[w])) + 1 for w in vocabulary])
    x, y = tfidf(train.texts, vocabulary, idf).double(), torch.tensor(train.labels)
    weight = torch.zeros(x.size(1), classes, dtype=torch.double, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.double, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-8, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weight + bias, y, reduction="sum") + 0.5 * (weight**2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    with torch.no_grad():
        predicted = (tfidf(test.texts, vocabulary, idf).double() @ weight + bias).argmax(1)
    return (predicted == torch.tensor(test.labels)).double().mean().item()


def run_once(data: Path, seed: int, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, str(ROOT / "main.py"), "train", str(data), *extra, "--classify", "--balance",
               "--val-fraction", "0.1", "--test-fraction", "0.2", "--seed", str(seed), "--out", str(out), "--overwrite"]
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # the child's own peak resident memory, in KB on Linux
        seconds = time.monotonic() - start
        err.seek(0)
        stderr = err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"run failed: {' '.join(command)}\n{stderr[-2000:]}")
    metrics = [json.loads(line) for line in out.with_suffix(".metrics.jsonl").read_text().splitlines()]
    test = [m for m in metrics if m.get("test")][-1]
    val = [m for m in metrics if m.get("eval")]
    sizes = re.search(r"; ([\d,]+) parameters(?:, of which ([\d,]+) trained)?", stderr)  # the run's device line
    total = int(sizes.group(1).replace(",", ""))
    return {"seed": seed, "test_accuracy": test["test_accuracy"], "val_accuracy": val[-1]["val_accuracy"],
            "seconds": round(seconds, 1), "steps": test["step"], "parameters": total,
            "trained": int(sizes.group(2).replace(",", "")) if sizes.group(2) else total,
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out-dir", type=Path, default=Path("bench_classify_runs"))
    parser.add_argument("--baseline-only", action="store_true")
    parser.add_argument("extra", nargs="*", help="after --: flags for every train run (--init-from, --epochs, ...)")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} is missing (see ../shared/data/SOURCES.md)")
    data = balance(read_labelled(args.data))
    train, _, test = split(data, (0.7, 0.1, 0.2))
    print(f"{args.data.name}: {len(train.texts)} / {len(data.texts) - len(train.texts) - len(test.texts)} / "
          f"{len(test.texts)} (train / validation / test)")
    print(f"TF-IDF + logistic regression: test accuracy {baseline(train, test, len(data.names)):.4f}", flush=True)
    if args.baseline_only:
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        results.append(run_once(args.data, seed, args.out_dir / f"seed{seed}.pt", args.extra))
        print(json.dumps(results[-1]), flush=True)
    accuracies = [r["test_accuracy"] for r in results]
    print(f"test accuracy: mean {statistics.mean(accuracies):.4f}, min {min(accuracies):.4f}, max {max(accuracies):.4f} "
          f"over seeds {args.seeds}; longest run {max(r['seconds'] for r in results):.0f} s")


if __name__ == "__main__":
    main()
