"""GPT2: embeddings, the decoder, the final norm and the head (weight-tied by default); generation.

    ids (B, T) -> wte(ids) + wpe[0..T) -> GPT2Decoder -> ln_f -> lm_head -> logits (B, T, vocab)
                 (no wpe with RoPE)       n_layer blocks            (the wte matrix itself, unless untied)

The embedding matrix (and an untied head) has config.padded_vocab_size rows (a multiple of 64, for
the matrix kernels); the rows past vocab_size stay zero and their logits are cut off, so nothing
outside sees them.
"""

import math
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import nn

from basics import UserError

from .attention import KVCache, first_positions
from .config import GPT2Config, config_from_original_args
from .decoder import GPT2Decoder, make_norm
from .fast_cpu import cross_entropy
from .generation import bias_vector, check_sampling, penalize, sample_next_token


class GPT2(nn.Module):
    def __init__(self, config: GPT2Config | None = None, **original_args):
        super().__init__()
        self.config = config = config_from_original_args("GPT2", config, original_args)
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.wpe = None if config.rope else nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.decoder = GPT2Decoder(config)
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            # Weight tying: one matrix both embeds tokens and scores them; its gradient sums both uses.
            self.lm_head.weight = self.wte.weight
        # An untied head is drawn as the embedding is (N(0, 0.02) over its real rows), and last among
        # the modules: every other weight is then the tied model's of the same seed.
        self.apply(self._init_weights)
        # GPT-2 scales the projections that add into the residual stream, two per block, so the
        # stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        with torch.no_grad():
            self.wte.weight[config.vocab_size :] = 0.0  # the padding rows: never a token, never a target
            self.lm_head.weight[config.vocab_size :] = 0.0

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.wte or module is self.lm_head:  # the same matrix, drawn for its real rows
            nn.init.normal_(module.weight[: self.config.vocab_size], mean=0.0, std=0.02)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, trained: bool = False) -> int:
        """Parameters counted once each (a tied head is the token embedding), padding rows left out;
        trained: only those that training changes (a part frozen by --lora or --train-blocks left out)."""
        padding = (self.config.padded_vocab_size - self.config.vocab_size) * self.config.n_embd
        weights = {id(p): p for p in self.parameters() if p.requires_grad or not trained}
        padded = {id(self.wte.weight), id(self.lm_head.weight)} & weights.keys()  # the embedding, an untied head
        return sum(p.numel() for p in weights.values()) - len(padded) * padding

    def flops_per_token(self) -> int:
        """Model FLOPs of one training token (forward and backward), for MFU.

        Each weight of a matrix product costs 2 FLOPs per token forward and 4 backward: 6N, where N
        counts the weights used in products (the head once, not the lookup tables: the position
        table, and the token embedding when the head is untied; PaLM's appendix B). N follows the
        options: SwiGLU's three matrices, the narrower key/value projection of grouped-query
        attention. Attention adds 12 * layers * width * context for its scores and weighted sums
        (the same with shared key/value heads: every query head still takes its products).
        """
        c = self.config
        lookups = 0 if self.wpe is None else self.wpe.weight.numel()
        if not c.tie_embeddings:
            lookups += c.vocab_size * c.n_embd
        return 6 * (self.num_parameters() - lookups) + 12 * c.n_layer * c.n_embd * c.block_size

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, and also takes an embedding of vocab_size rows (a Hugging Face model, or a
        checkpoint made before the padding): the padding rows are added as zeros."""
        state_dict = dict(state_dict)
        for key in ("wte.weight", "lm_head.weight"):
            weight = state_dict.get(key)
            if weight is not None and weight.size(0) == self.config.vocab_size < self.config.padded_vocab_size:
                state_dict[key] = pad_rows(weight, self.config.padded_vocab_size)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _check_ids(self, ids: torch.Tensor) -> None:
        if ids.numel() == 0:
            return
        low, high = torch.aminmax(ids)
        low, high = low.item(), high.item()  # one small copy to the host
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise UserError(
                f"token id {bad} is out of range for a model with vocab_size {self.config.vocab_size} "
                f"(valid ids: 0 to {self.config.vocab_size - 1}); were the ids made with another vocab?"
            )

    def _embed(self, ids: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings of ids (B, T) whose first token is at position `start`
        (or, for one token per row, each row's own: a (B,) tensor)."""
        x = self.wte(ids)  # (B, T, C)
        if self.wpe is not None:
            if isinstance(start, torch.Tensor):
                x = x + self.wpe(start).unsqueeze(1)  # (B, 1, C)
            else:
                x = x + self.wpe.weight[start : start + ids.size(1)]  # (T, C), broadcast over B
        # Dropout does nothing in eval mode; not calling it there saves a generated token nine module
        # calls, a visible share of its time at batch 1 (BENCHMARKS.md, "One inference path").
        return self.drop(x) if self.training else x

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None, *, label_smoothing: float = 0.0,
                recompute: bool = False):  # fmt: skip
        """ids (B, T) -> (logits (B, T, vocab), mean cross-entropy against targets (B, T) or None).

        Two settings for training, given by the trainer with each call: label_smoothing e aims the
        loss at (1 - e) x the target + e x uniform; recompute keeps only each block's input and runs
        the block again in the backward pass (gradient checkpointing: less memory, the same result).
        """
        B, T = ids.shape
        logits = self.lm_head(self.hidden_states(ids, recompute))  # (B, T, padded vocab)
        loss = None
        if targets is not None:
            loss = cross_entropy(logits.view(B * T, -1), targets.reshape(B * T), self.config.vocab_size, label_smoothing)
        return logits[..., : self.config.vocab_size], loss

    def hidden_states(self, ids: torch.Tensor, recompute: bool = False) -> torch.Tensor:
        """ids (B, T) -> the final norm's output (B, T, C): what the head reads (and a classifier's
        head, classifier.py)."""
        T = ids.size(1)
        if T > self.config.block_size:
            raise UserError(f"{T} tokens do not fit the context of {self.config.block_size} (--context)")
        if ids.device.type == "cpu" and not torch.compiler.is_compiling():
            # A clear error rather than the embedding's (or a padding row's zeros). On a GPU the check
            # would make the host wait every step: there the callers check (generate checks its
            # prompt; the trainer reads ids its own tokenizer made).
            self._check_ids(ids)
        return self.ln_f(self.decoder(self._embed(ids, 0), recompute=recompute))

    # ---- generation --------------------------------------------------------------------------
    #
    #   cache = model.new_cache(rows)                      keys and values of every layer, per row
    #   logits = model.prefill(prompts (R, T), cache)      each row's prompt in; the next token's logits
    #   logits = model.decode_step(ids (R,), cache)        one token per row, each row at its own length
    #
    # generate() below, the command line's predict and the server's engine are built on these three.

    def new_cache(self, rows: int) -> KVCache:
        """An empty cache for `rows` sequences of up to the model's context."""
        return KVCache(self.config.n_layer, rows, self.config.block_size)

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, cache: KVCache, rows: list[int] | None = None, start: int = 0,
                every_position: bool = False) -> torch.Tensor:  # fmt: skip
        """Read prompts ids (R, T) into the cache rows `rows` (default 0 .. R-1), filling them again
        from position `start`; return the logits of each prompt's next token (R, vocab), or with
        every_position those after each of its tokens (R, T, vocab: what scoring a prompt needs). A
        prompt longer than the context is an error here (callers keep its end). start > 0 (one
        row): the row's first `start` positions already hold the keys of the prompt's beginning
        (KVCache.load, a reused prefix) and ids are the rest of it."""
        R, T = ids.shape
        rows = list(range(R)) if rows is None else list(rows)
        if start + T > self.config.block_size:
            raise UserError(f"{start + T} tokens do not fit the context of {self.config.block_size} (--context)")
        if len(rows) != R or T == 0 or (start and R != 1):
            raise ValueError(f"prefill takes one prompt of at least one token per cache row (one row after a start): "
                             f"got {R} prompts of {T} tokens for the rows {rows}, start {start}")
        self._check_ids(ids)
        for r in rows:
            cache.lengths[r] = start
        return self._next_logits(ids, start, cache, rows, every_position=every_position)

    @torch.inference_mode()
    def decode_step(self, ids: torch.Tensor, cache: KVCache, min_rows: int | None = None,
                    rows: list[int] | None = None) -> torch.Tensor:  # fmt: skip
        """Read one token per row, ids (R,), for the cache rows `rows` (default 0 .. R-1), each at its
        own position (its length, then one more); return the logits of each row's next token (R, vocab).
        A step that raises leaves the cache's lengths as they were: it can be taken again.

        min_rows: take the matrix products over at least this many rows, zero rows appended past R
        (their results dropped). A CPU's BLAS picks its kernels by the shape of a product (on an
        AMD EPYC a last block of 1 to 3 rows goes to other kernels than the blocks of 4 before it;
        on an Intel Xeon products of fewer rows than a threshold that depends on the matrix, from
        2 to 57 rows for the shapes tried, go to other kernels), and kernels round sums
        differently. At one shape each kernel gives a row the same bits whatever the other rows
        hold and wherever the row sits; with attention row by row (attention.attend_each_row), a
        fixed min_rows makes each row's logits independent of how many rows share the step.
        """
        R, block_size = ids.size(0), self.config.block_size
        rows = list(range(R)) if rows is None else list(rows)
        lengths = [cache.lengths[r] for r in rows]
        if len(rows) != R or min(lengths) < 1 or max(lengths) >= block_size:
            full = [r for r, n in zip(rows, lengths) if not 0 < n < block_size]
            raise ValueError(f"decode_step takes one id per row; cache rows {full} are empty or fill the context "
                             f"({block_size}): prefill them (again) first")
        start = first_positions(lengths, R, ids.device)
        return self._next_logits(ids.reshape(R, 1), start, cache, rows, max(R, min_rows or 0))

    def _next_logits(self, ids: torch.Tensor, start: int | torch.Tensor, cache: KVCache, rows: list[int],
                     product_rows: int = 0, every_position: bool = False) -> torch.Tensor:  # fmt: skip
        """The shared body of prefill and decode_step: ids (R, T) in at positions `start` (or each
        row's own, (R,)), in eval mode; the last position's logits (R, vocab) out, or every one's."""
        was_training = self.training
        if was_training:  # switched only when needed: walking every module costs as much as a token
            self.eval()
        try:
            x = self._embed(ids, start)  # (R, T, C)
            if product_rows > x.size(0):  # padding rows (see decode_step)
                x = torch.cat((x, x.new_zeros(product_rows - x.size(0), *x.shape[1:])))
            x = self.decoder(x, cache, rows)
            h = self.ln_f(x if every_position else x[:, -1])  # usually the last position alone
            # One row streams the head's matrix from memory, fastest laid out as (C, vocab); more rows
            # make a matrix product, faster from the weight as stored (BENCHMARKS.md: 10% of an 8-row step).
            one_row = h.dim() == 2 and h.size(0) == 1
            logits = h @ self._head_matrix(x.device) if one_row else self.lm_head(h)[..., : self.config.vocab_size]
            cache.advance(rows, ids.size(1))  # last: a step that raised can be taken again
            return logits if product_rows <= len(rows) else logits[: len(rows)]
        finally:
            if was_training:
                self.train()

    def _head_matrix(self, device: torch.device) -> torch.Tensor:
        """The head's matrix as (C, vocab), contiguous, in autocast's dtype when it is on: a one-row
        product then streams through memory in long runs instead of vocab short dot products (at
        batch 1 this matrix is most of the bytes read per token). Kept between calls until the
        weights change (an optimizer step bumps the tensor's version): copying it costs as much
        as several tokens."""
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        # The head's matrix, and a LoRA adapter's A and B (lora.py) when it has one; inference tensors keep no version.
        weights = self.lm_head.parameters()
        key = (tuple((w.data_ptr(), None if w.is_inference() else w._version) for w in weights), device, dtype)
        if getattr(self, "_head_cache", (None,))[0] != key:
            with torch.no_grad():
                weight = self.lm_head.merged_weight() if hasattr(self.lm_head, "merged_weight") else self.lm_head.weight
            head = weight.detach()[: self.config.vocab_size].t().contiguous()  # padding rows left out
            self._head_cache = (key, head if dtype is None else head.to(dtype))
        return self._head_cache[1]

    def _prepare_prompt(self, ids, max_new_tokens: int, sampling: dict, stop_token):
        """Check the arguments of generate(); return the prompt as a (B, T) tensor on the model's device."""
        check_sampling(max_new_tokens, **sampling, vocab_size=self.config.vocab_size)
        if stop_token is not None and not 0 <= stop_token < self.config.vocab_size:
            raise UserError(f"stop_token {stop_token} is out of range for vocab_size {self.config.vocab_size}")
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.wte.weight.device)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)  # (T,) -> (1, T)
        if ids.dim() != 2 or ids.size(1) == 0:
            raise UserError(f"the prompt must hold at least one token id, got shape {tuple(ids.shape)}")
        self._check_ids(ids)
        return ids

    @torch.inference_mode()
    def _generate_steps(self, ids, max_new_tokens: int, sampling: dict, stop_token, seed) -> Iterator:
        """Yield the next token of every row, (B,), max_new_tokens times (fewer when all rows stop)."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device=ids.device).manual_seed(seed)
        block_size = self.config.block_size
        presence, frequency = sampling["presence_penalty"], sampling["frequency_penalty"]
        counts = torch.zeros(ids.size(0), self.config.vocab_size, device=ids.device) if presence or frequency else None
        bias = bias_vector(sampling["logit_bias"], self.config.vocab_size, ids.device)
        was_training = self.training
        self.eval()  # once for the whole generation, not at every step
        try:
            context = ids[:, -block_size:]  # a longer prompt keeps its last block_size tokens
            cache = self.new_cache(ids.size(0))
            logits = self.prefill(context, cache)
            done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
            for step in range(max_new_tokens):
                logits = penalize(logits, counts, presence, frequency, bias)
                next_id = sample_next_token(logits, sampling["temperature"], sampling["top_k"], sampling["top_p"],
                                            generator)  # (B, 1)  # fmt: skip
                if stop_token is not None:
                    # Rows that have stopped keep emitting the stop token while the others go on.
                    next_id = next_id.masked_fill(done.unsqueeze(1), stop_token)
                    done |= next_id.squeeze(1) == stop_token
                yield next_id.squeeze(1)
                if step == max_new_tokens - 1 or (stop_token is not None and bool(done.all())):
                    return
                if counts is not None:
                    counts.scatter_add_(1, next_id, torch.ones_like(next_id, dtype=counts.dtype))
                context = torch.cat((context, next_id), dim=1)[:, -block_size:]
                if cache.lengths[0] < block_size:
                    logits = self.decode_step(next_id.squeeze(1), cache)  # one new position per step
                else:
                    # The context is full: slide the window by filling the cache again from its last
                    # block_size tokens, positions from 0 again (learned positions end at block_size).
                    logits = self.prefill(context, cache)
        finally:
            self.train(was_training)

    def generate(self, ids, max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 40,
                 top_p: float | None = None, stop_token: int | None = None, seed: int | None = None,
                 greedy: bool = False, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 logit_bias: dict[int, float] | None = None):  # fmt: skip
        """The prompt followed by up to max_new_tokens new tokens, in the prompt's form.

        ids: a list of ints, a (T,) tensor or a (B, T) tensor. temperature 0 (or greedy=True) takes
        the most likely token; otherwise sample from the top_k most likely, then from the smallest
        set whose probability reaches top_p. Before that, OpenAI's presence and frequency penalties
        (over the tokens each row has made) and logit_bias ({token id: added logit}) change the
        logits (generation.penalize). Stops early once every row has made stop_token.
        """
        prompt, steps = self._start_generation(ids, max_new_tokens, stop_token, seed, greedy, temperature=temperature,
                                               top_k=top_k, top_p=top_p, presence_penalty=presence_penalty,
                                               frequency_penalty=frequency_penalty, logit_bias=logit_bias)  # fmt: skip
        out = torch.cat([prompt, *(token.unsqueeze(1) for token in steps)], dim=1)  # (B, T + new)
        if isinstance(ids, torch.Tensor):
            return out if ids.dim() == 2 else out[0]
        return out[0].tolist() if len(out) == 1 else out.tolist()

    def generate_stream(self, ids, max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 40,
                        top_p: float | None = None, stop_token: int | None = None, seed: int | None = None,
                        greedy: bool = False, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                        logit_bias: dict[int, float] | None = None) -> Iterator[int]:  # fmt: skip
        """generate() for one prompt, yielding each new token id as soon as it is made."""
        prompt, steps = self._start_generation(ids, max_new_tokens, stop_token, seed, greedy, temperature=temperature,
                                               top_k=top_k, top_p=top_p, presence_penalty=presence_penalty,
                                               frequency_penalty=frequency_penalty, logit_bias=logit_bias)  # fmt: skip
        if prompt.size(0) != 1:
            raise UserError(f"generate_stream takes one prompt, got a batch of {prompt.size(0)}")
        for token in steps:
            yield token.item()

    def _start_generation(self, ids, max_new_tokens: int, stop_token, seed, greedy: bool, **sampling):
        """generate()'s and generate_stream()'s arguments checked: (the prompt (B, T), its steps)."""
        prompt = self._prepare_prompt(ids, max_new_tokens, sampling, stop_token)
        if greedy:
            sampling["temperature"] = 0.0
        return prompt, self._generate_steps(prompt, max_new_tokens, sampling, stop_token, seed)

    def with_changes(self, dropout: float | None = None, attn_dropout: float | None = None,
                     block_size: int | None = None) -> "GPT2":
        """This model with what fine-tuning may change without new weights: the dropout rates and a
        shorter context (learned positions keep their first block_size rows; RoPE takes any length).
        Returns self when nothing changes, else a new model holding the same weights."""
        changes = {name: value for name, value in
                   (("dropout", dropout), ("attn_dropout", attn_dropout), ("block_size", block_size))
                   if value is not None and value != getattr(self.config, name)}  # fmt: skip
        if not changes:
            return self
        c = self.config
        if "block_size" in changes and not c.rope and block_size > c.block_size:
            raise UserError(f"--context {block_size} is longer than the model's learned positions ({c.block_size}); "
                            f"give {c.block_size} or less")
        state = self.state_dict()
        if not c.rope:
            state["wpe.weight"] = state["wpe.weight"][: changes.get("block_size", c.block_size)]
        model = GPT2(replace(c, **changes))
        model.load_state_dict(state)
        return model.to(self.wte.weight.device).train(self.training)


def pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """weight with zero rows added at the end, to `rows` rows."""
    return torch.cat((weight, weight.new_zeros(rows - weight.size(0), *weight.shape[1:])))
