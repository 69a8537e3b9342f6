"""Diagnostics for a checkpoint and a vocab file: sizes, config, parameters, training state, and
whether they belong together.

    python check_checkpoint.py gpt2_model.pt [vocab.txt]

Exit code: 0 compatible, 1 not compatible, 2 a file cannot be read (the reason is printed).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import bpe


def report(checkpoint_path: str, vocab_path: str | None) -> tuple[list[str], list[str]]:
    """Lines of the report, and the reasons the pair is incompatible (empty: compatible).
    Raises CheckpointError / TokenizerError when a file cannot be read."""
    from gpt2_llm import load_checkpoint

    ckpt = load_checkpoint(checkpoint_path)
    cfg = ckpt["model_config"]
    stored = given = None
    if "tokenizer" in ckpt:  # written by main.py train: the tokenizer travels with the model
        stored = bpe.BPE.from_text(ckpt["tokenizer"]["text"], f"{checkpoint_path} (its tokenizer)")
    if vocab_path is not None:
        given = bpe.BPE.load(vocab_path)
    tokenizer = given or stored
    params = sum(t.numel() for name, t in ckpt["model"].items() if name != "lm_head.weight")  # tied to wte
    wte = ckpt["model"].get("wte.weight")
    if wte is not None:  # the embedding's padding rows (a multiple of 64 in all) are not parameters
        params -= (wte.size(0) - cfg["vocab_size"]) * wte.size(1)
    size_mb = os.path.getsize(checkpoint_path) / 1e6
    lines = [
        f"checkpoint:       {checkpoint_path} ({size_mb:.1f} MB, format version {ckpt['format_version']})",
        f"vocab size:       {tokenizer.vocab_size:,}" if tokenizer else "vocab size:       unknown (no tokenizer)",
        f"model vocab size: {cfg['vocab_size']:,}",
        f"embedding dim:    {cfg['n_embd']}",
        f"layers x heads:   {cfg['n_layer']} x {cfg['n_head']}",
        f"context:          {cfg['block_size']} tokens{' (RoPE)' if cfg.get('rope') else ''}",
        f"parameters:       {params:,}",
    ]
    state = ckpt.get("state")
    if state:
        best = state.get("best_val_loss", math.inf)
        best_text = f"{best:.4f}" if math.isfinite(best) else "none yet"
        total = f" of {state['total_steps']:,}" if state.get("total_steps") else ""
        lines.append(f"training:         step {state['step']:,}{total}, {state['tokens_seen']:,} tokens seen, "
                     f"best val loss {best_text}")
    else:
        lines.append("training:         no training state (weights only)")
    if stored is not None:
        lines.append(f"tokenizer (in the checkpoint): {stored.vocab_size:,} tokens, hash {stored.hash[:16]}")
    if given is not None:
        lines.append(f"vocab file:       {vocab_path}: {given.vocab_size:,} tokens, hash {given.hash[:16]}")

    problems = []
    if stored is not None and given is not None and stored.hash != given.hash:
        problems.append(f"{vocab_path} is not the tokenizer the model was trained with "
                        f"(hash {given.hash[:16]} vs {stored.hash[:16]})")
    if tokenizer is not None and tokenizer.vocab_size > cfg["vocab_size"]:
        problems.append(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding only {cfg['vocab_size']}")
    elif stored is None and given is not None and given.vocab_size != cfg["vocab_size"]:
        problems.append(f"{vocab_path} has {given.vocab_size} tokens, the model {cfg['vocab_size']}")
    return lines, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a checkpoint (and a vocab file) for use together.")
    parser.add_argument("checkpoint", help="checkpoint written by main.py train (or GPT2.save)")
    parser.add_argument("vocab_file", nargs="?", default=None, help="vocab file to check against the checkpoint")
    args = parser.parse_args(argv)
    from gpt2_llm import CheckpointError

    try:
        lines, problems = report(args.checkpoint, args.vocab_file)
    except (CheckpointError, bpe.TokenizerError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if problems:
        print("verdict:          NOT compatible: " + "; ".join(problems))
        return 1
    print("verdict:          compatible")
    return 0


if __name__ == "__main__":
    sys.exit(main())
