"""Is a trained model over- or under-confident on its held-out text? The held-out loss at several
softmax temperatures, and the loss by position in the context window.

    python benchmarks/bench_train.py --keep runs/recipe          # train the recipe, keep the model
    python benchmarks/probe_calibration.py runs/recipe/model.pt

The held-out part is the one training validated on: the last --val-fraction of the text's tokens
(the checkpoint's own, and its own tokenizer), in the same non-overlapping windows, with the same
bits-per-byte denominator. A temperature
above 1 that lowers the loss means the model is overconfident there (its probabilities are too
sharp); the temperature is only looked at, nothing is fitted or changed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gpt2_llm.data import load_tokens, split_tokens, validation_windows  # noqa: E402
from gpt2_llm.hardware import autocast, pick_dtype  # noqa: E402
from gpt2_llm.loading import load  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
TEMPERATURES = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3)


def load_run(path: Path, text: Path, probe: str):
    """A model trained by main.py train (eval mode), its tokenizer, and its text's training and
    held-out token arrays, split as the run split them; exits with a line when path is not such a run."""
    loaded = load(path)
    train_config = loaded.checkpoint.get("train_config")
    if train_config is None or loaded.tokenizer is None:
        sys.exit(f"{probe}: {path} is not a checkpoint of main.py train (it needs the run's tokenizer and "
                 f"held-out fraction)")
    model = loaded.model.eval()
    # The validation part: a probe chooses settings, so it never reads the test part.
    training, held_out, _ = split_tokens(load_tokens(text, loaded.tokenizer), train_config["val_fraction"],
                                         model.config.block_size, train_config.get("test_fraction", 0.0))
    return model, loaded.tokenizer, training, held_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a checkpoint written by main.py train")
    parser.add_argument("--text", type=Path, default=DATA, help="the text it was trained on (default: Tiny Shakespeare)")
    args = parser.parse_args()

    model, tokenizer, _, held_out = load_run(args.model, args.text, "probe_calibration")
    windows, num_bytes = validation_windows(held_out, model.config.block_size, tokenizer)
    T = model.config.block_size
    device = torch.device("cpu")
    logits, targets = [], windows[:, 1:]
    with torch.no_grad(), autocast(device, pick_dtype("auto", device)):
        for batch in windows.split(16):
            logits.append(model(batch[:, :-1])[0].float())
    logits = torch.cat(logits)  # (windows, T, vocab)

    print(f"{args.model}: {targets.numel():,} held-out tokens, {num_bytes:,} bytes\n")
    print("| temperature | " + " | ".join(f"{t:g}" for t in TEMPERATURES) + " |")
    print("|---|" + "---:|" * len(TEMPERATURES))
    bpb = [F.cross_entropy((logits / t).flatten(0, 1), targets.flatten(), reduction="sum").item() / math.log(2) / num_bytes
           for t in TEMPERATURES]
    print("| held-out bits per byte | " + " | ".join(f"{b:.4f}" for b in bpb) + " |")

    by_position = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(dim=0)  # (T,)
    spans = [(a, min(b, T)) for a, b in ((0, 1), (1, 8), (8, 32), (32, 128), (128, T)) if a < T]  # T may be short
    print("\n| positions in the window | " + " | ".join(f"{a}-{b - 1}" if b - a > 1 else f"{a}" for a, b in spans) + " |")
    print("|---|" + "---:|" * len(spans))
    print("| mean loss (nats per token) | " + " | ".join(f"{by_position[a:b].mean():.3f}" for a, b in spans) + " |")


if __name__ == "__main__":
    main()
