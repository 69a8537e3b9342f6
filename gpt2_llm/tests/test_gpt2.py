import re
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpt2_llm import GPT2, GPT2Config, load, save_model
from gpt2_llm.export import write_model
from gpt2_llm.tests.conftest import assert_close


def greedy_by_full_recompute(model, ids, n):
    """The slow reference: run the whole (cropped) context again for every new token."""
    ids = ids.clone()
    for _ in range(n):
        logits, _ = model(ids[:, -model.config.block_size :])
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


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


# Each architecture option alone, and all of them at once (see README, "Architecture options").
OPTIONS = [{}, {"rope": True}, {"norm": "rmsnorm"}, {"mlp": "swiglu"}, {"mlp": "relu2"}, {"n_kv_head": 1},
           {"n_kv_head": 2}, {"qk_norm": True}, {"tie_embeddings": False}, {"bias": False},
           dict(rope=True, norm="rmsnorm", mlp="swiglu", n_kv_head=2, qk_norm=True, tie_embeddings=False, bias=False)]


def option_id(options: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in options.items()) or "gpt2"


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
def test_gradients_reach_every_parameter(tiny_config, options):
    model = GPT2(replace(tiny_config, **options))
    ids = torch.randint(0, 97, (2, tiny_config.block_size))  # the whole context: every wpe row is used
    model(ids, torch.randint(0, 97, ids.shape))[1].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not model.lm_head.weight.grad[:97].eq(0).all(dim=1).any()  # every real row of the head learns
    assert (model.wpe is None) == options.get("rope", False)


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
@pytest.mark.parametrize("options", [{}, "every option, recomputed"], ids=["gpt2", "options"])
def test_compiles_without_graph_breaks(tiny_config, options):
    torch.manual_seed(0)
    model = GPT2(replace(tiny_config, **(OPTIONS[-1] if options else {}))).eval()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break is an error
    ids = torch.randint(0, 97, (2, 16))
    logits, loss = compiled(ids, ids, recompute=bool(options))
    assert_close(logits, model(ids)[0], atol=1e-5)
    loss.backward()


# ---- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
def test_cached_generation_equals_full_recompute_past_the_context(tiny_config, options):
    torch.manual_seed(0)
    model = GPT2(replace(tiny_config, **options)).eval()
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


def test_a_model_made_in_inference_mode_generates_as_one_made_outside_it():
    """Weights made under torch.inference_mode() keep no version counter; the head's copy is keyed without it."""
    torch.manual_seed(0)
    outside = GPT2(GPT2Config.from_preset("tiny", vocab_size=64)).eval()
    with torch.inference_mode():
        inside = GPT2(outside.config).eval()
        inside.load_state_dict(outside.state_dict())
        assert inside.lm_head.weight.is_inference()
        out = inside.generate(torch.tensor([[1, 2, 3]]), 5, temperature=0)
    assert torch.equal(out, outside.generate(torch.tensor([[1, 2, 3]]), 5, temperature=0))


# ---- the generation API: new_cache, prefill, decode_step --------------------------------------


@pytest.mark.parametrize("variant", [*OPTIONS, {"n_inner": 40}, {"mlp": "swiglu", "n_inner": 40}], ids=option_id)
def test_prefill_then_decode_steps_give_the_forward_passs_logits_at_each_position(tiny_config, variant):
    torch.manual_seed(0)
    model = GPT2(replace(tiny_config, **variant)).eval()
    ids = torch.randint(0, 97, (3, 24))  # the whole context
    full = model(ids)[0]  # (3, 24, vocab)
    cache = model.new_cache(3)
    assert_close(model.prefill(ids[:, :7], cache), full[:, 6], atol=1e-5)  # float32
    for t in range(7, 24):
        assert_close(model.decode_step(ids[:, t], cache), full[:, t], atol=1e-5)
    assert cache.lengths == [24, 24, 24]
    kv_heads = variant.get("n_kv_head", 4)  # the cache holds the shared key/value heads only
    assert len(cache.k) == 2 and cache.k[1].shape == cache.v[1].shape == (3, kv_heads, 24, 8)


@pytest.mark.parametrize("options", [{}, dict(rope=True, n_kv_head=2, qk_norm=True)], ids=option_id)
def test_rows_of_different_lengths_in_one_step_each_get_their_own_logits_bit_for_bit(tiny_config, options):
    """Each row of a decode step, among rows of other lengths, equals the same row decoded alone,
    exactly, when both steps multiply the same number of rows (min_rows)."""
    torch.manual_seed(0)
    model = GPT2(replace(tiny_config, **options)).eval()
    lengths = [3, 17, 1, 9, 12]
    prompts = [torch.randint(0, 97, (1, n)) for n in lengths]
    new = torch.randint(0, 97, (5,))
    together = model.new_cache(5)
    for row, prompt in enumerate(prompts):
        model.prefill(prompt, together, rows=[row])
    logits = model.decode_step(new, together, min_rows=8)
    assert together.lengths == [n + 1 for n in lengths]
    for row, prompt in enumerate(prompts):
        alone = model.new_cache(1)
        model.prefill(prompt, alone)
        own = model.decode_step(new[row : row + 1], alone, min_rows=8)[0]
        diff = (own - logits[row]).abs().max().item()
        assert torch.equal(own, logits[row]), f"row {row}: largest difference {diff:.3g}"
        assert_close(own, model(torch.cat((prompt[0], new[row : row + 1]))[None])[0][0, -1], atol=1e-5)


def test_prefill_fills_a_row_again_from_the_start_and_refuses_what_does_not_fit(tiny_model):
    cache = tiny_model.new_cache(2)
    first, second = torch.randint(0, 97, (1, 10)), torch.randint(0, 97, (1, 4))
    tiny_model.prefill(torch.cat((first, first)), cache)
    again = tiny_model.prefill(second, cache, rows=[1])  # row 1 now holds `second` alone
    assert cache.lengths == [10, 4]
    assert_close(again[0], tiny_model(second)[0][0, -1], atol=1e-5)
    step = tiny_model.decode_step(torch.tensor([5, 6]), cache)
    assert_close(step[1], tiny_model(torch.cat((second[0], torch.tensor([6])))[None])[0][0, -1], atol=1e-5)
    with pytest.raises(ValueError, match="25 tokens do not fit the context of 24"):
        tiny_model.prefill(torch.zeros(1, 25, dtype=torch.long), cache)  # callers keep the prompt's end
    with pytest.raises(ValueError, match="token id 97 is out of range"):
        tiny_model.prefill(torch.tensor([[1, 97]]), cache)
    half_filled = tiny_model.new_cache(2)
    tiny_model.prefill(first, half_filled)
    with pytest.raises(ValueError, match=r"cache rows \[1\] are empty or fill the context \(24\)"):
        tiny_model.decode_step(torch.tensor([1, 2]), half_filled)


def test_prefill_and_decode_step_run_in_eval_mode_and_leave_the_mode_as_it_was(tiny_config):
    torch.manual_seed(0)
    model = GPT2(replace(tiny_config, dropout=0.5)).train()
    ids = torch.randint(0, 97, (2, 6))
    cache = model.new_cache(2)
    logits = model.prefill(ids, cache)
    assert model.training and model.decoder.h[0].attn.training  # given back as it was
    step = model.decode_step(ids[:, 0], cache)
    expected = model.eval()(torch.cat((ids, ids[:, :1]), dim=1))[0]  # no dropout drawn
    assert_close(logits, expected[:, 5], atol=1e-5)
    assert_close(step, expected[:, 6], atol=1e-5)
    assert not logits.requires_grad and logits.is_inference()


# ---- architecture options: sizes, FLOPs, the untied head -------------------------------------------


def test_swiglu_keeps_gpt2s_parameter_count_within_the_rounding():
    def count(**options):
        return GPT2(GPT2Config(vocab_size=100, n_layer=2, n_head=4, block_size=16, bias=False, **options)).num_parameters()

    # Width 96: 8/3 x 96 = 256 exactly, so 3 x 96 x 256 = 2 x 96 x 384, weight for weight.
    assert count(n_embd=96, mlp="swiglu") == count(n_embd=96)
    # Width 64: 170.7 rounds to 192, 3 x 64 x 192 - 2 x 64 x 256 = 4,096 more a layer (at most 3 x 32 x 64).
    assert count(n_embd=64, mlp="swiglu") - count(n_embd=64) == 2 * 4096
    assert count(n_embd=64, mlp="relu2") == count(n_embd=64)


def test_grouped_query_attention_narrows_only_the_key_value_projection():
    config = GPT2Config(vocab_size=100, n_layer=2, n_head=4, n_embd=32, block_size=16)
    full, shared = GPT2(config), GPT2(replace(config, n_kv_head=1))
    assert shared.decoder.h[0].attn.c_attn.weight.shape == (32 + 2 * 8, 32)
    # Two layers, each with keys and values 3 heads x 8 narrower: weights and biases.
    assert full.num_parameters() - shared.num_parameters() == 2 * (2 * 24 * 32 + 2 * 24)


def test_the_untied_head_is_its_own_matrix_drawn_as_the_embedding_and_padded_alike(tiny_config):
    torch.manual_seed(0)
    tied = GPT2(tiny_config)
    torch.manual_seed(0)
    untied = GPT2(replace(tiny_config, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.wte.weight and untied.lm_head.weight.shape == (128, 32)
    assert untied.num_parameters() == tied.num_parameters() + 97 * 32  # vocab x n_embd more, padding left out
    assert not untied.lm_head.weight[97:].any() and not untied.wte.weight[97:].any()
    assert untied.lm_head.weight[:97].std().item() == pytest.approx(0.02, rel=0.1)
    # Drawn last, so every other weight is the tied model's of the same seed.
    untied_state, tied_state = untied.state_dict(), tied.state_dict()
    for name in tied_state:
        if name not in ("wte.weight", "lm_head.weight"):
            assert torch.equal(untied_state[name], tied_state[name]), name
    assert torch.equal(untied.lm_head.weight, tied.lm_head.weight)  # the tied matrix's last draw
    ids = torch.randint(0, 97, (2, 10))
    untied(ids, ids)[1].backward()
    assert not untied.lm_head.weight.grad[97:].any()  # the padding rows are never a target


def test_flops_per_token_counts_the_real_matrices_of_the_options():
    config = GPT2Config(vocab_size=100, n_layer=2, n_head=4, n_embd=32, block_size=16, mlp="swiglu", n_kv_head=2,
                        tie_embeddings=False, rope=True, bias=False, norm="rmsnorm", qk_norm=True)  # fmt: skip
    # Per layer: c_attn 32 x (32 + 2 x 2 heads x 8) = 2,048, c_proj 32 x 32 = 1,024, SwiGLU's three
    # matrices 3 x 32 x 64 = 6,144, the gains of two norms (2 x 32) and QK-norm (2 x 8): 9,296.
    # Two layers, the final norm's 32 and the untied head's 100 x 32 (the embedding is a lookup,
    # and RoPE has no position table): N = 18,592 + 32 + 3,200 = 21,824.
    # FLOPs per token = 6N + 12 x 2 layers x 32 x 16 = 130,944 + 12,288.
    assert GPT2(config).flops_per_token() == 143_232


def test_bf16_autocast_with_every_option(tiny_config):
    torch.manual_seed(0)
    model = GPT2(replace(tiny_config, **OPTIONS[-1])).eval()
    ids = torch.randint(0, 97, (2, 16))
    reference = model(ids)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # SDPA in bf16, the key/value heads shared
        logits, loss = model(ids, ids)
        loss.backward()
        out = model.generate(ids[:, :8], 4, greedy=True)
    assert logits.dtype == torch.bfloat16 and out.shape == (2, 12)
    assert_close(logits, reference, atol=0.05)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
def test_a_saved_model_of_any_options_loads_back_with_its_config_and_weights(tiny_config, options, tmp_path):
    model = GPT2(replace(tiny_config, **options))
    save_model(model, tmp_path / "m.pt")
    again = load(tmp_path / "m.pt").model
    assert again.config == replace(tiny_config, **options)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_save_hf_refuses_options_no_transformers_class_holds(tmp_path):
    config = GPT2Config(vocab_size=10, n_layer=1, n_head=2, n_embd=8, block_size=8, mlp="swiglu", qk_norm=True)
    with pytest.raises(ValueError, match=re.escape("cannot export the model: transformers has no class for its shape: "
                                                   "it is not GPT-2's (it has swiglu MLP, QK-norm), Llama's (it "
                                                   "has LayerNorm, learned positions, biases, QK-norm), Qwen3's (it "
                                                   "has LayerNorm, learned positions, biases) nor Apertus's")):
        write_model(GPT2(config), tmp_path)
    assert not list(tmp_path.iterdir())


def test_label_smoothing_is_the_callers_setting_and_plain_cross_entropy_by_default(tiny_model):
    ids = torch.randint(0, 97, (2, 10))
    tiny_model.eval()
    logits, plain = tiny_model(ids[:, :-1], ids[:, 1:])
    _, smoothed = tiny_model(ids[:, :-1], ids[:, 1:], label_smoothing=0.2)
    flat = logits.reshape(-1, logits.size(-1))
    assert plain.item() == pytest.approx(F.cross_entropy(flat, ids[:, 1:].reshape(-1)).item(), abs=1e-5)
    expected = F.cross_entropy(flat, ids[:, 1:].reshape(-1), label_smoothing=0.2)
    assert smoothed.item() == pytest.approx(expected.item(), abs=1e-5)
