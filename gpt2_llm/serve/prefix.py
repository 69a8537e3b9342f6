"""Reuse of a shared prompt beginning: keys and values of earlier sequences, kept in an LRU bounded in bytes.

A chat sends its whole history with every turn, and many requests share a system prompt. When a
sequence leaves the batch, the engine keeps its cache row's keys and values (prompt and answer, as
far as they were read) under their token ids. A new prompt looks for the entry that shares the
longest beginning with it, copies those positions into its row (KVCache.load) and reads only the
rest (GPT2.prefill with `start`). The keys of a position depend only on the tokens up to it, so
the result is the same computation; its rounding may differ in the last bits, as any change of
the prompt's split into matrix products does.

Bounded: entries are dropped, least recently used first, until their tensors fit `max_bytes`.
"""

from __future__ import annotations

import collections

import torch

MIN_REUSE = 16  # tokens: a shorter shared beginning is read again (copying it costs about as much)


class PrefixCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: collections.OrderedDict[tuple[int, ...], list] = collections.OrderedDict()  # least recent first
        self.hits = 0
        self.reused_tokens = 0

    def longest(self, prompt: list[int]) -> tuple[int, list | None]:
        """(n, keys and values of the prompt's first n tokens) for the entry sharing the longest
        beginning with it, at most len(prompt) - 1 (the last token is read to get the logits);
        (0, None) when no entry shares MIN_REUSE tokens."""
        best, best_key = 0, None
        limit = len(prompt) - 1
        for key in self.entries:
            n = shared_length(key, prompt, limit)
            if n > best:
                best, best_key = n, key
        if best < MIN_REUSE:
            return 0, None
        self.entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best
        return best, [(k[:, :best], v[:, :best]) for k, v in self.entries[best_key]]

    def add(self, tokens: list[int], keys_values: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep a copy of these positions' keys and values (each (nkv, len(tokens), hs)) under tokens.
        Entries that are a beginning of this one go: this one serves their prompts too."""
        if len(tokens) < MIN_REUSE:
            return
        size = sum(k.numel() * k.element_size() * 2 for k, _ in keys_values)
        if size > self.max_bytes:
            return
        key = tuple(tokens)
        for other in [o for o in self.entries if len(o) <= len(key) and key[: len(o)] == o]:
            self._drop(other)
        self.entries[key] = [(k.clone(), v.clone()) for k, v in keys_values]
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def _drop(self, key: tuple[int, ...]) -> None:
        self.bytes -= sum(k.numel() * k.element_size() * 2 for k, _ in self.entries.pop(key))


def shared_length(a: tuple[int, ...], b: list[int], limit: int) -> int:
    """How many first tokens a and b share, at most `limit`."""
    n = min(len(a), len(b), limit)
    if a[:n] == tuple(b[:n]):
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] holds, a[:hi] == b[:hi] does not: halve the gap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == tuple(b[:mid]):
            lo = mid
        else:
            hi = mid
    return lo
