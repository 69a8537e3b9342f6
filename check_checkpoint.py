"""Diagnostics for a checkpoint and a vocab file: sizes, config, parameters, training state, and
whether they belong together.

    python check_checkpoint.py gpt2_model.pt [vocab.txt]

The checkpoint is read through the toolkit's one loader (gpt2_llm/loading.py), exactly as
`main.py predict` would read it. Exit code: 0 usable and compatible; 1 not: a file that cannot be
read or used (the reason on one `error:` line), or a vocab file that does not fit the model (the
verdict says why); 2 a malformed command line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import bpe


def report(checkpoint_path: str, vocab_path: str | None) -> tuple[list[str], list[str]]:
    """Lines of the report, and the reasons the pair is incompatible (empty: compatible).
    Raises a bpe.UserError (CheckpointError, TokenizerError) when a file cannot be used."""
    from gpt2_llm.instruct import template_from_checkpoint
    from gpt2_llm.loading import load

    loaded = load(checkpoint_path)
    cfg, stored = loaded.model.config, loaded.tokenizer
    given = bpe.BPE.load(vocab_path) if vocab_path is not None else None
    tokenizer = given or stored
    size_mb = os.path.getsize(checkpoint_path) / 1e6
    options = [name for name, on in (("RoPE", cfg.rope), ("no bias", not cfg.bias)) if on]
    lines = [
        f"checkpoint:       {checkpoint_path} ({size_mb:.1f} MB, format version {loaded.checkpoint['format_version']})",
        f"vocab size:       {tokenizer.vocab_size:,}" if tokenizer else "vocab size:       unknown (no tokenizer)",
        f"model vocab size: {cfg.vocab_size:,}",
        f"embedding dim:    {cfg.n_embd}",
        f"layers x heads:   {cfg.n_layer} x {cfg.n_head}",
        f"context:          {cfg.block_size} tokens{''.join(f' ({o})' for o in options)}",
        f"parameters:       {loaded.model.num_parameters():,}",
    ]
    state = loaded.checkpoint.get("state")
    if state and loaded.can_resume:
        best = state.get("best_val_loss", math.inf)
        best_text = f"{best:.4f}" if math.isfinite(best) else "none yet"
        total = f" of {state['total_steps']:,}" if state.get("total_steps") else ""
        lines.append(f"training:         step {state['step']:,}{total}, {state['tokens_seen']:,} tokens seen, "
                     f"best val loss {best_text}")
    else:
        lines.append("training:         no training state (weights only)")
    template = template_from_checkpoint(loaded.checkpoint.get("chat_template"), checkpoint_path)
    lines.append(f"chat template:    {template.name} (trained on instruction records; predict --chat uses it)"
                 if template else "chat template:    none (a model of text)")
    if stored is not None:
        lines.append(f"tokenizer (in the checkpoint): {stored.vocab_size:,} tokens, hash {stored.hash[:16]}")
    if given is not None:
        lines.append(f"vocab file:       {vocab_path}: {given.vocab_size:,} tokens, hash {given.hash[:16]}")

    problems = []
    if stored is not None and given is not None and stored.hash != given.hash:
        problems.append(f"{vocab_path} is not the tokenizer the model was trained with "
                        f"(hash {given.hash[:16]} vs {stored.hash[:16]})")
    elif given is not None and given.vocab_size > cfg.vocab_size:
        problems.append(f"{vocab_path} has {given.vocab_size} tokens but the model's embedding only {cfg.vocab_size}")
    return lines, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a checkpoint (and a vocab file) for use together.")
    parser.add_argument("checkpoint", help="checkpoint written by main.py train (or GPT2.save)")
    parser.add_argument("vocab_file", nargs="?", default=None, help="vocab file to check against the checkpoint")
    args = parser.parse_args(argv)
    try:
        lines, problems = report(args.checkpoint, args.vocab_file)
    except (bpe.UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        print("verdict:          unusable")
        return 1
    print("\n".join(lines))
    if problems:
        print("verdict:          NOT compatible: " + "; ".join(problems))
        return 1
    print("verdict:          compatible")
    return 0


if __name__ == "__main__":
    sys.exit(main())
