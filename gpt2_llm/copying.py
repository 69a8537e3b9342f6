"""A continuous cache (Grave, Joulin and Usunier, 2016): predict a token that followed a similar
moment earlier in the context.

A model that has learned a text's names by heart has no reason to learn to copy one from its
context, and then a name it never saw costs as much at its tenth occurrence as at its first. The
cache adds copying without new weights. Each earlier position i of the context is a memory: its
final hidden state h_i (what the head reads) as the key, and the token that came after it,
x_{i+1}, as the value. At position t the model's distribution is mixed with one over those
values, weighted by how much each key resembles h_t:

    p_copy(w) = sum over i < t with x_{i+1} = w of  softmax_i(sharpness * cos(h_t, h_i))
    p(w)      = (1 - weight) * softmax(logits)(w) + weight * p_copy(w)

(The first position has no memory and keeps the model's distribution.) Everything here is read
from the context, so it is a language model like any other: the probabilities sum to one and
nothing after t is seen. It acts when the model predicts (evaluation, generation, serving), not
in the training loss, where the text's own names are known and copying would not be learned.
The cosine makes `sharpness` independent of the hidden states' scale.
"""

import torch
import torch.nn.functional as F


def mix_copies(logits: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               weight: float, sharpness: float, causal: bool) -> torch.Tensor:  # fmt: skip
    """Log-probabilities (B, T, V) of the model's distribution mixed with the cache's.

    logits (B, T, V): the model's, for T query positions; queries (B, T, C) their final hidden
    states; keys (B, S, C) the earlier positions' hidden states; values (B, S) the token after each.
    causal: the queries are the positions of the keys plus one more (S = T - 1, key i is position
    i), and query t sees keys i < t; otherwise every query sees every key (one new position after
    S remembered ones, as in generation).
    """
    with torch.autocast(logits.device.type, enabled=False):  # in float32: sums of small probabilities
        return _mix(logits.float(), queries.float(), keys.float(), values, weight, sharpness, causal)


def _mix(logits, queries, keys, values, weight, sharpness, causal):
    B, T, V = logits.shape
    log_model = F.log_softmax(logits, dim=-1)
    S = keys.size(1)
    if S == 0 or weight == 0.0:
        return log_model
    q = F.normalize(queries, dim=-1)
    k = F.normalize(keys, dim=-1)
    scores = sharpness * (q @ k.transpose(1, 2))  # (B, T, S): cosines, sharpened
    seen = torch.ones(T, S, dtype=torch.bool, device=logits.device)
    if causal:
        seen = seen.tril(-1)  # query t sees key i when i < t (row 0 sees none)
    scores = scores.masked_fill(~seen, float("-inf"))
    has_memory = seen.any(dim=-1)  # (T,): False only for a causal first row
    attention = torch.softmax(scores, dim=-1).masked_fill(~has_memory[:, None], 0.0)  # (B, T, S)
    p_copy = torch.zeros_like(log_model).scatter_add_(-1, values[:, None, :].expand(B, T, S), attention)
    # log((1 - w) p_model + w p_copy), in logs: the model's log-probabilities can be far below what
    # float32 holds as probabilities. p_copy is 0 for tokens the context never had; the floor (far
    # below anything that adds to a probability) keeps a backward pass through the log finite.
    w = torch.where(has_memory, weight, 0.0)[:, None]  # (T, 1): the first row keeps the model's
    return torch.logaddexp(log_model + torch.log1p(-w), p_copy.clamp_min(1e-30).log() + w.log())
