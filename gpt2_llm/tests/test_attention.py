import math

import pytest
import torch
import torch.nn.functional as F

from gpt2_llm import GPT2Config
from gpt2_llm.attention import KVCache, QKVAttention, RotaryPositionEmbedding, manual_attention, repeat_kv
from gpt2_llm.tests.conftest import assert_close


def test_rope_rotates_each_pair_by_position_times_frequency():
    rope = RotaryPositionEmbedding(head_size=4, max_seq_len=8, base=100.0)
    x = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)  # pairs (x0, x2) and (x1, x3), each (1, 0)
    for position in (0, 3, 7):
        out = rope(x, offset=position).view(4)
        # Frequencies 1 and 100^(-2/4) = 0.1; the pair (1, 0) turns into (cos a, sin a).
        a, b = position * 1.0, position * 0.1
        expected = torch.tensor([math.cos(a), math.cos(b), math.sin(a), math.sin(b)])
        assert_close(out, expected)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryPositionEmbedding(head_size=16, max_seq_len=64)
    q, k = torch.randn(2, 1, 1, 1, 16)

    def score(m, n):
        return (rope(q, offset=m) * rope(k, offset=n)).sum().item()

    for m, n in [(5, 2), (9, 9), (3, 11)]:
        for shift in (1, 7, 40):
            assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-5)
    # ...and it does depend on the distance, so the rotation is not a no-op.
    assert abs(score(5, 2) - score(5, 3)) > 1e-3
    assert_close(rope(q, offset=0), q)
    assert rope(q, offset=10).norm().item() == pytest.approx(q.norm().item(), rel=1e-6)  # a rotation


def test_rope_offset_matches_the_slice_of_a_longer_sequence():
    rope = RotaryPositionEmbedding(head_size=8, max_seq_len=32)
    x = torch.randn(2, 3, 10, 8)  # (B, nh, T, hs)
    assert_close(rope(x)[:, :, 4:], rope(x[:, :, 4:], offset=4))


def test_rope_with_an_offset_per_row_rotates_each_row_as_its_own_offset_would():
    rope = RotaryPositionEmbedding(head_size=8, max_seq_len=32)
    x = torch.randn(3, 2, 2, 8)  # (B, nh, T, hs)
    out = rope(x, offset=torch.tensor([0, 7, 30]))
    for row, offset in enumerate((0, 7, 30)):
        assert torch.equal(out[row : row + 1], rope(x[row : row + 1], offset=offset))


def test_rope_refuses_an_odd_head_size():
    with pytest.raises(ValueError, match="even head size, got 5"):
        RotaryPositionEmbedding(head_size=5, max_seq_len=8)


@pytest.mark.parametrize("prefix", [0, 5])
def test_manual_attention_equals_sdpa(prefix):
    torch.manual_seed(0)
    q = torch.randn(2, 3, 4, 8)
    k, v = torch.randn(2, 2, 3, prefix + 4, 8)
    mask = torch.ones(4, prefix + 4, dtype=torch.bool).tril(diagonal=prefix)
    assert_close(manual_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5)
    if prefix == 0:
        assert_close(manual_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-5)


@pytest.mark.parametrize("heads", [(4, 4), (4, 2)], ids=["one key/value head per query head", "shared ones"])
def test_manual_attentions_gradients_equal_sdpas(heads):
    """The training path on a CPU in bf16: its gradients too, for every input, from views as the
    layer makes them (heads split from a wider tensor, not contiguous)."""
    torch.manual_seed(0)
    nh, nkv = heads
    x = torch.randn(2, 6, (nh + 2 * nkv) * 8, dtype=torch.float64)
    grads = []
    for attention in (manual_attention, lambda q, k, v: F.scaled_dot_product_attention(
            q, repeat_kv(k, nh // nkv), repeat_kv(v, nh // nkv), is_causal=True)):  # fmt: skip
        leaf = x.clone().requires_grad_()
        q, k, v = leaf.split((nh * 8, nkv * 8, nkv * 8), dim=-1)
        q, k, v = (t.view(2, 6, -1, 8).transpose(1, 2) for t in (q, k, v))
        out = attention(q, k, v)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out))
        grads.append((out.detach(), leaf.grad))
    assert_close(grads[0][0], grads[1][0], atol=1e-6)
    assert_close(grads[0][1], grads[1][1], atol=1e-6)


@pytest.mark.parametrize("options", [{"rope": False}, {"rope": True}, {"rope": True, "n_kv_head": 1},
                                     {"rope": True, "n_kv_head": 2, "qk_norm": True}, {"rope": True, "qk_norm": True}])
def test_kv_cache_gives_the_same_outputs_as_the_whole_sequence(options):
    torch.manual_seed(0)
    attn = QKVAttention(GPT2Config(n_embd=32, n_head=4, block_size=16, **options)).eval()
    x = torch.randn(2, 12, 32)
    full = attn(x)
    # A prompt of 5, then one token at a time, as in generation.
    cache = KVCache(n_layer=3, rows=2, max_len=16)
    outputs = [attn(x[:, :5], cache, layer=1, rows=[0, 1])]
    cache.advance([0, 1], 5)
    for t in range(5, 12):
        outputs.append(attn(x[:, t : t + 1], cache, layer=1, rows=[0, 1]))
        cache.advance([0, 1], 1)
    assert_close(torch.cat(outputs, dim=1), full, atol=1e-5)
    kv_heads = options.get("n_kv_head", 4)  # the cache holds the shared heads only
    assert cache.lengths == [12, 12] and cache.k[1].shape == cache.v[1].shape == (2, kv_heads, 16, 8)
    assert cache.k[0] is None and cache.k[2] is None  # a layer takes its memory at its first write


def test_one_new_token_per_row_attends_to_its_own_rows_keys_at_its_own_position():
    torch.manual_seed(0)
    attn = QKVAttention(GPT2Config(n_embd=32, n_head=4, block_size=16, rope=True, n_kv_head=2)).eval()
    a, b = torch.randn(1, 9, 32), torch.randn(1, 4, 32)
    cache = KVCache(n_layer=1, rows=3, max_len=16)
    attn(a[:, :8], cache, rows=[2])  # row 2 holds a's first 8 tokens, row 0 b's first 3
    attn(b[:, :3], cache, rows=[0])
    cache.advance([2], 8)
    cache.advance([0], 3)
    cache.move(2, 1)  # row 1 takes row 2's sequence
    assert cache.lengths == [3, 8, 8] and torch.equal(cache.k[0][1, :, :8], cache.k[0][2, :, :8])
    padding = torch.randn(1, 1, 32)  # a third input row past the cache rows named: computed, not stored
    y = attn(torch.cat((b[:, 3:], a[:, 8:], padding)), cache, rows=[0, 1])
    assert_close(y[0, 0], attn(b)[0, 3], atol=1e-5)
    assert_close(y[1, 0], attn(a)[0, 8], atol=1e-5)
    keys = cache.k[0]  # one new key per row, at its own position; the padding row stored nowhere
    assert keys[0, :, 3].count_nonzero() > 0 and keys[1, :, 8].count_nonzero() > 0
    assert keys[0, :, 4:].count_nonzero() == keys[1, :, 9:].count_nonzero() == keys[2, :, 8:].count_nonzero() == 0


def test_kv_cache_move_copies_a_rows_filled_positions():
    cache = KVCache(n_layer=2, rows=3, max_len=4)
    for layer in range(2):
        cache.write(layer, [0, 1], torch.randn(2, 1, 3, 2), torch.randn(2, 1, 3, 2))
    cache.advance([0, 1], 3)
    cache.move(1, 0)
    assert cache.lengths == [3, 3, 0]
    assert all(torch.equal(k[0], k[1]) and torch.equal(v[0], v[1]) for k, v in zip(cache.k, cache.v))
    assert cache.k[0][2].count_nonzero() == 0  # zeros where nothing was written


def test_attention_is_the_written_out_formula():
    torch.manual_seed(0)
    attn = QKVAttention(GPT2Config(n_embd=16, n_head=2)).eval()
    x = torch.randn(3, 6, 16)
    q, k, v = attn.c_attn(x).split(16, dim=2)
    heads = [t.view(3, 6, 2, 8).transpose(1, 2) for t in (q, k, v)]  # (B, nh, T, hs)
    expected = attn.c_proj(manual_attention(*heads).transpose(1, 2).reshape(3, 6, 16))
    assert_close(attn(x), expected, atol=1e-5)


def test_attention_drops_weights_only_in_training():
    attn = QKVAttention(GPT2Config(n_embd=16, n_head=2, dropout=0.5))
    x = torch.randn(1, 5, 16)
    attn.eval()
    assert torch.equal(attn(x), attn(x))
    attn.train()
    assert not torch.equal(attn(x), attn(x))


# ---- grouped-query attention and QK-norm ---------------------------------------------------------


def reference_attention(q, k, v):
    """Causal attention in a few lines: q (B, nh, T, hs), k and v (B, nh, T, hs)."""
    T = q.size(-2)
    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1), float("-inf"))
    return scores.softmax(-1) @ v


def reference_rms_norm(x, gain, eps=1e-5):
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * gain


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_grouped_query_attention_and_qk_norm_are_the_written_out_formulas(kv_heads, qk_norm):
    """4 query heads of size 8 and kv_heads key/value heads: query head i uses key/value head
    i // (4 / kv_heads), as if each key/value head were copied for its group, then plain attention.
    QK-norm: each head's q and k scaled to unit root mean square, times a learned gain, before RoPE."""
    torch.manual_seed(0)
    attn = QKVAttention(GPT2Config(n_embd=32, n_head=4, n_kv_head=kv_heads, qk_norm=qk_norm, rope=True)).eval()
    assert attn.c_attn.weight.shape == (32 + 2 * kv_heads * 8, 32)  # [q | k | v], k and v kv_heads x 8 wide
    if qk_norm:
        with torch.no_grad():  # gains away from 1, so a missing or swapped gain shows
            attn.q_norm.weight.uniform_(0.5, 1.5)
            attn.k_norm.weight.uniform_(0.5, 1.5)
    B, T = 2, 6
    x = torch.randn(B, T, 32)
    q, k, v = attn.c_attn(x).split([32, 8 * kv_heads, 8 * kv_heads], dim=-1)
    q = q.view(B, T, 4, 8).transpose(1, 2)
    k, v = (t.view(B, T, kv_heads, 8).transpose(1, 2) for t in (k, v))
    if qk_norm:
        q, k = reference_rms_norm(q, attn.q_norm.weight), reference_rms_norm(k, attn.k_norm.weight)
    q, k = attn.rope(q), attn.rope(k)
    group = [i // (4 // kv_heads) for i in range(4)]  # the key/value head of each query head
    y = reference_attention(q, k[:, group], v[:, group])
    expected = attn.c_proj(y.transpose(1, 2).reshape(B, T, 32))
    assert_close(attn(x), expected, atol=1e-5)


@pytest.mark.parametrize("prefix", [0, 5])
def test_shared_key_value_heads_give_the_same_attention_with_or_without_sdpas_own_sharing(prefix, monkeypatch):
    from gpt2_llm import attention

    torch.manual_seed(0)
    q = torch.randn(2, 6, 4, 8)  # 6 query heads
    k, v = torch.randn(2, 2, 2, prefix + 4, 8)  # 2 key/value heads, each shared by 3 query heads
    mask = torch.ones(4, prefix + 4, dtype=torch.bool).tril(diagonal=prefix)
    copied = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=mask)
    assert_close(attention.attend(q, k, v, mask), copied, atol=1e-6)
    assert_close(manual_attention(q, k, v), copied, atol=1e-5)  # the written-out path shares them too
    monkeypatch.setattr(attention, "SDPA_HAS_GQA", False)  # the path of torch 2.4: copies of the heads
    assert_close(attention.attend(q, k, v, mask), copied, atol=1e-6)


