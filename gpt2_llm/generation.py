"""What generation does with the model's logits: check the sampling settings, pick the next token,
and turn the chosen tokens' bytes into text as they come.

The model's side (prefill a prompt into a cache, then decode one step for a batch of rows) is
GPT2.prefill and GPT2.decode_step; GPT2.generate, the command line's predict and the server's
engine put the two together with what is here. Nothing here knows the model.
"""

import codecs
import math

import torch

from basics import UserError


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                   presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                   logit_bias: dict[int, float] | None = None, vocab_size: int | None = None) -> None:  # fmt: skip
    """The one check of generation settings (generate(), the command line's predict and the server use it)."""
    for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
        if not (math.isfinite(value) and -2.0 <= value <= 2.0):
            raise UserError(f"{name} (--{name.replace('_', '-')}) must be between -2 and 2, got {value}")
    for token, bias in (logit_bias or {}).items():
        if not (math.isfinite(bias) and -100.0 <= bias <= 100.0):
            raise UserError(f"logit_bias of token {token} must be between -100 and 100, got {bias}")
        if vocab_size is not None and not 0 <= token < vocab_size:
            raise UserError(f"logit_bias names token {token}, out of range for a vocabulary of {vocab_size}")
    if max_new_tokens < 0:
        raise UserError(f"max_new_tokens (num_tokens) must be 0 or more, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise UserError(f"temperature (--temperature) must be 0 (greedy) or a positive number, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k (--top-k) must be at least 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"top_p (--top-p) must be in (0, 1], got {top_p}")


def penalize(logits: torch.Tensor, counts: torch.Tensor | None, presence_penalty: float, frequency_penalty: float,
             bias: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """OpenAI's penalties and logit bias on logits (B, vocab), before the temperature: a token the row
    has made n times (counts (B, vocab)) loses frequency_penalty x n, and presence_penalty once
    if n > 0 (as vLLM, over the generated tokens only); bias (vocab,) is added as it is."""
    if counts is not None and (presence_penalty or frequency_penalty):
        logits = logits.float() - frequency_penalty * counts - presence_penalty * (counts > 0).float()
    if bias is not None:
        logits = logits.float() + bias
    return logits


def bias_vector(logit_bias: dict[int, float] | None, vocab_size: int, device=None) -> torch.Tensor | None:
    """logit_bias {token id: bias} as a (vocab,) vector, or None for no bias."""
    if not logit_bias:
        return None
    bias = torch.zeros(vocab_size, device=device)
    bias[list(logit_bias)] = torch.tensor([float(v) for v in logit_bias.values()], device=device)
    return bias


def sample_next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                      generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Pick the next token from logits (B, vocab); returns ids (B, 1).

    temperature 0 takes the most likely token; otherwise sample from the top_k most likely, then
    from the smallest set of those whose probability reaches top_p. The logits are shifted so that
    the largest is 0 before they are divided by the temperature, so that a temperature too small
    for the division (1e-40, or one that float32 rounds to 0) cannot overflow: it gives its limit,
    the most likely token (a random one of equal maxima).
    """
    if temperature == 0:
        return logits.max(dim=-1, keepdim=True).indices  # the first of equal maxima, as argmax, but faster on CPU
    logits = logits.float()
    temperature = max(temperature, torch.finfo(logits.dtype).tiny)  # below float32's smallest it would be 0
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature  # <= 0: -inf at worst, never nan
    if top_k is not None and top_k < logits.size(-1):
        values, indices = logits.topk(top_k, dim=-1)  # (B, k), most likely first
    elif top_p is not None and top_p < 1.0:
        values, indices = logits.sort(dim=-1, descending=True)  # (B, vocab)
    else:
        return draw(logits.softmax(dim=-1), generator)
    if top_p is not None and top_p < 1.0:
        probs = values.softmax(dim=-1)
        # Drop a token once the more likely ones already reach top_p; the most likely always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[..., 0] = False  # a top_p that float32 rounds to 0 (5e-324) keeps the most likely, its limit
        values = values.masked_fill(drop, float("-inf"))
    choice = draw(values.softmax(dim=-1), generator)  # (B, 1), a rank
    return indices.gather(-1, choice)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index a row of probs (B, n), drawn with those probabilities: the first whose running sum
    passes a uniform number below the row's sum. torch.multinomial does this job in 0.9 ms a row of
    50,257 on a 2-core Xeon, this in 0.05, where a decode step of a small model takes 4 (BENCHMARKS.md,
    "A server that holds"). Running sums in float64, so that rounding leaves no gap a token could
    fall through; a token of probability 0 is never drawn."""
    cumulative = probs.double().cumsum(dim=-1)
    u = torch.rand(probs.size(0), 1, generator=generator, device=probs.device, dtype=torch.float64)
    index = torch.searchsorted(cumulative, u * cumulative[:, -1:], right=True)
    return index.clamp_(max=probs.size(-1) - 1)


class TextStream:
    """Token bytes in, text out, never half a character and never a stop string.

    The tokenizer is byte-level, so a token may end in the middle of a UTF-8 character: an
    incremental decoder keeps the incomplete bytes until the rest comes (invalid bytes become
    U+FFFD, as bpe.decode does). Text that might be the start of a stop string is held back too,
    until it is known not to be one; when a stop string appears, the text ends before it.

    >>> stream = TextStream(stop=("END",))
    >>> data = "café END".encode()  # "é" is two bytes: data[3:5]
    >>> stream.feed(data[:4]), stream.feed(data[4:7]), stream.feed(data[7:])
    ('caf', 'é ', '')
    >>> stream.stopped
    True
    """

    def __init__(self, stop: tuple[str, ...] = ()):
        self.stop = tuple(s for s in stop if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # decoded text not given out yet
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """The text that is now certain; sets `stopped` when a stop string has appeared."""
        self._pending += self._decoder.decode(data)
        return self._release()

    def finish(self) -> str:
        """The rest, at the end of the sequence (incomplete bytes become U+FFFD)."""
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final: bool = False) -> str:
        found = [i for i in (self._pending.find(s) for s in self.stop) if i >= 0]
        if found:
            out, self._pending, self.stopped = self._pending[: min(found)], "", True
            return out
        keep = 0 if final else self._possible_stop_start()
        out, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
        return out

    def _possible_stop_start(self) -> int:
        """The length of the longest end of the pending text that begins some stop string."""
        text = self._pending
        return max((n for s in self.stop for n in range(min(len(s) - 1, len(text)), 0, -1)
                    if s.startswith(text[-n:])), default=0)  # fmt: skip
