"""The continuous cache (copying.py): its formula, where it acts, generation and serving with it."""

import math
import queue

import pytest
import torch
import torch.nn.functional as F

from gpt2_llm import GPT2, GPT2Config
from gpt2_llm.copying import mix_copies
from gpt2_llm.serve.engine import Engine, SamplingParams, Sequence
from gpt2_llm.tests.conftest import assert_close


def reference_probabilities(logits, hidden, ids, weight, sharpness):
    """p(next | ids[:t+1]) for every t, one position and one earlier position at a time, in float64."""
    B, T, V = logits.shape
    out = torch.zeros(B, T, V, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            p_model = torch.softmax(logits[b, t].double(), dim=0)
            if t == 0:
                out[b, t] = p_model
                continue
            h_t = hidden[b, t].double()
            cosines = [float(h_t @ hidden[b, i].double() / (h_t.norm() * hidden[b, i].double().norm())) for i in range(t)]
            top = max(cosines)
            e = [math.exp(sharpness * (c - top)) for c in cosines]
            p_copy = torch.zeros(V, dtype=torch.float64)
            for i in range(t):
                p_copy[ids[b, i + 1]] += e[i] / sum(e)  # memory i holds the token that followed position i
            out[b, t] = (1 - weight) * p_model + weight * p_copy
    return out


def test_the_mixture_is_the_formula_written_out():
    torch.manual_seed(0)
    B, T, V, C = 2, 9, 11, 6
    logits, hidden = torch.randn(B, T, V), torch.randn(B, T, C)
    ids = torch.randint(0, V, (B, T))
    for weight, sharpness in ((0.1, 10.0), (0.5, 1.0), (0.9, 30.0)):
        got = mix_copies(logits, hidden, hidden[:, :-1], ids[:, 1:], weight, sharpness, causal=True)
        want = reference_probabilities(logits, hidden, ids, weight, sharpness)
        assert_close(got.exp().double(), want, atol=1e-6)
        assert_close(got.exp().sum(-1), torch.ones(B, T), atol=1e-5)  # a distribution at every position
    assert torch.equal(got[:, 0], F.log_softmax(logits[:, 0], -1))  # the first position has no memory


def test_a_token_never_seen_keeps_the_models_probability_scaled_and_a_copy_gains():
    logits = torch.zeros(1, 3, 4)  # the model: uniform over 4 tokens
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])  # position 2 is like position 0
    ids = torch.tensor([[0, 3, 2]])  # after position 0 came token 3, after position 1 token 2
    p = mix_copies(logits, hidden, hidden[:, :-1], ids[:, 1:], 0.2, 50.0, causal=True).exp()[0, 2]
    assert p[0].item() == pytest.approx(0.8 * 0.25) and p[1].item() == pytest.approx(0.8 * 0.25)
    assert p[3].item() == pytest.approx(0.8 * 0.25 + 0.2, abs=1e-6)  # copied from the similar position 0


def tiny(copy_weight=0.0, **options) -> GPT2:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=40, n_layer=2, n_head=2, n_embd=32, block_size=16, copy_weight=copy_weight,
                        copy_sharpness=5.0, **options)  # fmt: skip
    return GPT2(config)


@pytest.mark.parametrize("options", [{}, {"rope": True, "token_shift": True, "tie_embeddings": False}], ids=["gpt2", "options"])
def test_the_model_mixes_the_cache_in_when_it_predicts_and_not_in_training(options):
    plain, copying = tiny(**options).eval(), tiny(0.3, **options).eval()
    ids = torch.randint(0, 40, (3, 16), generator=torch.Generator().manual_seed(1))
    targets = torch.roll(ids, -1, dims=1)
    hidden = plain.ln_f(plain.decoder(plain._embed(ids, 0)))
    logits, _ = plain(ids)
    want = reference_probabilities(logits.detach(), hidden.detach(), ids, 0.3, 5.0)
    got, loss = copying(ids, targets)
    assert_close(got.exp().double(), want, atol=1e-5)
    assert loss.item() == pytest.approx(-want.gather(-1, targets[..., None]).log().mean().item(), rel=1e-5)
    loss.backward()  # tokens the context never had: a backward pass through the mixture stays finite
    assert all(torch.isfinite(p.grad).all() for p in copying.parameters() if p.grad is not None)
    # Causal: what comes after position t changes nothing at t.
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 40
    assert torch.equal(copying(changed)[0][:, :10], got[:, :10])
    # In training mode the loss is the model's own (dropout 0: the two models are the same weights).
    assert torch.equal(copying.train()(ids, targets)[1], plain.train()(ids, targets)[1])


def greedy_by_recomputing(model: GPT2, prompt: list[int], n: int) -> list[int]:
    """Greedy tokens from the whole forward pass at every step, the window sliding as generate's does."""
    ids = list(prompt)
    for _ in range(n):
        logits, _ = model(torch.tensor([ids[-model.config.block_size :]]))
        ids.append(int(logits[0, -1].argmax()))
    return ids


def test_generation_with_the_cache_is_the_forward_pass_step_by_step_also_past_the_context():
    model = tiny(0.5).eval()
    prompt = [3, 7, 3, 9, 3]
    got = model.generate(prompt, 30, greedy=True)  # 35 tokens: the 16-token window slides
    assert got == greedy_by_recomputing(model, prompt, 30)
    assert got != greedy_by_recomputing(tiny().eval(), prompt, 30)  # the cache changes the text
    batch = model.generate(torch.tensor([prompt, [1, 2, 3, 4, 5]]), 12, greedy=True)
    assert batch[0].tolist() == got[:17] and batch[1].tolist() == greedy_by_recomputing(model, [1, 2, 3, 4, 5], 12)


def test_the_server_gives_the_same_greedy_text_with_the_cache():
    from bpe import BPE

    tokenizer = BPE.train("the cat sat on the mat. " * 40 + "a dog ran far, far away. " * 40, vocab_size=300)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32, block_size=64, copy_weight=0.5)
    model = GPT2(config).eval()
    prompts = [tokenizer.encode("the cat sat on"), tokenizer.encode("a dog")]
    engine = Engine(model, tokenizer, max_batch=4)
    engine.start()
    try:
        boxes = [queue.Queue() for _ in prompts]
        seqs = [Sequence(p, SamplingParams(max_tokens=20 + 5 * i, temperature=0), box.put) for i, (p, box) in enumerate(zip(prompts, boxes))]
        engine.submit(seqs)
        for box in boxes:
            for _ in range(100):
                if box.get(timeout=20).finish_reason:
                    break
    finally:
        engine.stop()
    for seq, prompt in zip(seqs, prompts):
        assert seq.tokens == model.generate(prompt, len(seq.tokens), greedy=True)[len(prompt) :]


def test_the_settings_are_checked():
    with pytest.raises(ValueError, match=r"copy_weight \(--copy\) must be in \[0, 1\)"):
        GPT2Config(copy_weight=1.0)
    with pytest.raises(ValueError, match=r"copy_sharpness \(--copy-sharpness\) must be positive"):
        GPT2Config(copy_sharpness=0.0)
    assert GPT2Config(copy_weight=0.1).gpt2_departures() == ["a copying cache"]
