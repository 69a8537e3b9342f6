import math

import pytest
import torch
from torch import nn

from gpt2_llm import GPT2Config
from gpt2_llm.attention import KVCache
from gpt2_llm.decoder import MLP, DecoderBlock, GPT2Decoder, make_norm
from gpt2_llm.tests.conftest import assert_close


def test_mlp_is_gpt2s_tanh_gelu_between_two_projections():
    torch.manual_seed(0)
    mlp = MLP(GPT2Config(n_embd=8, n_head=1)).eval()
    assert mlp.c_fc.weight.shape == (32, 8)  # 4x wider by default
    x = torch.randn(2, 3, 8)
    h = mlp.c_fc(x)
    # GELU as GPT-2's code writes it out (transformers' "gelu_new").
    gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    assert_close(mlp(x), mlp.c_proj(gelu), atol=1e-6)


def test_block_is_pre_ln_so_zeroed_branches_leave_the_stream_untouched():
    torch.manual_seed(0)
    block = DecoderBlock(GPT2Config(n_embd=16, n_head=2)).eval()
    x = 3 + 5 * torch.randn(2, 4, 16)  # far from normalised
    for proj in (block.attn.c_proj, block.mlp.c_proj):
        nn.init.zeros_(proj.weight)
        nn.init.zeros_(proj.bias)
    # Pre-LN: x + f(LN(x)). A post-LN block, LN(x + f(x)), would normalise x here.
    assert torch.equal(block(x), x)


def test_block_adds_attention_then_mlp():
    torch.manual_seed(0)
    block = DecoderBlock(GPT2Config(n_embd=16, n_head=2)).eval()
    x = torch.randn(2, 4, 16)
    after_attn = x + block.attn(block.ln_1(x))
    assert_close(block(x), after_attn + block.mlp(block.ln_2(after_attn)))


def test_decoder_takes_the_original_keyword_arguments_and_gpt2_names():
    decoder = GPT2Decoder(num_layers=3, embedding_dim=32, num_heads=4, feedforward_dim=80, dropout=0.1)
    assert len(decoder.h) == 3
    assert decoder.h[2].mlp.c_fc.weight.shape == (80, 32)
    assert decoder.h[0].attn.num_heads == 4 and decoder.h[0].attn.dropout == 0.1
    names = {name.split(".", 2)[2] for name, _ in decoder.named_parameters()}
    assert names == {
        "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
        "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
        "mlp.c_proj.weight", "mlp.c_proj.bias",
    }  # fmt: skip


def test_every_module_reads_the_config():
    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, block_size=12, n_inner=40, dropout=0.1, attn_dropout=0.3,
                        bias=False, rope=True, rope_base=500.0, layer_norm_eps=1e-3)  # fmt: skip
    decoder = GPT2Decoder(config)
    assert len(decoder.h) == 2
    for block in decoder.h:
        attn, mlp = block.attn, block.mlp
        assert attn.num_heads == 2 and attn.c_attn.weight.shape == (48, 16)
        assert attn.dropout == 0.3 and attn.resid_dropout.p == 0.1 and mlp.dropout.p == 0.1
        assert mlp.c_fc.weight.shape == (40, 16) and mlp.c_proj.weight.shape == (16, 40)
        assert block.ln_1.eps == block.ln_2.eps == 1e-3
        # RoPE over the whole context, head size 8: frequencies 500^(-i/4) for the 4 channel pairs.
        assert attn.rope.cos.shape == (12, 4)
        assert_close(attn.rope.sin[1], torch.tensor([500.0 ** (-i / 4) for i in range(4)]).sin())
    assert all(getattr(m, "bias", None) is None for m in decoder.modules() if isinstance(m, (nn.Linear, nn.LayerNorm)))
    # The defaults: attention dropout as dropout (GPT-2), learned positions (no rope in the blocks).
    plain = GPT2Decoder(GPT2Config(n_layer=1, n_embd=16, n_head=2, dropout=0.2))
    assert plain.h[0].attn.dropout == 0.2 and plain.h[0].attn.rope is None


def test_decoder_without_bias_has_no_bias_parameters():
    decoder = GPT2Decoder(num_layers=1, embedding_dim=16, num_heads=2, bias=False)
    assert not [name for name, _ in decoder.named_parameters() if name.endswith("bias")]


def test_decoder_with_a_cache_equals_the_whole_sequence():
    torch.manual_seed(0)
    decoder = GPT2Decoder(num_layers=2, embedding_dim=16, num_heads=2).eval()
    x = torch.randn(1, 7, 16)
    cache = KVCache(n_layer=2, rows=1, max_len=8)
    steps = []
    for t in range(7):
        steps.append(decoder(x[:, t : t + 1], cache, rows=[0]))
        cache.advance([0], 1)
    assert_close(torch.cat(steps, dim=1), decoder(x), atol=1e-5)
    assert cache.lengths == [7] and all(k.shape == (1, 2, 8, 8) for k in cache.k)  # every layer wrote its own


# ---- architecture options ------------------------------------------------------------------------


def test_rmsnorm_is_the_written_out_formula_with_a_gain_and_no_bias():
    torch.manual_seed(0)
    block = DecoderBlock(GPT2Config(n_embd=16, n_head=2, norm="rmsnorm")).eval()
    assert isinstance(block.ln_1, nn.RMSNorm) and [name for name, _ in block.ln_1.named_parameters()] == ["weight"]
    with torch.no_grad():
        block.ln_1.weight.uniform_(0.5, 1.5)
    x = 3 + 2 * torch.randn(2, 4, 16)  # a mean far from 0: RMSNorm does not remove it, LayerNorm would
    expected = x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * block.ln_1.weight
    assert_close(block.ln_1(x), expected, atol=1e-5)


def test_layernorm_without_bias_has_no_bias_and_rmsnorm_never_has_one():
    for bias in (True, False):
        assert (make_norm(GPT2Config(n_embd=8, n_head=1, bias=bias)).bias is None) == (not bias)
        assert not hasattr(make_norm(GPT2Config(n_embd=8, n_head=1, bias=bias, norm="rmsnorm")), "bias")


def test_swiglu_is_silu_of_the_gate_times_the_value_projected_back():
    torch.manual_seed(0)
    mlp = MLP(GPT2Config(n_embd=64, n_head=1, mlp="swiglu")).eval()
    # Llama's layout: gate (c_fc) and value (c_fc2) each 64 -> 192, then 192 -> 64 (c_proj).
    assert mlp.c_fc.weight.shape == mlp.c_fc2.weight.shape == (192, 64) and mlp.c_proj.weight.shape == (64, 192)
    x = torch.randn(2, 3, 64)
    gate, value = x @ mlp.c_fc.weight.T + mlp.c_fc.bias, x @ mlp.c_fc2.weight.T + mlp.c_fc2.bias
    expected = (gate * torch.sigmoid(gate) * value) @ mlp.c_proj.weight.T + mlp.c_proj.bias
    assert_close(mlp(x), expected, atol=1e-5)


def test_relu2_is_the_square_of_relu_between_two_projections():
    torch.manual_seed(0)
    mlp = MLP(GPT2Config(n_embd=16, n_head=1, mlp="relu2")).eval()
    assert mlp.c_fc.weight.shape == (64, 16) and mlp.c_fc2 is None  # 4x wide, as GPT-2's
    x = torch.randn(2, 3, 16)
    h = x @ mlp.c_fc.weight.T + mlp.c_fc.bias
    expected = (torch.where(h > 0, h, 0.0) ** 2) @ mlp.c_proj.weight.T + mlp.c_proj.bias
    assert_close(mlp(x), expected, atol=1e-6)


ALL_OPTIONS = dict(norm="rmsnorm", mlp="swiglu", n_kv_head=1, qk_norm=True, rope=True, bias=False)


@pytest.mark.parametrize("options", [{}, ALL_OPTIONS])
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(options, monkeypatch):
    from gpt2_llm import decoder as decoder_module

    config = GPT2Config(n_layer=3, n_embd=32, n_head=4, block_size=16, dropout=0.2, **options)
    x, weights = torch.randn(2, 16, 32), torch.randn(2, 16, 32)
    results = []
    for recompute in (False, True):
        torch.manual_seed(0)  # the same weights, and the same dropout masks
        decoder = GPT2Decoder(config).train()
        inputs = x.clone().requires_grad_()
        loss = (decoder(inputs, recompute=recompute) * weights).sum()
        loss.backward()
        results.append((loss, inputs.grad, [p.grad for p in decoder.parameters()]))
    (plain_loss, plain_input_grad, plain_grads), (loss, input_grad, grads) = results
    # The same operations on the same numbers: equal to the last bit.
    assert torch.equal(loss, plain_loss) and torch.equal(input_grad, plain_input_grad)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))
    # ...and each block did run under torch.utils.checkpoint, only when gradients are taken.
    calls = []
    monkeypatch.setattr(decoder_module, "checkpoint", lambda block, x, **kw: calls.append(kw) or block(x))
    decoder(x, recompute=True)
    assert calls == [{"use_reentrant": False}] * 3
    decoder(x)
    with torch.no_grad():
        decoder(x, recompute=True)
    decoder(x[:, :4], KVCache(n_layer=3, rows=2, max_len=16), rows=[0, 1], recompute=True)
    assert len(calls) == 3


def test_gradient_checkpointing_keeps_fewer_tensors_for_the_backward_pass():
    config = GPT2Config(n_layer=4, n_embd=32, n_head=4, block_size=16)
    decoder, x = GPT2Decoder(config).train(), torch.randn(2, 16, 32, requires_grad=True)

    def saved_values(recompute: bool) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            decoder(x, recompute=recompute)
        return sum(sizes)

    # Without recomputation every block keeps its intermediates (norms, q, k, v, the MLP's 4x-wide
    # activations: over 20 x 32 values a token); with it the graph keeps each block's input alone.
    assert saved_values(False) > 20 * 32 * 2 * 16 * 4
    assert saved_values(True) == 4 * 2 * 16 * 32
