"""A GPT that classifies texts (issue 31): the language model's head replaced by one row per class,
read at each text's last token.

    ids (B, T), right-padded with pad_id --GPT2.hidden_states--> (B, T, C)
        --the last token that is not pad_id, per row--> (B, C) --score (classes x C, no bias)--> logits (B, classes)

Causal attention means a token sees only those before it, so the last real token of a text has
read all of it, and the padding after it changes nothing. This is transformers'
GPT2ForSequenceClassification (its `score` layer, pooled at the rightmost token that is not the
pad token), so the two give the same logits for the same weights (a test). Texts are encoded
without special tokens, so a text's own tokens are never the pad token (<|endoftext|>).

In a checkpoint the language model stays under "model" (as any checkpoint holds it), and the
classifier's own part is "classifier": {"names": class names in label order, "pad_id", "score"}.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from basics import UserError

from .data import DataError, InstructionBatches
from .gpt2 import GPT2
from .hardware import autocast
from .instruct import end_of_turn_id
from .labelled import Labelled


class GPT2Classifier(nn.Module):
    def __init__(self, gpt: GPT2, names: list[str] | int, pad_id: int = 0):
        super().__init__()
        names = [str(i) for i in range(names)] if isinstance(names, int) else list(names)
        if len(names) < 2:
            raise ValueError(f"a classifier needs two or more classes, got {len(names)}")
        self.gpt, self.names, self.pad_id = gpt, names, pad_id
        if not gpt.config.tie_embeddings:
            gpt.lm_head.weight.requires_grad_(False)  # the language model's head: kept, not used
        self.score = nn.Linear(gpt.config.n_embd, len(names), bias=False)
        nn.init.normal_(self.score.weight, std=0.02)  # as the language model's layers are drawn

    @property
    def config(self):
        return self.gpt.config

    def num_parameters(self, trained: bool = False) -> int:
        """The language model's parameters without its head (a classifier does not use it), plus the
        score; trained: only those that training changes (see GPT2.num_parameters)."""
        c, head = self.config, self.gpt.lm_head.weight
        unused_head = c.vocab_size * c.n_embd if not c.tie_embeddings and (head.requires_grad or not trained) else 0
        score = self.score.weight.numel() if self.score.weight.requires_grad or not trained else 0
        return self.gpt.num_parameters(trained) - unused_head + score

    def flops_per_token(self) -> int:
        """The language model's FLOPs per token less its head's (the score reads one position a text)."""
        return self.gpt.flops_per_token() - 6 * self.config.vocab_size * self.config.n_embd

    def last_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """(B,) each row's rightmost token that is not the pad token (0 for a row of padding alone)."""
        positions = torch.arange(ids.size(1), device=ids.device)
        return (positions * (ids != self.pad_id)).argmax(dim=1)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None, *, label_smoothing: float = 0.0,
                recompute: bool = False):  # fmt: skip
        """ids (B, T) right-padded with pad_id -> (logits (B, classes), mean cross-entropy against
        the labels targets (B,), or None)."""
        hidden = self.gpt.hidden_states(ids, recompute)  # (B, T, C)
        last = hidden[torch.arange(ids.size(0), device=ids.device), self.last_positions(ids)]
        logits = self.score(last)
        loss = None
        if targets is not None:
            loss = nn.functional.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        return logits, loss

    def train_last_blocks(self, blocks: int | None) -> None:
        """Train only the last `blocks` blocks, the final norm and the score (None: everything)."""
        if blocks is None:
            return
        layers = self.gpt.decoder.h
        if not 0 <= blocks <= len(layers):
            raise UserError(f"--train-blocks must be between 0 and the model's {len(layers)} blocks, got {blocks}")
        for p in self.gpt.parameters():
            p.requires_grad_(False)
        for module in (*layers[len(layers) - blocks :], self.gpt.ln_f):
            for p in module.parameters():
                p.requires_grad_(True)

    # ---- the checkpoint's parts ----------------------------------------------------------------

    def checkpoint_entries(self, state: dict) -> dict:
        """A state dict of this module (or of its moving average) as a checkpoint's "model" and "classifier"."""
        gpt = {k.removeprefix("gpt."): v for k, v in state.items() if k.startswith("gpt.")}
        return {"model": gpt, "classifier": {"names": self.names, "pad_id": self.pad_id, "score": state["score.weight"]}}

    @classmethod
    def from_checkpoint(cls, gpt: GPT2, stored, where: str) -> GPT2Classifier:
        try:
            names, pad_id, score = list(stored["names"]), int(stored["pad_id"]), stored["score"]
            model = cls(gpt, [str(n) for n in names], pad_id)
            model.score.weight.data.copy_(score)
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise UserError(f"{where}: its classifier part is damaged (names, pad_id and a score of classes x "
                            f"{gpt.config.n_embd})") from None
        return model


def pad_id_of(tokenizer) -> int:
    """The padding token: <|endoftext|>, which no text encoded without special tokens holds."""
    return end_of_turn_id(tokenizer, role="pads a classifier's texts")


class Encoded:
    """Labelled texts as token ids (each cut to the context, its beginning kept) and labels; the
    examples of LabelledBatches (InstructionBatches' interface: lengths, __len__, batch)."""

    def __init__(self, data: Labelled, tokenizer, block_size: int):
        ids = [tokenizer.encode_ordinary(text) for text in data.texts]
        self.cut = sum(len(x) > block_size for x in ids)
        self.ids = [x[:block_size] for x in ids]  # as encode_text
        self.labels = np.asarray(data.labels, dtype=np.int64)
        self.lengths = np.asarray([len(x) for x in self.ids])

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (b, L) right-padded with pad_id, L the longest; labels (b,))."""
        x = np.full((len(indices), self.lengths[indices].max()), pad_id, dtype=np.int64)
        for row, k in enumerate(indices):
            x[row, : self.lengths[k]] = self.ids[k]
        return torch.from_numpy(x), torch.from_numpy(self.labels[indices])


class LabelledBatches(InstructionBatches):
    """Endless batches of labelled examples, each epoch in a new order (see InstructionBatches)."""

    KIND = "labelled"


@torch.no_grad()
def logits_of_ids(model: GPT2Classifier, rows: list[list[int]], batch_size: int = 16,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:  # fmt: skip
    """(len(rows), classes) float32 logits of texts given as token ids, in the order given: batches
    of rows of similar length (shortest first, so that little is padding), right-padded with the
    pad token, on the model's device (under autocast when dtype is not float32). Evaluation,
    predict, eval and the server all classify through it."""
    device = next(model.parameters()).device
    out = torch.empty(len(rows), len(model.names))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        part = order[start : start + batch_size]
        x = torch.full((len(part), max(len(rows[i]) for i in part)), model.pad_id, dtype=torch.long)
        for row, i in enumerate(part):
            x[row, : len(rows[i])] = torch.tensor(rows[i], dtype=torch.long)
        with autocast(device, dtype):
            out[part] = model(x.to(device))[0].float().cpu()
    return out


def evaluate_classifier(model: GPT2Classifier, examples: Encoded, batch_size: int = 16,
                        dtype: torch.dtype = torch.float32, dist=None) -> dict:  # fmt: skip
    """Mean loss and accuracy over labelled examples; under torchrun each rank takes its share and
    the sums are added up."""
    ranks, rank = (1, 0) if dist is None else (dist.world_size, dist.rank)
    mine = range(rank, len(examples), ranks)
    was_training = model.training
    model.eval()
    logits = logits_of_ids(model, [examples.ids[i] for i in mine], batch_size, dtype)
    model.train(was_training)
    labels = torch.from_numpy(examples.labels[list(mine)])
    total = nn.functional.cross_entropy(logits, labels, reduction="sum").item()
    right, count = int((logits.argmax(-1) == labels).sum()), len(labels)
    if dist is not None:
        total, right, count = dist.sum([total, right, count])
    return {"val_loss": total / max(1, count), "val_accuracy": right / max(1, count)}


def check_names(model: GPT2Classifier, names: list[str], where: str) -> None:
    if list(model.names) != list(names):
        raise DataError(f"{where} has the classes {', '.join(names)}; the model was trained on "
                        f"{', '.join(model.names)}")


# ---- using a classifier: predict, eval and the server ----------------------------------------------


def encode_text(tokenizer, text: str, block_size: int) -> list[int]:
    """A text's ids as a classifier reads them: without special tokens, cut to the context, its beginning kept."""
    return tokenizer.encode_ordinary(text)[:block_size]


def classify(model: GPT2Classifier, tokenizer, texts: list[str], batch_size: int = 16) -> list[dict]:
    """For each text its label (the most probable class) and every class's probability."""
    rows = [encode_text(tokenizer, text, model.config.block_size) for text in texts]
    probabilities = logits_of_ids(model, rows, batch_size).softmax(-1)
    return [{"label": model.names[int(p.argmax())], "probabilities": dict(zip(model.names, p.tolist()))}
            for p in probabilities]


def scores(truth: list[int], predicted: list[int], classes: int) -> dict:
    """Accuracy, the confusion matrix (rows: the true class, columns: the predicted) and each class's
    precision, recall and F1 (0 where undefined, as scikit-learn's zero_division=0)."""
    confusion = [[0] * classes for _ in range(classes)]
    for t, p in zip(truth, predicted):
        confusion[t][p] += 1
    per_class = []
    for k in range(classes):
        hits = confusion[k][k]
        said = sum(row[k] for row in confusion)
        real = sum(confusion[k])
        precision, recall = hits / said if said else 0.0, hits / real if real else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"precision": precision, "recall": recall, "f1": f1, "support": real})
    return {"accuracy": sum(confusion[k][k] for k in range(classes)) / max(1, len(truth)),
            "confusion": confusion, "per_class": per_class}
