"""Classifying texts for the server (POST /v1/classify): a classifier's forward passes on a thread of their own.

    texts --encode_texts (the app's thread pool): each cut to the context, its beginning kept--> ids
        --Classifications.submit (429 beyond max_queue requests waiting)--> the worker thread:
          rows of at most max_batch, shortest first, right-padded with the pad token
          --GPT2Classifier--> softmax --> each text's probabilities, in the order given

A classifier needs no generation engine: a request is one batched forward pass (or a few, of at
most max_batch rows), with no cache and no decoding steps. One thread runs every forward pass, as
the engine's does for generation, so requests never compete for the cores; an exception in one
is held by its future and fails that request alone.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..classifier import encode_text, logits_of_ids
from .engine import QueueFull


def encode_texts(tokenizer, texts: list[str], block_size: int) -> list[list[int]]:
    """Each text's ids as a classifier reads them in training (classifier.encode_text)."""
    return [encode_text(tokenizer, text, block_size) for text in texts]


class Classifications:
    """The worker thread of a served classifier, with its queue and its counts."""

    def __init__(self, model, max_batch: int = 16, max_queue: int = 64):
        self.model = model.eval()
        self.names = list(model.names)
        self.block_size = model.config.block_size
        self.max_batch, self.max_queue = max_batch, max_queue
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpt2-classify")
        self._lock = threading.Lock()
        self.waiting = 0  # requests submitted and not finished
        self.texts = 0  # texts classified, and the tokens they held (for /metrics)
        self.tokens = 0

    def submit(self, rows: list[list[int]]) -> Future:
        """Queue one request's texts (token ids); its future gives their probabilities. QueueFull
        when max_queue requests are already waiting."""
        with self._lock:
            if self.waiting >= self.max_queue:
                raise QueueFull(f"the server is busy: {self.waiting} requests are waiting; try again shortly")
            self.waiting += 1
        try:
            future = self._pool.submit(self.probabilities, rows)
        except RuntimeError:  # the pool has been shut down: the server is stopping
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: Future | None) -> None:
        with self._lock:
            self.waiting -= 1

    @torch.inference_mode()
    def probabilities(self, rows: list[list[int]]) -> list[list[float]]:
        """Each row's class probabilities (softmax of the classifier's logits), in the order given."""
        out = logits_of_ids(self.model, rows, self.max_batch).softmax(dim=-1).tolist()
        with self._lock:
            self.texts += len(rows)
            self.tokens += sum(len(r) for r in rows)
        return out

    def stop(self) -> None:
        """Refuse new requests; a forward pass under way finishes on its own (the thread is not waited for)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
