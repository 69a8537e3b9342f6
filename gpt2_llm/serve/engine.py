"""The generation engine: many requests decoded together, one batched forward step at a time.

    HTTP handlers --submit--> waiting queue (bounded) --admit--> active rows --step--> events per sequence
                                                       (prefill)   (one batched forward for all rows)

One worker thread owns the model and one KVCache (model.new_cache) with a row per batch slot.
Each turn of its loop it:

    1. admits waiting sequences while the batch has room: model.prefill reads each prompt alone
       into a free row of the cache, and the sequence's first token is sampled;
    2. decodes one token for every active row with ONE model.decode_step: the rows' last tokens
       go in together, each at its own position, and each row attends to its own cached keys;
    3. samples each row's next token with its own settings and its own seeded generator, turns the
       token bytes into text (generation.TextStream: whole UTF-8 characters only, stop strings
       cut), and hands the new text to the sequence's `on_event` callback (the web app forwards it
       to its client);
    4. retires finished rows: an end token, a stop string, max_tokens, a full context, a cancel
       (the client hung up) or the time limit. The last row moves into the freed one
       (cache.move), so the active rows are always rows 0 .. B-1 of the cache, as decode_step
       takes them.

This is continuous batching: a request joins at the next step and leaves when done; nobody waits
for the slowest sequence of a batch.

Faults. An exception while admitting or sampling a sequence fails that sequence alone (its
last event has finish_reason "error"; the traceback goes to the log once). One while decoding the
batch's step is not yet anyone's: the step is taken again row by row (a step that raised leaves
the cache as it was), and only the rows that fail alone fail. Anything else stops the engine:
every sequence gets an "error" event, `failure` holds the exception, and on_failure is told (the
server then answers /health with 503 and exits non-zero, for a supervisor to restart it).

Rows computed. By default a step multiplies the active rows only, so a lone client does not pay
for the whole batch. A CPU's BLAS picks its kernels by the number of rows, and kernels round
differently, so a greedy sequence's text may then depend on how many others share its steps.
With batch_invariant (--batch-invariant) it does not, bit for bit:
    - every step multiplies the same number of rows, the batch's capacity rounded up to a multiple
      of ROW_BLOCK (decode_step's min_rows, whose docstring says why a fixed row count is
      needed); the price is paid by a step with few active rows: it multiplies all of them;
    - decode_step computes attention row by row, each row over exactly its own cached keys;
    - sampling draws from each sequence's own torch.Generator, seeded from the request's `seed`.
test_engine.py checks it (every row of batches of 1 to 9, a sequence alone and beside three
others, and against GPT2.generate).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable

import torch

from basics import UserError
from bpe import BPE

from ..generation import TextStream, bias_vector, check_sampling, penalize, sample_next_token
from ..gpt2 import GPT2
from .prefix import PrefixCache

ROW_BLOCK = 4  # with batch_invariant, a step's products see a fixed multiple of this many rows (see above)
log = logging.getLogger("gpt2_llm.serve")


class QueueFull(Exception):
    """The waiting queue has no room: the server answers 429 with Retry-After."""


class EngineFailed(Exception):
    """The engine has stopped on an error it cannot contain: the server answers 503."""


# ---- what a request asks for, and what it gets back -------------------------------------------


@dataclasses.dataclass
class SamplingParams:
    """How one sequence is generated (OpenAI's fields; checked by `check`)."""

    max_tokens: int = 16  # 0: none (the prompt's log-probabilities alone, with prompt_logprobs)
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None  # None: a fresh random seed
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first one found
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None  # each made token's log-probability, with this many most likely beside it
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (completions' echo)

    def check(self, vocab_size: int | None = None) -> None:
        check_sampling(self.max_tokens, self.temperature, self.top_k, self.top_p, self.presence_penalty,
                       self.frequency_penalty, self.logit_bias, vocab_size)  # fmt: skip


@dataclasses.dataclass
class Event:
    """What a sequence made in one step: new text (possibly "" while a character or a possible stop
    string is held back), how many tokens so far, and why it ended (None while it goes on)."""

    text: str
    tokens: int
    finish_reason: str | None = None  # "stop" (end token or stop string) | "length" (a limit) | "cancelled" | "error"
    error: str | None = None  # with "error": what went wrong, in one line
    logprobs: list[TokenLogprob] = dataclasses.field(default_factory=list)  # of the tokens made in this step


@dataclasses.dataclass
class TokenLogprob:
    """A token's log-probability under the model (its log-softmax, before temperature, penalties and
    bias, as vLLM reports it), and the most likely tokens at its position: [(id, logprob)]."""

    token: int
    logprob: float | None  # None: the prompt's first token, which nothing predicts
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """logits (T, vocab) at the positions that predict tokens (T,): their TokenLogprobs."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logits.device).unsqueeze(1))[:, 0].tolist()
    best = logprobs.topk(top, dim=-1) if top else None
    return [TokenLogprob(token, lp, list(zip(best.indices[i].tolist(), best.values[i].tolist())) if top else [])
            for i, (token, lp) in enumerate(zip(tokens, chosen))]  # fmt: skip


class Sequence:
    """One generation: a prompt, its settings, and where its events go.

    on_event(event) is called from the worker thread, once per step while the sequence is active
    and once more with its finish_reason; it must not block (the app hands it to its event loop).
    """

    def __init__(self, prompt: list[int], params: SamplingParams, on_event: Callable[[Event], None],
                 stop_ids: set[int] = frozenset()):  # fmt: skip
        self.prompt = list(prompt)
        self.params = params
        self.on_event = on_event
        self.stop_ids = set(stop_ids)  # ids that end the sequence (special tokens); never part of the text
        self.created = time.monotonic()
        self.deadline: float | None = None  # set by Engine.submit from --request-timeout
        self.tokens: list[int] = []  # the generated ids, end token included
        self.text = TextStream(params.stop)
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)  # sampling runs on the CPU
        self.cancelled = False  # set from any thread (a client hung up); the worker ends it at its next step
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None
        self.counts: torch.Tensor | None = None  # tokens made so far, per id (when a penalty needs them)
        self.bias: torch.Tensor | None = None  # logit_bias as a vector
        self.prompt_logprobs: list[TokenLogprob] | None = None  # with params.prompt_logprobs, set at admission

    def cancel(self) -> None:
        self.cancelled = True


# ---- the engine ----------------------------------------------------------------------------------


class Engine:
    """The worker thread and its queue (see the module's docstring)."""

    def __init__(self, model: GPT2, tokenizer: BPE, max_batch: int = 16, max_queue: int = 64,
                 request_timeout: float | None = None, batch_invariant: bool = False, prefix_cache_mb: float = 0,
                 on_failure: Callable[[BaseException], None] | None = None):  # fmt: skip
        if max_batch < 1:
            raise UserError(f"--max-batch must be at least 1, got {max_batch}")
        if max_queue < 1:
            raise UserError(f"--max-queue must be at least 1, got {max_queue}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch, self.max_queue, self.request_timeout = max_batch, max_queue, request_timeout
        self.block_size = model.config.block_size
        self.device = next(model.parameters()).device
        self.cache = model.new_cache(max_batch)  # row r holds active[r]
        # The rows every decode step multiplies: with batch_invariant all of them, rounded up to a
        # multiple of ROW_BLOCK; else the active ones.
        self.step_rows = -(-max_batch // ROW_BLOCK) * ROW_BLOCK if batch_invariant else None
        self.on_failure = on_failure
        self.prefix = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None  # see prefix.py
        self.failure: BaseException | None = None  # why the worker stopped, when it could not go on
        self.active: list[Sequence] = []  # row r of the cache is active[r]
        self.waiting: collections.deque[Sequence] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = Stats()

    # ---- what the app calls (any thread) --------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpt2-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the worker: sequences still active or waiting end as "cancelled"."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, sequences: list[Sequence]) -> None:
        """Queue sequences (all of one request, so all or none); QueueFull when there is no room."""
        for seq in sequences:
            seq.params.check(self.model.config.vocab_size)
            if not seq.prompt:
                raise UserError("the prompt is empty: give at least one token")
            if len(seq.prompt) + seq.params.max_tokens > self.block_size:
                raise UserError(f"the prompt ({len(seq.prompt)} tokens) and max_tokens ({seq.params.max_tokens}) "
                                f"do not fit the context of {self.block_size} tokens")
        with self._wake:
            if self.failure is not None:
                raise EngineFailed(f"the engine has stopped on an error: {one_line(self.failure)}")
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) + len(sequences) > self.max_queue:
                raise QueueFull(f"the queue is full ({len(self.waiting)} sequences waiting, --max-queue "
                                f"{self.max_queue}); try again shortly")
            for seq in sequences:
                seq.deadline = None if self.request_timeout is None else seq.created + self.request_timeout
            self.waiting.extend(sequences)
            self._wake.notify()

    @property
    def queue_length(self) -> int:
        return len(self.waiting)

    @property
    def active_count(self) -> int:
        return len(self.active)

    # ---- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._wake:
                        while not self._stopping and not self.waiting and not self.active:
                            self._wake.wait()
                        if self._stopping:
                            break
                    self._admit()
                    if self.active:
                        self._step()
        except BaseException as e:  # the worker cannot go on: tell everyone, then the server
            log.exception("the engine stopped")
            with self._wake:
                self.failure = e
            for seq in [*self.active, *self.waiting]:
                self._fail(seq, f"the engine has stopped on an error: {one_line(e)}")
            if self.on_failure is not None:
                self.on_failure(e)
        for seq in [*self.active, *self.waiting]:
            if seq.finish_reason is None:
                self._emit(seq, Event("", len(seq.tokens), "cancelled"))
        self.active.clear()
        self.waiting.clear()

    def _admit(self) -> None:
        """Prefill waiting sequences into free rows while the batch has room."""
        while len(self.active) < self.max_batch:
            with self._wake:
                if not self.waiting:
                    return
                seq = self.waiting.popleft()
            if seq.cancelled or self._out_of_time(seq):
                self._finish(seq, "cancelled" if seq.cancelled else "length")
                continue
            row = len(self.active)
            self.active.append(seq)
            try:
                ids = torch.tensor([seq.prompt], dtype=torch.long, device=self.device)
                scored = seq.params.prompt_logprobs is not None  # needs every position: nothing reused
                reused, keys_values = self.prefix.longest(seq.prompt) if self.prefix and not scored else (0, None)
                if keys_values is not None:  # the prompt's beginning as an earlier sequence left it
                    self.cache.load(row, keys_values)
                logits = self.model.prefill(ids[:, reused:], self.cache, rows=[row], start=reused,
                                            every_position=scored)[0]  # (vocab,), or (T, vocab) when scored
                self.stats.prompt_tokens += len(seq.prompt)
                self._start(seq, logits if scored else None)
                logits = logits[-1] if scored else logits
                finished = self._finish(seq, "length") if seq.params.max_tokens == 0 else self._take_token(seq, logits)
            except Exception as e:  # noqa: BLE001 -- this request's fault: it ends, the others go on
                finished = self._failed(seq, e)
            if finished:
                self._retire([row])

    def _step(self) -> None:
        """One token for every active row: one decode step, then sampling and retiring. A step that
        raises is taken again row by row: only the rows that fail alone fail."""
        last = torch.tensor([seq.tokens[-1] for seq in self.active], device=self.device)
        try:
            logits = self.model.decode_step(last, self.cache, min_rows=self.step_rows)  # (B, vocab)
        except Exception:  # noqa: BLE001 -- whose fault is not known yet
            logits = None
        self.stats.steps += 1
        done = []
        for row, seq in enumerate(self.active):
            try:
                if logits is None:  # this row's step alone
                    row_logits = self.model.decode_step(last[row : row + 1], self.cache, self.step_rows, rows=[row])[0]
                finished = self._take_token(seq, logits[row] if logits is not None else row_logits)
            except Exception as e:  # noqa: BLE001 -- this request's fault: it ends, the others go on
                finished = self._failed(seq, e)
            if finished:
                done.append(row)
        self._retire(done)

    def _failed(self, seq: Sequence, error: Exception) -> bool:
        """End a sequence whose step or sampling raised; its traceback goes to the log, once."""
        log.error("a request failed while generating", exc_info=error)
        self._fail(seq, f"generation failed: {one_line(error)}")
        return True

    def _fail(self, seq: Sequence, message: str) -> None:
        seq.finish_reason = "error"
        self.stats.finished["error"] += 1
        self._emit(seq, Event("", len(seq.tokens), "error", error=message))

    def _start(self, seq: Sequence, prompt_logits: torch.Tensor | None) -> None:
        """What a sequence needs beside its cache row: its penalties' state, its prompt's
        log-probabilities (from the logits after each prompt token, (T, vocab), when asked for)."""
        p, vocab_size = seq.params, self.model.config.vocab_size
        if p.presence_penalty or p.frequency_penalty:
            seq.counts = torch.zeros(1, vocab_size, device=self.device)
        seq.bias = bias_vector(p.logit_bias, vocab_size, self.device)
        if prompt_logits is not None:  # position t predicts token t + 1
            seq.prompt_logprobs = [TokenLogprob(seq.prompt[0], None, []),
                                   *token_logprobs(prompt_logits[:-1], seq.prompt[1:], p.prompt_logprobs)]  # fmt: skip

    def _take_token(self, seq: Sequence, logits: torch.Tensor) -> bool:
        """Sample the sequence's next token, send its text; True when the sequence is finished."""
        p = seq.params
        adjusted = penalize(logits.unsqueeze(0), seq.counts, p.presence_penalty, p.frequency_penalty, seq.bias)
        token = int(sample_next_token(adjusted, p.temperature, p.top_k, p.top_p, seq.generator))
        seq.tokens.append(token)
        if seq.counts is not None:
            seq.counts[0, token] += 1
        made = token_logprobs(logits.unsqueeze(0), [token], p.logprobs) if p.logprobs is not None else []
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
            self.stats.first_token(seq.first_token_at - seq.created)
        self.stats.made_token()
        if token in seq.stop_ids:
            return self._finish(seq, "stop")
        text = seq.text.feed(self.tokenizer.decode_bytes([token]))
        if seq.text.stopped:
            return self._finish(seq, "stop", text, made)
        if len(seq.tokens) >= p.max_tokens or len(seq.prompt) + len(seq.tokens) > self.block_size:
            return self._finish(seq, "length", text, made)
        if seq.cancelled:
            return self._finish(seq, "cancelled", text, made)
        if self._out_of_time(seq):
            return self._finish(seq, "length", text, made)
        self._emit(seq, Event(text, len(seq.tokens), logprobs=made))
        return False

    def _finish(self, seq: Sequence, reason: str, text: str = "", made: list | None = None) -> bool:
        if reason != "cancelled" and not seq.text.stopped:
            text += seq.text.finish()
        seq.finish_reason = reason
        self.stats.finished[reason] += 1
        self._emit(seq, Event(text, len(seq.tokens), reason, logprobs=made or []))
        return True

    def _retire(self, rows: list[int]) -> None:
        """Remove finished rows (their keys and values kept for reuse); the last active row moves into each freed one."""
        for row in sorted(rows, reverse=True):
            seq, length = self.active[row], self.cache.lengths[row]
            if self.prefix is not None and seq.finish_reason in ("stop", "length") and length:
                self.prefix.add((seq.prompt + seq.tokens)[:length], self.cache.keys_values(row, length))
            last = len(self.active) - 1
            if row != last:
                self.cache.move(last, row)
                self.active[row] = self.active[last]
            self.active.pop()

    def _out_of_time(self, seq: Sequence) -> bool:
        return seq.deadline is not None and time.monotonic() > seq.deadline

    def _emit(self, seq: Sequence, event: Event) -> None:
        try:
            seq.on_event(event)
        except Exception:  # the listener is gone (its event loop closed): nobody to tell
            seq.cancelled = True


def one_line(e: BaseException) -> str:
    """An exception as one line: its type, and its message's first line."""
    message = str(e).strip().splitlines()
    return type(e).__name__ + (f": {message[0]}" if message else "")


# ---- numbers for /metrics ------------------------------------------------------------------------

# Time to first token, in seconds: the upper bounds of the histogram's buckets.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)


class Stats:
    """Counters the worker keeps (plain ints, read by /metrics from another thread). Bounded: the
    token rate is kept as one count per second of the last RATE_WINDOW seconds, not a time per token."""

    RATE_WINDOW = 10  # seconds over which tokens/s is measured

    def __init__(self):
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.steps = 0
        self.finished = collections.Counter()
        self.ttft_buckets = [0] * len(TTFT_BUCKETS)
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self._per_second = collections.deque(maxlen=self.RATE_WINDOW + 1)  # [second, tokens made in it]
        self._lock = threading.Lock()

    def made_token(self) -> None:
        self.generated_tokens += 1
        second = int(time.monotonic())
        with self._lock:
            if self._per_second and self._per_second[-1][0] == second:
                self._per_second[-1][1] += 1
            else:
                self._per_second.append([second, 1])  # the oldest second drops out

    def first_token(self, seconds: float) -> None:
        self.ttft_sum += seconds
        self.ttft_count += 1
        for i, bound in enumerate(TTFT_BUCKETS):
            if seconds <= bound:
                self.ttft_buckets[i] += 1

    def tokens_per_second(self) -> float:
        """Tokens made over the last RATE_WINDOW whole seconds (the current one aside), per second."""
        now = int(time.monotonic())
        with self._lock:
            made = sum(n for second, n in self._per_second if now - self.RATE_WINDOW <= second < now)
        return made / self.RATE_WINDOW
