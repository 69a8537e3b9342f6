"""A GPT that classifies texts (issue 31, second step): the language model's head replaced by one
row per class, read at each text's last token.

    ids (B, T), right-padded --GPT2.hidden_states--> (B, T, C) --the last real token of each row--> (B, C)
        --score (classes x C, no bias)--> logits (B, classes)

Causal attention means a token sees only those before it, so the last real token of a text has
read all of it, and the padding after it changes nothing. This is transformers'
GPT2ForSequenceClassification (its `score` layer, pooled at the last token that is not the pad
token), so the two give the same logits for the same weights (a test). Not yet trained or served
by the command line: that is the next step of issue 31.
"""

from __future__ import annotations

import torch
from torch import nn

from .gpt2 import GPT2


class GPT2Classifier(nn.Module):
    def __init__(self, gpt: GPT2, classes: int):
        super().__init__()
        if classes < 2:
            raise ValueError(f"a classifier needs two or more classes, got {classes}")
        self.gpt = gpt
        self.score = nn.Linear(gpt.config.n_embd, classes, bias=False)
        nn.init.normal_(self.score.weight, std=0.02)  # as the language model's layers are drawn

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T), each row's text followed by padding to T; lengths (B,) the real tokens of each
        row (default: all T) -> logits (B, classes) at each row's last real token."""
        hidden = self.gpt.hidden_states(ids)  # (B, T, C)
        last = hidden[:, -1] if lengths is None else hidden[torch.arange(ids.size(0), device=ids.device), lengths - 1]
        return self.score(last)
