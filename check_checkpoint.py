"""Diagnostics for a model and a vocab file: sizes, config, parameters, training state, and
whether they belong together.

    python check_checkpoint.py gpt2_model.pt [vocab.txt]     # our checkpoint
    python check_checkpoint.py exported/ [vocab.txt]         # a transformers folder
    python check_checkpoint.py gpt2                          # a Hugging Face hub name

The model is read through the toolkit's one loader (gpt2_llm/loading.py), exactly as
`main.py predict` would read it. Exit code: 0 usable and compatible; 1 not: a model that cannot be
read or used (the reason on one `error:` line), or a vocab file that does not fit the model (the
verdict says why); 2 a malformed command line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import bpe


def report(model: str, vocab_path: str | None) -> tuple[list[str], list[str]]:
    """Lines of the report, and the reasons the pair is incompatible (empty: compatible).
    Raises a bpe.UserError (CheckpointError, TokenizerError) when a file cannot be used."""
    from gpt2_llm.loading import load, vocab_problem

    loaded = load(model)
    cfg, stored = loaded.model.config, loaded.tokenizer
    given = bpe.BPE.load(vocab_path) if vocab_path is not None else None
    tokenizer = given or stored
    departures = cfg.gpt2_departures()  # the architecture options taken, e.g. ["RMSNorm", "swiglu MLP"]
    lines = [
        f"{'checkpoint:' if loaded.source == 'checkpoint' else 'model:':<18}{describe_source(loaded)}",
        f"vocab size:       {tokenizer.vocab_size:,}" if tokenizer else "vocab size:       unknown (no tokenizer)",
        f"model vocab size: {cfg.vocab_size:,}",
        f"embedding dim:    {cfg.n_embd}",
        f"layers x heads:   {cfg.n_layer} x {cfg.n_head}",
        f"context:          {cfg.block_size} tokens",
        f"architecture:     {', '.join(departures) if departures else 'GPT-2'} (MLP width {cfg.mlp_size})",
        f"parameters:       {loaded.model.num_parameters():,}",
    ]
    state = loaded.checkpoint.get("state")
    if state and loaded.can_resume:
        best = state.get("best_val_loss", math.inf)
        best_text = f"{best:.4f}" if math.isfinite(best) else "none yet"
        total = f" of {state['total_steps']:,}" if state.get("total_steps") else ""
        lines.append(f"training:         step {state['step']:,}{total}, {state['tokens_seen']:,} tokens seen, "
                     f"best val loss {best_text}")
        lines.append(f"optimizer:        {optimizer_text(loaded.checkpoint['train_config'])}")
        if "training_weights" in loaded.checkpoint:
            decay = loaded.checkpoint["train_config"].get("ema", 0)
            lines.append(f"weights:          a moving average of the training weights (--ema {decay:g}); "
                         f"a continued run goes on from those, stored beside it")
    elif loaded.source == "checkpoint":
        lines.append("training:         no training state (weights only)")
    else:
        lines.append("training:         no training state (a transformers folder holds weights only)")
    lines.append(f"chat template:    {chat_template_text(loaded.chat_template, model)}")
    if loaded.classes is not None:
        shown = ", ".join(loaded.classes[:10]) + (", ..." if len(loaded.classes) > 10 else "")
        lines.append(f"classifier:       {len(loaded.classes)} classes ({shown}), read at each text's last token")
    if "lora" in loaded.checkpoint:
        from gpt2_llm.lora import adapted_parts

        lora = loaded.checkpoint["lora"]
        settings = lora["settings"]
        lines.append(f"LoRA adapters:    rank {settings['rank']} (alpha {settings['alpha']:g}) on "
                     f"{adapted_parts(loaded.model)}, on the base {lora['name']} (weights' hash {lora['hash'][:16]}, "
                     f"checked)")
    if stored is not None:
        where = "the checkpoint" if loaded.source == "checkpoint" else loaded.checkpoint["tokenizer_file"]
        lines.append(f"tokenizer (in {where}): {stored.vocab_size:,} tokens, hash {stored.hash[:16]}")
    if given is not None:
        lines.append(f"vocab file:       {vocab_path}: {given.vocab_size:,} tokens, hash {given.hash[:16]}")

    problem = vocab_problem(given, vocab_path, cfg, stored, model) if given is not None else None
    return lines, [problem] if problem else []


def chat_template_text(stored: dict | None, model: str) -> str:
    """The model's chat template: one of ours (instruct.py; an unknown name is an error), a
    folder's own, or none."""
    from gpt2_llm.instruct import template_from_checkpoint

    if stored is None:
        return "none (a model of text)"
    if stored["name"] is None:
        return "its own (a Jinja template from its folder, which predict --chat cannot render)"
    template = template_from_checkpoint(stored, model)
    return f"{template.name} (trained on instruction records; predict --chat uses it)"


def describe_source(loaded) -> str:
    """Where the model came from: the checkpoint file, or the transformers folder and its weights."""
    if loaded.source == "checkpoint":
        size_mb = os.path.getsize(loaded.path) / 1e6
        return f"{loaded.path} ({size_mb:.1f} MB, format version {loaded.checkpoint['format_version']})"
    from gpt2_llm.export import hf_class_names

    weights = loaded.path / loaded.checkpoint["weights_file"]
    hub = f" (Hugging Face hub name {loaded.name}, cached)" if loaded.source == "hub" else ""
    kind = hf_class_names(loaded.model)[0]
    return f"{loaded.path}: a transformers folder{hub}, {kind}, {weights.name} {weights.stat().st_size / 1e6:.1f} MB"


def optimizer_text(train_config: dict) -> str:
    """How the stored run is optimised: AdamW, or Muon for the hidden matrices with AdamW for the rest."""
    from gpt2_llm.config import MUON_LR

    adamw = f"AdamW (lr {train_config.get('lr', 0):g})"
    if train_config.get("optimizer", "adamw") != "muon":
        return adamw
    return f"Muon (lr {train_config.get('muon_lr') or MUON_LR:g}) for the hidden matrices, {adamw} for the rest"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a model (and a vocab file) for use together.")
    parser.add_argument("checkpoint", help="a checkpoint written by main.py train (or GPT2.save), a transformers "
                                           "model folder, or a Hugging Face hub name")
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
