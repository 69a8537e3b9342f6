"""A model scored on a text (`main.py eval`): loss, perplexity and bits per byte; a classifier on
labelled texts: accuracy, precision, recall and F1 of each class, and the confusion matrix.

    evaluate_text("held_out.txt", "gpt2_model.pt")   # {"val_loss": ..., "val_ppl": ..., "val_bpb": ..., "scored": ...}
    evaluate_text("test.tsv", "spam.pt")             # {"accuracy": ..., "per_class": [...], "confusion": [[...]], ...}

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
    if loaded.classes is not None:
        return evaluate_classifier_on(files, loaded, batch_size)
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


def evaluate_classifier_on(files: list, loaded, batch_size: int) -> dict:
    """eval of a classifier on labelled texts (read with the columns it was trained with): accuracy,
    each class's precision, recall and F1, and the confusion matrix. Rows whose label the model does
    not know are left out and counted."""
    from .classifier import classify, scores
    from .labelled import read_labelled

    if len(files) != 1:
        raise UserError(f"a classifier is evaluated on one file of labelled texts, not {len(files)} files")
    stored = loaded.checkpoint.get("train_config", {})
    data = read_labelled(files[0], stored.get("text_column"), stored.get("label_column"))
    known = {name: k for k, name in enumerate(loaded.model.names)}
    rows = [i for i, label in enumerate(data.labels) if data.names[label] in known]
    unknown = len(data.texts) - len(rows)
    if not rows:
        raise UserError(f"{files[0]} holds none of the model's classes ({', '.join(loaded.model.names)})")
    truth = [known[data.names[data.labels[i]]] for i in rows]
    found = classify(loaded.model, loaded.tokenizer, [data.texts[i] for i in rows], batch_size)
    predicted = [known[f["label"]] for f in found]
    left_out = dict(data.skipped) | ({"rows of classes the model does not know": unknown} if unknown else {})
    return {**scores(truth, predicted, len(known)), "classes": loaded.model.names, "examples": len(rows),
            "left_out": left_out}


def classification_report(result: dict) -> list[str]:
    """eval's lines for a classifier: accuracy, a table of each class, the confusion matrix."""
    names, width = result["classes"], max(8, *(len(n) for n in result["classes"]))
    lines = [f"accuracy {result['accuracy']:.4f} ({result['accuracy']:.2%}) on {result['examples']:,} examples"]
    lines += [f"left out: {n:,} {why}" for why, n in sorted(result["left_out"].items())]
    lines.append(f"{'class':<{width}}  precision  recall      f1  support")
    for name, c in zip(names, result["per_class"]):
        lines.append(f"{name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7,}")
    lines.append("confusion (rows: true class, columns: predicted): " + ", ".join(names))
    lines += [f"{name:<{width}}  " + " ".join(f"{n:6,}" for n in row) for name, row in zip(names, result["confusion"])]
    return lines


def records_eval_set(files: list, model, tokenizer: bpe.BPE):
    """eval on instruction records: the loss on their responses, each record in its own template."""
    template, conversations = read_records(files)
    examples, cut = encode_examples(conversations, template, tokenizer, model.config.block_size)
    (x, y), num_bytes = instruction_eval_set(examples, tokenizer, end_of_turn_id(tokenizer))
    counted = int((y != IGNORE_INDEX).sum())
    cut_note = f", {cut:,} cut to the context" if cut else ""
    return (x, y), num_bytes, f"{len(conversations):,} {template.name} records ({counted:,} response tokens{cut_note})"
