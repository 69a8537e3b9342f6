import math

import torch
from torch import nn

from gpt2_llm import GPT2Config
from gpt2_llm.attention import KVCache
from gpt2_llm.decoder import MLP, DecoderBlock, GPT2Decoder
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


def test_decoder_with_caches_equals_the_whole_sequence():
    torch.manual_seed(0)
    decoder = GPT2Decoder(num_layers=2, embedding_dim=16, num_heads=2).eval()
    x = torch.randn(1, 7, 16)
    caches = [KVCache(8), KVCache(8)]
    steps = torch.cat([decoder(x[:, t : t + 1], caches) for t in range(7)], dim=1)
    assert_close(steps, decoder(x), atol=1e-5)
    assert [c.length for c in caches] == [7, 7]
