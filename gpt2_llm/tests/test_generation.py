"""Sampling and the text stream (generation.py): top-k and top-p, whole characters, stop strings."""

import pytest
import torch

from gpt2_llm.generation import TextStream, draw, sample_next_token


def draws(logits, n=2000, **kwargs):
    generator = torch.Generator().manual_seed(0)
    batch = logits.expand(n, -1)
    return set(sample_next_token(batch, generator=generator, **kwargs).view(-1).tolist())


def test_draw_follows_the_probabilities_and_never_draws_a_zero():
    """Inverse-CDF draws (generation.draw, torch.multinomial's job): 50,000 draws of each of two rows
    that are not normalised, with zeros inside and at the end, land within 0.006 of each
    probability (under 3 standard deviations), the same for the same seed."""
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 2.0, 0.0]])
    picks = draw(probs.repeat(50_000, 1), torch.Generator().manual_seed(1)).view(-1, 2)
    assert picks.shape == (50_000, 2) and set(picks[:, 1].tolist()) == {3}
    frequency = torch.bincount(picks[:, 0], minlength=5) / 50_000
    assert set(picks[:, 0].tolist()) == {0, 2, 3}
    assert torch.allclose(frequency, torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0]), atol=0.006)
    again = draw(probs.repeat(50_000, 1), torch.Generator().manual_seed(1)).view(-1, 2)
    assert torch.equal(picks, again)


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


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 5e-324])
def test_a_temperature_too_small_to_divide_by_gives_its_limit_greedy(temperature):
    """Logits over 1e-40 overflow float32 (3.4e38): the limit of a shrinking temperature, the most
    likely token (either of two equal maxima), not an error in the sampler."""
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5, -1.0, 2.9, 0.5]]) * 100
    for top_k, top_p in [(None, None), (3, None), (None, 0.9), (3, 0.9)]:
        assert draws(logits, n=200, temperature=temperature, top_k=top_k, top_p=top_p) == {1}
    assert draws(logits / 100, n=200, temperature=1.0, top_k=None, top_p=5e-324) == {1}  # top_p's limit alike
    tied = torch.tensor([[5.0, 1.0, 5.0, -2.0]])
    assert draws(tied, n=200, temperature=temperature, top_k=None, top_p=None) == {0, 2}


def test_text_stream_gives_whole_characters_whatever_the_cut():
    text = "héllo wörld 😀 €uro"
    data = text.encode("utf-8")
    for cut in range(1, 5):
        stream = TextStream()
        pieces = [stream.feed(data[i : i + cut]) for i in range(0, len(data), cut)] + [stream.finish()]
        assert "".join(pieces) == text
        assert all("\ufffd" not in piece for piece in pieces)


def test_text_stream_cuts_at_a_stop_string_and_holds_back_what_may_begin_one():
    stream = TextStream(stop=("END", "\n\n"))
    assert stream.feed(b"abc E") == "abc "  # "E" may begin "END": held back
    assert stream.feed(b"x\n") == "Ex"  # "Ex" cannot; "\n" may begin "\n\n"
    assert stream.feed(b"y") == "\ny" and not stream.stopped
    assert stream.feed(b"zEN") == "z"
    assert stream.feed(b"Dafter") == "" and stream.stopped  # the stop string and what follows are dropped
    ended = TextStream(stop=("END",))
    assert ended.feed(b"tail E") == "tail " and ended.finish() == "E"  # at the end nothing is held back


def test_text_stream_replaces_bytes_that_are_not_utf8():
    stream = TextStream()
    assert stream.feed(b"a\xff") + stream.feed(b"\xc3") + stream.finish() == "a\ufffd\ufffd"

