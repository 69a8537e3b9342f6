"""What the copying cache (`--copy`, gpt2_llm/copying.py) would give a trained model on its held-out
text: held-out bits per byte for a grid of cache weights and sharpnesses.

    python benchmarks/bench_train.py --keep runs/recipe          # train, keep the model
    python benchmarks/probe_copy.py runs/recipe/model.pt         # the grid on its held-out part
    python benchmarks/probe_copy.py runs/recipe/model.pt --training-part   # ... on training text

The held-out part is the one training validated on (the checkpoint's --val-fraction, its own
tokenizer, the same non-overlapping windows and bits-per-byte denominator). The model runs once;
each cell mixes its logits with the cache through copying.mix_copies, the function the model's
own forward pass calls. `--training-part` scores as many tokens from the end of the training part
instead: text the model has learned, where copying has little to add.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gpt2_llm.copying import mix_copies  # noqa: E402
from gpt2_llm.data import validation_windows  # noqa: E402
from gpt2_llm.hardware import autocast, pick_dtype  # noqa: E402
from probe_calibration import load_run  # noqa: E402  (this folder's: the same run, the same split)

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
SHARPNESSES = (5.0, 10.0, 20.0, 50.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a checkpoint written by main.py train")
    parser.add_argument("--text", type=Path, default=DATA, help="the text it was trained on (default: Tiny Shakespeare)")
    parser.add_argument("--training-part", action="store_true", help="score the end of the training part instead")
    args = parser.parse_args()

    model, tokenizer, training, held_out = load_run(args.model, args.text, "probe_copy")
    model = model.with_changes(copy_weight=0.0).eval()  # its own logits: the grid mixes the cache in
    T = model.config.block_size
    scored = training[-len(held_out) :] if args.training_part else held_out
    windows, num_bytes = validation_windows(scored, T, tokenizer)
    inputs, targets = windows[:, :-1], windows[:, 1:]

    hidden = []  # the final hidden states (what the head reads), caught on their way out of ln_f
    hook = model.ln_f.register_forward_hook(lambda module, args, out: hidden.append(out.float()))
    device = torch.device("cpu")
    with torch.no_grad(), autocast(device, pick_dtype("auto", device)):
        logits = torch.cat([model(batch)[0].float() for batch in inputs.split(16)])
    hook.remove()
    hidden = torch.cat(hidden)

    def bits_per_byte(weight: float, sharpness: float) -> float:
        total = 0.0
        for lo in range(0, len(inputs), 16):  # in batches: the mixture holds a few copies of the logits
            part = slice(lo, lo + 16)
            h = hidden[part]
            log_p = mix_copies(logits[part], h, h[:, :-1], inputs[part, 1:], weight, sharpness, causal=True)
            total -= log_p.gather(-1, targets[part, :, None]).sum().item()
        return total / math.log(2) / num_bytes

    what = "the end of the training part" if args.training_part else "the held-out part"
    print(f"{args.model}: {targets.numel():,} tokens of {what}, {num_bytes:,} bytes\n")
    print("| sharpness \\ weight | " + " | ".join(f"{w:g}" for w in WEIGHTS) + " |")
    print("|---|" + "---:|" * len(WEIGHTS))
    plain = bits_per_byte(0.0, 1.0)
    for sharpness in SHARPNESSES:
        cells = [plain] + [bits_per_byte(w, sharpness) for w in WEIGHTS[1:]]
        print(f"| {sharpness:g} | " + " | ".join(f"{b:.4f}" for b in cells) + " |")


if __name__ == "__main__":
    main()
