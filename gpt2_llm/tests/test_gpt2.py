import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpt2_llm import GPT2, GPT2Config
from gpt2_llm.gpt2 import cross_entropy, sample_next_token
from gpt2_llm.tests.conftest import assert_close


def greedy_by_full_recompute(model, ids, n):
    """The slow reference: run the whole (cropped) context again for every new token."""
    ids = ids.clone()
    for _ in range(n):
        logits, _ = model(ids[:, -model.config.block_size :])
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


# ---- parity with transformers ------------------------------------------------------------------

HF_SHAPE = dict(vocab_size=97, n_positions=64, n_embd=64, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    # A larger init than GPT-2's spreads the logits, so greedy choices are never near-ties.
    config = transformers.GPT2Config(**HF_SHAPE, initializer_range=0.1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so a swapped weight shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def assert_same_as_hf(ours, hf):
    torch.manual_seed(1)
    ids = torch.randint(0, 97, (3, 40))
    with torch.no_grad():
        ours_logits, ours_loss = ours(ids[:, :-1], ids[:, 1:])
        hf_out = hf(ids, labels=ids)
    assert_close(ours_logits, hf_out.logits[:, :-1], atol=1e-5)
    assert ours_loss.item() == pytest.approx(hf_out.loss.item(), abs=1e-6)
    prompt = torch.randint(0, 97, (1, 8))
    with torch.inference_mode():
        hf_ids = hf.generate(prompt, max_new_tokens=50, min_new_tokens=50, do_sample=False, pad_token_id=0)
    ours_ids = ours.generate(prompt, 50, temperature=0)
    assert ours_ids.shape == (1, 58)
    assert torch.equal(ours_ids, hf_ids)


def test_hf_model_loads_into_ours_from_safetensors(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = GPT2.from_hf(tmp_path)
    assert not ours.training
    assert (ours.config.n_layer, ours.config.n_head, ours.config.block_size) == (2, 4, 64)
    assert_same_as_hf(ours, hf_model)


def test_hf_model_loads_into_ours_from_pytorch_model_bin(hf_model, tmp_path):
    hf_model.config.to_json_file(tmp_path / "config.json")
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    assert_same_as_hf(GPT2.from_hf(tmp_path), hf_model)


def test_hf_state_dict_loads_into_ours(hf_model):
    ours = GPT2.from_hf(hf_model.state_dict(), GPT2Config(vocab_size=97, n_layer=2, n_head=4, n_embd=64, block_size=64))
    assert_same_as_hf(ours, hf_model)


def test_hf_shapes_are_read_from_a_bare_state_dict():
    transformers = pytest.importorskip("transformers")
    shape = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=128, n_layer=3, n_head=2)
    hf = transformers.GPT2LMHeadModel(shape)
    config = GPT2.from_hf(hf.state_dict()).config
    assert (config.vocab_size, config.block_size, config.n_embd, config.n_layer, config.n_head) == (50, 16, 128, 3, 2)


def test_ours_exports_to_hf(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(2)
    ours = GPT2(GPT2Config(vocab_size=97, n_layer=2, n_head=4, n_embd=64, block_size=64)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))  # away from GPT-2's small init: greedy never near a tie
    ours.save_hf(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied again
    assert_same_as_hf(ours, hf)
    # ...and back again, through the file transformers writes.
    hf.save_pretrained(tmp_path / "again")
    again = GPT2.from_hf(tmp_path / "again")
    assert torch.equal(again.decoder.h[1].attn.c_attn.weight, ours.decoder.h[1].attn.c_attn.weight)


def test_export_refuses_what_hf_gpt2_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="rope or without bias"):
        GPT2(GPT2Config(vocab_size=10, n_layer=1, n_head=2, n_embd=8, block_size=8, rope=True)).save_hf(tmp_path)
    with pytest.raises(ValueError, match="no model.safetensors or pytorch_model.bin"):
        (tmp_path / "config.json").write_text(json.dumps(dict(HF_SHAPE, model_type="gpt2")))
        GPT2.from_hf(tmp_path)


def test_importing_the_package_never_imports_transformers():
    optional = "('transformers', 'safetensors', 'tiktoken')"
    code = f"import sys, gpt2_llm; print(sorted(m for m in {optional} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- the model itself -------------------------------------------------------------------------


def test_forward_returns_logits_and_the_mean_cross_entropy(tiny_model):
    ids = torch.randint(0, 97, (2, 10))
    targets = torch.randint(0, 97, (2, 10))
    logits, loss = tiny_model(ids, targets)
    assert logits.shape == (2, 10, 97)
    assert loss.item() == pytest.approx(F.cross_entropy(logits.view(20, 97), targets.view(20)).item(), abs=1e-6)
    assert tiny_model(ids)[1] is None


@pytest.mark.parametrize("rope", [False, True])
def test_changing_a_later_token_never_changes_earlier_logits(tiny_config, rope):
    torch.manual_seed(0)
    model = GPT2(GPT2Config(**{**tiny_config.__dict__, "rope": rope})).eval()
    ids = torch.randint(0, 97, (1, 20))
    changed = ids.clone()
    changed[0, 12] = (ids[0, 12] + 1) % 97
    a, b = model(ids)[0], model(changed)[0]
    assert_close(a[:, :12], b[:, :12], atol=1e-6)
    assert (a[:, 12:] - b[:, 12:]).abs().amax(-1).min() > 1e-4  # every later position sees it


def test_weight_tying_is_one_tensor_and_both_uses_reach_its_gradient(tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.wte.weight
    ids, targets = torch.randint(0, 97, (2, 10)), torch.randint(0, 97, (2, 10))
    tiny_model(ids, targets)[1].backward()
    tied_grad = tiny_model.wte.weight.grad
    # The same model untied: the tied gradient is the sum of the embedding's and the head's.
    untied = GPT2(tiny_model.config).eval()
    untied.load_state_dict(tiny_model.state_dict())
    untied.lm_head.weight = nn.Parameter(untied.wte.weight.detach().clone())
    untied(ids, targets)[1].backward()
    assert_close(tied_grad, untied.wte.weight.grad + untied.lm_head.weight.grad, atol=1e-7)
    assert untied.wte.weight.grad.abs().sum() > 0 and untied.lm_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("rope", [False, True])
def test_gradients_reach_every_parameter(tiny_config, rope):
    model = GPT2(GPT2Config(**{**tiny_config.__dict__, "rope": rope}))
    ids = torch.randint(0, 97, (2, tiny_config.block_size))  # the whole context: every wpe row is used
    model(ids, torch.randint(0, 97, ids.shape))[1].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert (model.wpe is None) == rope


def test_gpt2_initialisation():
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=2000, n_layer=8, n_head=4, n_embd=256, block_size=64))
    residual_std = 0.02 / (2 * 8) ** 0.5
    for block in model.decoder.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.03)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.03)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.03)
        assert not block.attn.c_attn.bias.any() and torch.equal(block.ln_1.weight, torch.ones(256))
    assert model.wte.weight[:2000].std().item() == pytest.approx(0.02, rel=0.03)


def test_vocab_is_padded_to_a_multiple_of_64_and_the_padding_is_invisible(tiny_config):
    torch.manual_seed(0)
    model = GPT2(tiny_config)  # vocab 97 -> 128 rows
    assert tiny_config.padded_vocab_size == 128 and model.wte.weight.shape == (128, 32)
    assert not model.wte.weight[97:].any()
    assert GPT2Config(vocab_size=50257).padded_vocab_size == 50304
    assert GPT2Config(vocab_size=50304).padded_vocab_size == 50304
    ids = torch.randint(0, 97, (2, 10))
    logits, loss = model(ids, ids)
    assert logits.shape == (2, 10, 97)  # the user-facing vocabulary is unchanged
    assert_close(loss, F.cross_entropy(logits.reshape(-1, 97), ids.reshape(-1)), atol=1e-6)
    loss.backward()
    assert not model.wte.weight.grad[97:].any()  # never a target, never an input: no gradient
    # Even if the padding rows held large weights, no padded id could be sampled.
    with torch.no_grad():
        model.wte.weight[97:] = 100.0
    out = model.generate(ids[:1], 20, temperature=1.0, top_k=None, seed=0)
    assert out.max().item() < 97
    assert model.generate(ids[:1], 5, temperature=0).max().item() < 97


def test_an_unpadded_embedding_loads_with_zero_padding(tiny_config):
    torch.manual_seed(0)
    model = GPT2(tiny_config)
    state = model.state_dict()
    state["wte.weight"] = state["lm_head.weight"] = state["wte.weight"][:97].clone()  # as saved before padding
    other = GPT2(tiny_config)
    other.load_state_dict(state)
    assert torch.equal(other.wte.weight, model.wte.weight) and other.lm_head.weight is other.wte.weight


def test_flops_per_token_counts_6n_plus_attention():
    config = GPT2Config(vocab_size=50257, n_layer=6, n_head=6, n_embd=384, block_size=256)
    model = GPT2(config)
    matmul_weights = model.num_parameters() - 256 * 384  # the position table is a lookup
    assert model.flops_per_token() == 6 * matmul_weights + 12 * 6 * 384 * 256
    assert GPT2(GPT2Config.from_preset("tiny", rope=True)).flops_per_token() == (
        6 * GPT2(GPT2Config.from_preset("tiny", rope=True)).num_parameters() + 12 * 2 * 64 * 64)


def test_the_original_keyword_arguments_build_the_same_config():
    model = GPT2(vocab_size=300, embedding_dim=48, num_layers=3, num_heads=6, max_seq_len=32, dropout=0.1)
    assert model.config == GPT2Config(vocab_size=300, n_embd=48, n_layer=3, n_head=6, block_size=32, dropout=0.1)
    with pytest.raises(TypeError, match="unexpected arguments \\['n_heads'\\]"):
        GPT2(vocab_size=300, n_heads=4)
    with pytest.raises(TypeError, match="not both"):
        GPT2(GPT2Config(), vocab_size=300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cross_entropy_equals_torchs(dtype):
    torch.manual_seed(0)
    logits = (3 * torch.randn(50, 1000)).to(dtype).requires_grad_()
    targets = torch.randint(0, 1000, (50,))
    targets[[3, 17]] = -100  # ignored positions
    loss = cross_entropy(logits, targets)
    (2.5 * loss).backward()  # a scale, as gradient accumulation gives
    fused_grad, logits.grad = logits.grad, None
    expected = F.cross_entropy(logits.float(), targets)
    (2.5 * expected).backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert fused_grad.dtype == dtype
    # float32: rounding only; bfloat16: at most two steps of its 8-bit mantissa at the largest value.
    atol = 1e-7 if dtype == torch.float32 else 2**-7 * logits.grad.abs().max().item()
    assert_close(fused_grad, logits.grad, atol=atol)
    assert not fused_grad[[3, 17]].any()


def test_bf16_autocast_forward_and_backward(tiny_model):
    ids = torch.randint(0, 97, (2, 16))
    reference = tiny_model(ids)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = tiny_model(ids, ids)
        loss.backward()
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert_close(logits, reference, atol=0.05)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tiny_model.parameters())


@pytest.mark.slow
def test_compiles_without_graph_breaks(tiny_model):
    compiled = torch.compile(tiny_model, fullgraph=True)  # fullgraph: a graph break is an error
    ids = torch.randint(0, 97, (2, 16))
    logits, loss = compiled(ids, ids)
    assert_close(logits, tiny_model(ids)[0], atol=1e-5)
    loss.backward()


# ---- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize("rope", [False, True])
def test_cached_generation_equals_full_recompute_past_the_context(tiny_config, rope):
    torch.manual_seed(0)
    model = GPT2(GPT2Config(**{**tiny_config.__dict__, "rope": rope})).eval()
    prompt = torch.randint(0, 97, (2, 10))
    # 10 + 40 tokens: the 24-token context fills, then the window slides.
    assert torch.equal(model.generate(prompt, 40, temperature=0), greedy_by_full_recompute(model, prompt, 40))


def test_generation_under_bf16_autocast(tiny_model):
    prompt = torch.randint(0, 97, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model.generate(prompt, 1, greedy=True)
        expected = tiny_model(prompt)[0][:, -1].argmax(-1)
    assert torch.equal(out[:, -1], expected)


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens(tiny_model):
    prompt = torch.randint(0, 97, (1, 60))
    out = tiny_model.generate(prompt, 5, greedy=True)
    assert torch.equal(out[:, :60], prompt)
    assert torch.equal(out[:, 60:], tiny_model.generate(prompt[:, -24:], 5, greedy=True)[:, 24:])


def test_same_seed_same_tokens_and_the_output_forms(tiny_model):
    a = tiny_model.generate([1, 2, 3], 30, temperature=1.0, top_k=None, seed=7)
    assert a == tiny_model.generate([1, 2, 3], 30, temperature=1.0, top_k=None, seed=7)
    assert a != tiny_model.generate([1, 2, 3], 30, temperature=1.0, top_k=None, seed=8)
    assert isinstance(a, list) and len(a) == 33 and a[:3] == [1, 2, 3]
    streamed = list(tiny_model.generate_stream([1, 2, 3], 30, temperature=1.0, top_k=None, seed=7))
    assert streamed == a[3:]
    assert tiny_model.generate(torch.tensor([1, 2, 3]), 4, seed=0).shape == (7,)
    assert tiny_model.generate(torch.tensor([[1, 2, 3]] * 2), 4, seed=0).shape == (2, 7)


def test_stop_token_ends_generation(tiny_model):
    free = tiny_model.generate([5, 6], 20, greedy=True)
    stop = free[2 + 6]  # the 7th new token (it may also appear earlier)
    first = free.index(stop, 2)
    assert tiny_model.generate([5, 6], 20, greedy=True, stop_token=stop) == free[: first + 1]
    assert list(tiny_model.generate_stream([5, 6], 20, greedy=True, stop_token=stop)) == free[2 : first + 1]


def test_zero_new_tokens_returns_the_prompt(tiny_model):
    assert tiny_model.generate([4, 5], 0) == [4, 5]
    assert list(tiny_model.generate_stream([4, 5], 0)) == []


def test_generation_leaves_the_training_mode_as_it_was(tiny_model):
    tiny_model.train()
    tiny_model.generate([1], 3)
    assert tiny_model.training


def draws(logits, n=2000, **kwargs):
    generator = torch.Generator().manual_seed(0)
    batch = logits.expand(n, -1)
    return set(sample_next_token(batch, generator=generator, **kwargs).view(-1).tolist())


def test_top_k_keeps_only_the_k_most_likely():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5, -1.0, 2.9, 0.5]])
    assert draws(logits, temperature=1.0, top_k=3, top_p=None) == {1, 3, 5}
    assert draws(logits, temperature=1.0, top_k=1, top_p=None) == {1}
    assert draws(logits, temperature=1.0, top_k=None, top_p=None) == set(range(7))


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()  # probabilities 0.5, 0.3, 0.15, 0.05
    assert draws(logits, temperature=1.0, top_k=None, top_p=0.5) == {1}
    assert draws(logits, temperature=1.0, top_k=None, top_p=0.7) == {1, 3}
    assert draws(logits, temperature=1.0, top_k=None, top_p=0.9) == {0, 1, 3}
    assert draws(logits, temperature=1.0, top_k=2, top_p=0.9) == {1, 3}  # top-k first, then top-p
    assert draws(logits, temperature=0.0, top_k=None, top_p=None) == {1}  # greedy


def test_out_of_range_ids_name_the_id_and_the_vocab_size(tiny_model):
    with pytest.raises(ValueError, match=r"token id 97 is out of range for a model with vocab_size 97"):
        tiny_model(torch.tensor([[1, 97, 3]]))
    with pytest.raises(ValueError, match=r"token id -1 is out of range for a model with vocab_size 97"):
        tiny_model.generate([1, -1], 3)
    with pytest.raises(ValueError, match=r"token id 500 is out of range .* vocab_size 97"):
        list(tiny_model.generate_stream([500], 3))


def test_bad_generation_arguments_are_refused(tiny_model):
    with pytest.raises(ValueError, match="at least one token id"):
        tiny_model.generate([], 5)
    with pytest.raises(ValueError, match=r"max_new_tokens \(num_tokens\) must be 0 or more, got -1"):
        tiny_model.generate([1], -1)
    with pytest.raises(ValueError, match="--temperature"):
        tiny_model.generate([1], 2, temperature=-0.5)
    with pytest.raises(ValueError, match="--top-k"):
        tiny_model.generate([1], 2, top_k=0)
    with pytest.raises(ValueError, match="--top-p"):
        tiny_model.generate([1], 2, top_p=1.5)
    with pytest.raises(ValueError, match="stop_token 97 is out of range"):
        tiny_model.generate([1], 2, stop_token=97)
    with pytest.raises(ValueError, match="30 tokens do not fit the context of 24 \\(--context\\)"):
        tiny_model(torch.zeros(1, 30, dtype=torch.long))


def test_generation_head_cache_follows_weight_updates():
    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_preset("tiny", vocab_size=64)).eval()
    prompt = torch.tensor([[1, 2, 3]])
    first = model.generate(prompt, 5, temperature=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # an in-place update, as an optimizer step makes: every logit 0
    again = model.generate(prompt, 5, temperature=0)
    fresh = GPT2(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(again, fresh.generate(prompt, 5, temperature=0))
    assert again[0, 3:].tolist() == [0] * 5 and not torch.equal(first, again)


@pytest.mark.parametrize("variant", [{}, {"rope": True}, {"bias": False}, {"n_inner": 40}])
def test_the_one_token_generation_step_equals_the_general_one(tiny_config, variant):
    from dataclasses import replace

    from gpt2_llm.attention import KVCache

    torch.manual_seed(0)
    model = GPT2(replace(tiny_config, **variant)).eval()
    head = model._generation_head(None)
    prompt, new = torch.randint(0, 97, (3, 7)), torch.randint(0, 97, (3, 1))
    general, lean = ([KVCache(24) for _ in model.decoder.h] for _ in range(2))
    with torch.no_grad():
        model._next_logits(prompt, general, head)
        model._next_logits(prompt, lean, head)
        for _ in range(3):  # a few steps, so the cached positions move on alike
            expected = model._next_logits(new, general, head)
            got = model._next_logits_one(new, lean, head)
            assert_close(got, expected, atol=1e-5)
            new = got.argmax(-1, keepdim=True)
    assert lean[0].length == general[0].length == 10


@pytest.mark.parametrize("path", ["chunked", "fused kernel"])
def test_cross_entropy_leaves_the_padding_columns_out(path, monkeypatch):
    if path == "fused kernel":  # the path a GPU or the compiler takes
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.manual_seed(0)
    padded = torch.randn(40, 128).requires_grad_()
    targets = torch.randint(0, 97, (40,))
    loss = cross_entropy(padded, targets, 97)
    loss.backward()
    real = padded.detach()[:, :97].clone().requires_grad_()
    expected = F.cross_entropy(real, targets)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert_close(padded.grad[:, :97], real.grad, atol=1e-7)
    assert not padded.grad[:, 97:].any()


@pytest.mark.parametrize("path", ["chunked", "fused kernel"])
def test_ignored_targets_get_no_gradient_and_the_loss_is_the_mean_of_the_others(path, monkeypatch):
    """The loss mask of instruction records: targets of -100 (a prompt, padding) are left out."""
    if path == "fused kernel":  # the path a GPU or the compiler takes
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.manual_seed(0)
    logits = torch.randn(12, 128).requires_grad_()
    targets = torch.randint(0, 97, (12,))
    masked = targets.clone()
    masked[:7] = -100  # a prompt of 7 positions, then a response of 5
    loss = cross_entropy(logits, masked, 97)
    loss.backward()
    log_p = logits.detach()[:, :97].log_softmax(dim=-1)
    by_hand = -sum(log_p[i, targets[i]] for i in range(7, 12)) / 5  # divided by the 5 counted, not by 12
    assert loss.item() == pytest.approx(by_hand.item(), abs=1e-6)
    assert not logits.grad[:7].any()  # exactly zero: the prompt's predictions are not trained
    assert (logits.grad[7:, :97].abs().sum(dim=1) > 0).all()
    other = logits.detach().clone()
    other[:7] = 100 * torch.randn(7, 128)  # whatever the model predicts at the prompt's positions
    assert cross_entropy(other, masked, 97).item() == pytest.approx(loss.item(), abs=1e-6)
