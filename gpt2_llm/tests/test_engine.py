"""The serving engine without HTTP: batch invariance, seeds, retiring, how sequences end, the queue."""

import queue
import random
import time

import pytest
import torch

from bpe import BPE
from gpt2_llm import GPT2, GPT2Config
from gpt2_llm.serve.engine import Engine, EngineFailed, QueueFull, SamplingParams, Sequence
from gpt2_llm.tests.conftest import assert_close, some_text

TIMEOUT = 20  # seconds any one wait for the worker may take


@pytest.fixture(scope="module")
def tokenizer() -> BPE:
    return BPE.train(some_text(20_000), vocab_size=300)


def model_of(tokenizer, **options) -> GPT2:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=64, block_size=96, **options)
    return GPT2(config).eval()


@pytest.fixture(scope="module")
def engine(tokenizer):
    engine = Engine(model_of(tokenizer), tokenizer, max_batch=8, batch_invariant=True)
    engine.start()
    yield engine
    engine.stop()


def run(engine: Engine, prompts: list[list[int]], params: list[SamplingParams], **kw) -> list[tuple[str, list, str]]:
    """Submit the sequences together; return each one's (text, tokens, finish_reason)."""
    inboxes = [queue.Queue() for _ in prompts]
    seqs = [Sequence(p, pr, box.put, **kw) for p, pr, box in zip(prompts, params, inboxes)]
    engine.submit(seqs)
    out = []
    for box, seq in zip(inboxes, seqs):
        text = ""
        for _ in range(1000):
            event = box.get(timeout=TIMEOUT)
            text += event.text
            if event.finish_reason:
                break
        out.append((text, seq.tokens, event.finish_reason))
    return out


# ---- batch invariance ----------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"rope": True, "n_kv_head": 2, "qk_norm": True}], ids=["gpt2", "rope-gqa"])
def test_a_row_of_a_batched_step_is_the_row_alone_bit_for_bit(tokenizer, options):
    """Every row of the engine's decode step with up to 9 sequences of different lengths equals
    the same sequence decoded alone in the engine's cache, exactly: a fixed number of rows in the
    products (min_rows) and attention row by row leave no trace of the other rows (the docstrings
    of engine.py and GPT2.decode_step say why both are needed). And it is the model's own forward
    pass over the whole sequence, to float rounding."""
    engine = Engine(model_of(tokenizer, **options), tokenizer, max_batch=9, batch_invariant=True)  # driven by hand
    model, cache, rng = engine.model, engine.cache, random.Random(0)

    def step(prompts: list[list[int]], last: list[int]) -> torch.Tensor:
        for row, prompt in enumerate(prompts):
            model.prefill(torch.tensor([prompt]), cache, rows=[row])  # as the engine admits a sequence
        return model.decode_step(torch.tensor(last), cache, min_rows=engine.step_rows)

    assert engine.step_rows == 12  # 9 rows, rounded up to a multiple of ROW_BLOCK
    for batch in range(1, 10):
        prompts = [[rng.randrange(300) for _ in range(rng.randint(1, 60))] for _ in range(batch)]
        last = [rng.randrange(300) for _ in prompts]
        together = step(prompts, last)
        for row, prompt in enumerate(prompts):
            alone = step([prompt], [last[row]])
            diff = (alone[0] - together[row]).abs().max().item()
            assert torch.equal(alone[0], together[row]), f"batch {batch}, row {row}: largest difference {diff:.3g}"
            assert_close(alone[0], model(torch.tensor([prompt + [last[row]]]))[0][0, -1], atol=1e-4)


def test_a_retired_row_leaves_the_last_row_in_its_place(tokenizer):
    engine = Engine(model_of(tokenizer), tokenizer, max_batch=3)  # not started: driven by hand
    prompts = [tokenizer.encode(t) for t in ("To be", "First Citizen:", "KING")]
    limits = (9, 2, 9)
    seqs = [Sequence(p, SamplingParams(max_tokens=m, temperature=0), lambda e: None) for p, m in zip(prompts, limits)]
    engine.submit(seqs)
    engine._admit()
    engine._step()  # the second sequence makes its second and last token: the third takes its row
    assert engine.active == [seqs[0], seqs[2]]
    assert engine.cache.lengths[:2] == [len(prompts[0]) + 1, len(prompts[2]) + 1]
    for _ in range(7):
        engine._step()
    greedy = engine.model.generate(prompts[2], 9, temperature=0)[len(prompts[2]) :]
    assert engine.active == [] and seqs[2].tokens == greedy


def test_greedy_text_alone_beside_others_and_from_generate_is_the_same(engine, tokenizer):
    prompt = tokenizer.encode("ROMEO: I")
    greedy = SamplingParams(max_tokens=50, temperature=0)
    alone = run(engine, [prompt], [greedy])[0]
    others = [tokenizer.encode(t) for t in ("To be", "First Citizen:\nWe are", "KING")]
    mixed = [SamplingParams(max_tokens=m, temperature=t, seed=1) for m, t in ((30, 1.0), (70, 0.7), (5, 0.0))]
    together = run(engine, [others[0], prompt, *others[1:]], [mixed[0], greedy, *mixed[1:]])
    assert together[1][:2] == alone[:2] and alone[2] == "length"
    assert [len(t[1]) for t in together] == [30, 50, 70, 5]  # rows left at different steps around it
    assert alone[1] == engine.model.generate(prompt, 50, temperature=0)[len(prompt):]


def test_a_seed_gives_the_same_tokens_whatever_else_is_decoded(engine, tokenizer):
    prompt = tokenizer.encode("To be")
    sampled = SamplingParams(max_tokens=40, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    alone = run(engine, [prompt], [sampled])[0]
    beside = run(engine, [tokenizer.encode("KING"), prompt], [SamplingParams(max_tokens=20, seed=3), sampled])[1]
    other_seed = run(engine, [prompt], [SamplingParams(max_tokens=40, temperature=1.0, top_k=50, top_p=0.9, seed=8)])
    assert beside == alone
    assert other_seed[0][1] != alone[1]


def test_by_default_a_step_multiplies_only_the_active_rows(tokenizer, monkeypatch):
    """Without batch_invariant a lone sequence's step is one row (not the batch's 8), and its greedy
    text is generate()'s; with it, every step multiplies the capacity rounded up to ROW_BLOCK."""
    for invariant, rows_seen in ((False, {(1, None), (2, None)}), (True, {(1, 8), (2, 8)})):
        engine = Engine(model_of(tokenizer), tokenizer, max_batch=8, batch_invariant=invariant)
        seen = set()
        step = engine.model.decode_step
        monkeypatch.setattr(engine.model, "decode_step", lambda ids, cache, min_rows=None, rows=None:
                            seen.add((ids.size(0), min_rows)) or step(ids, cache, min_rows, rows))  # fmt: skip
        engine.start()
        try:
            prompt = tokenizer.encode("ROMEO: I")
            alone = run(engine, [prompt], [SamplingParams(max_tokens=20, temperature=0)])[0]
            run(engine, [prompt, prompt], [SamplingParams(max_tokens=5, temperature=0)] * 2)
        finally:
            engine.stop()
        assert seen == rows_seen
        assert alone[1] == engine.model.generate(prompt, 20, temperature=0)[len(prompt) :]


# ---- how sequences end ---------------------------------------------------------------------------


def test_an_end_token_ends_a_sequence_and_is_not_text(engine, tokenizer):
    prompt = tokenizer.encode("To be")
    first = run(engine, [prompt], [SamplingParams(max_tokens=5, temperature=0)])[0][1][0]
    text, tokens, reason = run(engine, [prompt], [SamplingParams(max_tokens=5, temperature=0)], stop_ids={first})[0]
    assert (text, tokens, reason) == ("", [first], "stop")


def test_a_stop_string_ends_the_text_before_it(engine, tokenizer):
    prompt = tokenizer.encode("ROMEO: I")
    text = run(engine, [prompt], [SamplingParams(max_tokens=40, temperature=0)])[0][0]
    stop = text[10:13]
    cut, _, reason = run(engine, [prompt], [SamplingParams(max_tokens=40, temperature=0, stop=(stop,))])[0]
    assert reason == "stop" and cut == text[: text.index(stop)]


def test_a_cancelled_sequence_leaves_at_the_next_step(tokenizer):
    engine = Engine(model_of(tokenizer), tokenizer, max_batch=2)
    events = queue.Queue()
    seq = Sequence(tokenizer.encode("To be"), SamplingParams(max_tokens=90, temperature=0), events.put)
    engine.submit([seq])
    engine._admit()
    engine._step()
    seq.cancel()
    engine._step()
    assert engine.active == [] and seq.finish_reason == "cancelled" and len(seq.tokens) == 3


def test_the_time_limit_ends_a_sequence_as_length(tokenizer):
    engine = Engine(model_of(tokenizer), tokenizer, request_timeout=0.0)
    engine.start()
    try:
        text, tokens, reason = run(engine, [tokenizer.encode("To be")], [SamplingParams(max_tokens=90)])[0]
    finally:
        engine.stop()
    assert reason == "length" and len(tokens) <= 1


def test_the_queue_is_bounded_and_limits_are_checked(tokenizer):
    engine = Engine(model_of(tokenizer), tokenizer, max_queue=2)  # not started: nothing leaves the queue
    seqs = [Sequence([1, 2], SamplingParams(), lambda e: None) for _ in range(3)]
    engine.submit(seqs[:2])
    with pytest.raises(QueueFull, match="--max-queue 2"):
        engine.submit(seqs[2:])
    with pytest.raises(ValueError, match="do not fit the context of 96"):
        engine.submit([Sequence([1] * 90, SamplingParams(max_tokens=7), lambda e: None)])
    with pytest.raises(ValueError, match="top_p"):
        engine.submit([Sequence([1], SamplingParams(top_p=1.5), lambda e: None)])


# ---- faults --------------------------------------------------------------------------------------


def raise_on(model: GPT2, token: int):
    """Make the model's decode steps raise when `token` is among their inputs (prompts read as usual)."""

    def hook(module, inputs):
        ids = inputs[0]
        if ids.size(1) == 1 and bool((ids == token).any()):
            raise RuntimeError(f"token {token} is marked")

    return model.wte.register_forward_pre_hook(hook)


@pytest.mark.parametrize("invariant", [True, False])
def test_a_step_that_raises_fails_only_the_sequence_it_belongs_to(tokenizer, invariant):
    """Of four sequences, the one whose input makes the model raise ends with "error"; the batch's
    step is taken again row by row and the other three finish as they would alone."""
    engine = Engine(model_of(tokenizer), tokenizer, max_batch=4, batch_invariant=invariant)
    engine.start()
    try:
        prompts = [tokenizer.encode(t) for t in ("To be", "ROMEO: I", "First Citizen:", "KING")]
        greedy = [SamplingParams(max_tokens=12, temperature=0)] * 4
        alone = [run(engine, [p], greedy[:1])[0] for p in prompts]
        marked = alone[1][1][3]  # a token the second makes: the step that reads it raises
        assert all(marked not in tokens for i, (_, tokens, _) in enumerate(alone) if i != 1)
        handle = raise_on(engine.model, marked)
        together = run(engine, prompts, greedy)
        handle.remove()
    finally:
        engine.stop()
    made = alone[1][1]
    assert together[1][2] == "error" and together[1][1] == made[: made.index(marked) + 1]
    assert [together[i] for i in (0, 2, 3)] == [alone[i] for i in (0, 2, 3)]
    assert engine.failure is None and engine.stats.finished["error"] == 1


def test_a_token_the_tokenizer_cannot_decode_fails_its_sequence_alone(tokenizer, monkeypatch):
    """A sampled id that the served tokenizer cannot decode (a smaller --vocab-file) ends its
    sequence with an error event saying so; the engine goes on."""
    engine = Engine(model_of(tokenizer), tokenizer, max_batch=4)
    prompt = tokenizer.encode("ROMEO: I")
    engine.start()
    try:
        first = run(engine, [prompt], [SamplingParams(max_tokens=1, temperature=0)])[0][1][0]
        decode = tokenizer.decode_bytes
        monkeypatch.setattr(engine, "tokenizer", type("Smaller", (), {"decode_bytes": lambda self, ids:
                            decode([]) if ids == [first] and [][0] else decode(ids)})())  # fmt: skip
        events = queue.Queue()
        engine.submit([Sequence(prompt, SamplingParams(max_tokens=5, temperature=0), events.put)])
        last = events.get(timeout=TIMEOUT)
        other = run(engine, [tokenizer.encode("KING")], [SamplingParams(max_tokens=5, temperature=0)])[0]
    finally:
        engine.stop()
    assert (last.finish_reason, last.error) == ("error", "generation failed: IndexError: list index out of range")
    assert other[2] == "length" and len(other[1]) == 5


def test_an_error_the_engine_cannot_contain_stops_it_and_says_so(tokenizer, monkeypatch):
    told = []
    engine = Engine(model_of(tokenizer), tokenizer, max_batch=2, on_failure=told.append)
    monkeypatch.setattr(engine, "_retire", lambda rows: [][0])  # a bug in the worker's own bookkeeping
    events = [queue.Queue(), queue.Queue()]
    params = SamplingParams(max_tokens=3, temperature=0)
    engine.submit([Sequence(tokenizer.encode(t), params, box.put) for t, box in zip(("To be", "KING"), events)])
    engine.start()
    ends = [next(e for e in iter(lambda box=box: box.get(timeout=TIMEOUT), None) if e.finish_reason) for box in events]
    engine._thread.join(TIMEOUT)
    assert [e.finish_reason for e in ends] == ["error", "error"]
    assert ends[0].error == "the engine has stopped on an error: IndexError: list index out of range"
    assert isinstance(engine.failure, IndexError) and told == [engine.failure]
    with pytest.raises(EngineFailed, match="the engine has stopped on an error"):
        engine.submit([Sequence(tokenizer.encode("O"), params, lambda e: None)])


# ---- prefix reuse --------------------------------------------------------------------------------


def test_a_reused_prompt_beginning_gives_the_same_greedy_text(tokenizer):
    """A chat's second turn: its prompt begins with the first turn's prompt and answer, whose keys
    the engine kept; it reads only the rest, and its greedy text is the one made without reuse."""
    first = tokenizer.encode("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    cached = Engine(model_of(tokenizer, rope=True), tokenizer, max_batch=2, prefix_cache_mb=1)
    plain = Engine(model_of(tokenizer, rope=True), tokenizer, max_batch=2)
    greedy = SamplingParams(max_tokens=12, temperature=0)
    for engine in (cached, plain):
        engine.start()
    try:
        answer = run(cached, [first], [greedy])[0][1]
        idle(cached)  # its row is kept as it leaves the batch, just after its last event
        assert cached.prefix.hits == 0 and len(cached.prefix.entries) == 1
        second = first + answer[:-1] + tokenizer.encode("\nAll:\nSpeak, speak.\n")  # the last token was never read
        with_reuse, without = run(cached, [second], [greedy])[0], run(plain, [second], [greedy])[0]
        idle(cached)
    finally:
        for engine in (cached, plain):
            engine.stop()
    assert cached.prefix.hits == 1 and cached.prefix.reused_tokens == len(first) + len(answer) - 1
    assert with_reuse == without and with_reuse[2] == "length"
    assert list(cached.prefix.entries) == [tuple(second + with_reuse[1][:-1])]  # the first entry was its beginning


def idle(engine: Engine) -> None:
    for _ in range(TIMEOUT * 100):
        if not engine.active and not engine.waiting:
            return
        time.sleep(0.01)
    raise AssertionError("the engine did not finish its sequences")


def test_the_prefix_cache_keeps_to_its_bytes_dropping_the_least_recently_used():
    from gpt2_llm.serve.prefix import PrefixCache

    def kv(n):  # one layer, 2 heads of 4 channels: 2 x 2 x 4 x 4 bytes per position
        return [(torch.full((2, n, 4), float(n)), torch.full((2, n, 4), -float(n)))]

    cache = PrefixCache(max_bytes=64 * 60)  # 60 positions
    cache.add(list(range(20)), kv(20))
    cache.add(list(range(100, 120)), kv(20))
    assert cache.longest(list(range(30)))[0] == 20  # the first is now the most recent
    cache.add(list(range(200, 230)), kv(30))  # 70 positions: the least recent (range(100, 120)) goes
    assert list(cache.entries) == [tuple(range(20)), tuple(range(200, 230))] and cache.bytes == 64 * 50
    n, reused = cache.longest(list(range(15)) + [7] * 10)
    assert (n, reused) == (0, None)  # 15 shared tokens: below MIN_REUSE
    n, reused = cache.longest(list(range(18)) + [7])
    assert n == 18 and torch.equal(reused[0][0], torch.full((2, 18, 4), 20.0))
    cache.add(list(range(20)) + [5] * 50, kv(70))  # 70 positions > 60: too large to keep
    assert cache.bytes == 64 * 50
