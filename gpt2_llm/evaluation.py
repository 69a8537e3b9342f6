"""A model scored on a text (`main.py eval`): loss, perplexity and bits per byte.

    evaluate_text("held_out.txt", "gpt2_model.pt")   # {"val_loss": ..., "val_ppl": ..., "val_bpb": ..., "scored": ...}

A text is scored on windows of the model's context (data.validation_windows); instruction records
on their responses alone, each record in its template. The sums are trainer.evaluate's, the same
figures a training run logs for its validation part.
"""

from __future__ import annotations

import bpe
from basics import UserError

from .config import DEFAULT_MODEL
from .data import (encode_examples, instruction_eval_set, is_instruction_input, load_tokens, read_records,
                   validation_windows)
from .hardware import pick_dtype
from .instruct import IGNORE_INDEX, end_of_turn_id
from .loading import load_with_tokenizer
from .trainer import evaluate
from .vocab import text_inputs


def evaluate_text(text: str, model: str = DEFAULT_MODEL, *, batch_size: int = 16, device: str = "auto",
                  dtype: str = "auto") -> dict:  # fmt: skip
    """The model's loss, perplexity and bits per byte on `text` (a file, a folder or a glob; text or
    instruction records), and what was scored ("scored": "12,345 tokens", or the records counted)."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    files = text_inputs(text, "evaluate on")
    loaded = load_with_tokenizer(model, device, None, "give its vocab file")
    net, tokenizer = loaded.model, loaded.tokenizer
    if is_instruction_input(files):
        windows, num_bytes, scored = records_eval_set(files, net, tokenizer)
    else:
        tokens = load_tokens(files, tokenizer)
        if len(tokens) < 2:
            raise UserError(f"{text} is too short to evaluate: it encodes to {len(tokens)} token")
        windows, num_bytes = validation_windows(tokens, min(net.config.block_size, len(tokens) - 1), tokenizer)
        scored = f"{windows[:, 1:].numel():,} tokens"
    result = evaluate(net, windows, num_bytes, batch_size, pick_dtype(dtype, next(net.parameters()).device))
    return {**result, "scored": scored}


def records_eval_set(files: list, model, tokenizer: bpe.BPE):
    """eval on instruction records: the loss on their responses, each record in its own template."""
    template, conversations = read_records(files)
    examples, cut = encode_examples(conversations, template, tokenizer, model.config.block_size)
    (x, y), num_bytes = instruction_eval_set(examples, tokenizer, end_of_turn_id(tokenizer))
    counted = int((y != IGNORE_INDEX).sum())
    cut_note = f", {cut:,} cut to the context" if cut else ""
    return (x, y), num_bytes, f"{len(conversations):,} {template.name} records ({counted:,} response tokens{cut_note})"
