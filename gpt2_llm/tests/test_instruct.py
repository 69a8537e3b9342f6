"""Tests of gpt2_llm/instruct.py: records, the two templates (Python and Jinja alike), encoding piece
by piece, the loss mask, cutting long examples, fitting a conversation to the context."""

import re

import pytest

from bpe import BPE, UserError
from gpt2_llm.instruct import (IGNORE_INDEX, TEMPLATES, RecordError, encode_segments, example_arrays,
                               fit_conversation, prompt_ids, record_kind, record_messages, template_from_checkpoint,
                               truncate)

ALPACA, CHAT = TEMPLATES["alpaca"], TEMPLATES["chat"]


@pytest.fixture(scope="module")
def tokenizer():
    return BPE.train("### User:\nhello there\n\n### Assistant:\nhi you<|endoftext|> " * 30, vocab_size=300)


# ---- records --------------------------------------------------------------------------------------


def test_records_of_each_kind_become_conversations():
    record = {"instruction": "Add.", "input": "2 + 3", "output": "5", "id": 7}  # extra fields are left alone
    assert record_kind(record) == "alpaca"
    assert record_messages(record) == [{"role": "user", "content": "Add.", "input": "2 + 3"},
                                       {"role": "assistant", "content": "5"}]
    assert record_messages({"instruction": "Hi.", "output": "Hello."})[0]["input"] == ""  # input may be absent
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello", "name": "bot"}]}
    assert record_kind(chat) == "chat"
    assert record_messages(chat)[-1] == {"role": "assistant", "content": "Hello"}


@pytest.mark.parametrize("record,message", [
    ([1, 2], "a record is a JSON object, this is a JSON array"),
    ({"text": "hi"}, "needs 'instruction' and 'output' (Alpaca) or 'messages' (chat); this one has 'text'"),
    ({"instruction": "x", "messages": []}, "not both"),
    ({"instruction": "Add."}, "an Alpaca record needs 'output'; this one has 'instruction'"),
    ({"instruction": "Add.", "output": 5}, "'output' must be a string, not a JSON number"),
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "user"}]}, "message 1 must be an object with a 'role' and a string 'content'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
     "message 2 has the role 'bot'; the roles are system, user, assistant"),
    ({"messages": [{"role": "user", "content": "a"}]}, "needs at least one assistant turn"),
])  # fmt: skip
def test_records_we_cannot_train_on_are_refused(record, message):
    with pytest.raises(RecordError, match=re.escape(message)):
        record_messages(record)


# ---- the templates --------------------------------------------------------------------------------

ALPACA_WITH_INPUT = [{"role": "user", "content": "Reverse the word.", "input": "abc"},
                     {"role": "assistant", "content": "cba"}]


def test_the_alpaca_template_is_the_published_prompt():
    assert ALPACA.render(ALPACA_WITH_INPUT) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nReverse the word.\n\n### Input:\nabc\n\n### Response:\ncba<|endoftext|>")
    no_input = [{"role": "user", "content": "Say hi.", "input": ""}, {"role": "assistant", "content": "hi"}]
    assert ALPACA.render(no_input) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nSay hi.\n\n### Response:\nhi<|endoftext|>")
    question = [{"role": "user", "content": "Say hi."}]
    assert ALPACA.render(question, add_generation_prompt=True) == ALPACA.render(no_input).removesuffix("hi<|endoftext|>")
    assert ALPACA.render(question).endswith("### Instruction:\nSay hi.")  # no answer header unless asked
    with pytest.raises(RecordError, match="one user message"):
        ALPACA.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_the_chat_template_writes_headed_turns_with_blank_lines_between():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    assert CHAT.render(messages) == ("### System:\nBe brief.\n\n### User:\nHi\n\n### Assistant:\nHello.<|endoftext|>"
                                     "\n\n### User:\nBye")
    assert CHAT.render(messages, add_generation_prompt=True) == CHAT.render(messages) + "\n\n### Assistant:\n"
    assert CHAT.render([], add_generation_prompt=True) == "### Assistant:\n"


JINJA_CASES = {
    "alpaca": [ALPACA_WITH_INPUT, ALPACA_WITH_INPUT[:1], [{"role": "user", "content": "Say hi."}],
               [{"role": "user", "content": "Say \"hi\"\\n, ünïcödé {{ x }}", "input": ""},
                {"role": "assistant", "content": "hi"}]],
    "chat": [[{"role": "user", "content": "Hi"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
              {"role": "assistant", "content": "Bye {% now %}\n\n### User:\nx"}],
             [{"role": "assistant", "content": ""}, {"role": "user", "content": "  spaced\n"}]],
}  # fmt: skip


@pytest.mark.parametrize("name", ["alpaca", "chat"])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_the_jinja_template_renders_exactly_what_the_python_renders(name, generation_prompt):
    """The chat_template a checkpoint stores, run by transformers' own apply_chat_template."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<|endoftext|>": 0}, unk_token="<|endoftext|>"))
    hf = PreTrainedTokenizerFast(tokenizer_object=words, chat_template=TEMPLATES[name].jinja)
    for messages in JINJA_CASES[name]:
        ours = TEMPLATES[name].render(messages, add_generation_prompt=generation_prompt)
        theirs = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        assert theirs == ours, messages


def test_the_checkpoint_names_its_template():
    assert ALPACA.to_checkpoint() == {"name": "alpaca", "jinja": ALPACA.jinja}
    assert template_from_checkpoint({"name": "chat", "jinja": "..."}, "m.pt") is CHAT
    assert template_from_checkpoint(None, "m.pt") is None  # a model of text
    with pytest.raises(UserError, match="m.pt: its chat template 'llama' is not one this version knows"):
        template_from_checkpoint({"name": "llama", "jinja": ""}, "m.pt")


# ---- tokens and the loss mask ---------------------------------------------------------------------


def test_pieces_are_encoded_alone_and_only_the_answers_are_trained(tokenizer):
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "there"}, {"role": "assistant", "content": "you"}]
    ids, trained = encode_segments(CHAT.segments(messages), tokenizer)
    eot = tokenizer.special_tokens["<|endoftext|>"]
    first = tokenizer.encode_ordinary("### User:\nhello\n\n### Assistant:\n")
    second = tokenizer.encode_ordinary("\n\n### User:\nthere\n\n### Assistant:\n")
    hi, you = tokenizer.encode_ordinary("hi"), tokenizer.encode_ordinary("you")
    assert ids == first + hi + [eot] + second + you + [eot]
    assert trained == [False] * len(first) + [True] * (len(hi) + 1) + [False] * len(second) + [True] * (len(you) + 1)
    # Generation starts from the same ids: the prompt of the second question is the first exchange
    # as it was trained, then the question and the assistant's header.
    assert prompt_ids(CHAT, messages[:3], tokenizer) == first + hi + [eot] + second


def test_the_response_is_not_merged_into_the_prompt():
    """Encoding the whole text at once may merge the prompt's end with the answer's start; piece by
    piece, the answer's first token is the one the model must produce after the prompt."""
    tokenizer = BPE.train("hello\n\n\n\nthere " * 50, vocab_size=270)  # it merges runs of newlines
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "\n\nhello"}]
    ids, trained = encode_segments(CHAT.segments(messages), tokenizer)
    start = trained.index(True)
    assert ids[:start] == tokenizer.encode_ordinary("### User:\nx\n\n### Assistant:\n") == prompt_ids(
        CHAT, messages[:1], tokenizer)
    assert ids[start:] == tokenizer.encode_ordinary("\n\nhello") + [tokenizer.special_tokens["<|endoftext|>"]]
    whole = tokenizer.encode(CHAT.render(messages), allowed_special="all")
    assert "\n\n" in tokenizer.token_pieces(whole)  # the header's newline and the answer's first one as one token


def test_targets_are_the_next_tokens_where_they_are_trained(tokenizer):
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    ids, _ = encode_segments(CHAT.segments(messages), tokenizer)
    x, y, cut = example_arrays(messages, CHAT, tokenizer, block_size=64)
    assert x.tolist() == ids[:-1] and not cut
    n = len(ids) - len(tokenizer.encode_ordinary("hi")) - 1  # where the answer starts
    assert "".join(tokenizer.token_pieces(ids[n:])) == "hi<|endoftext|>"
    assert y.tolist() == [IGNORE_INDEX] * (n - 1) + ids[n:]
    _, everything, _ = example_arrays(messages, CHAT, tokenizer, block_size=64, mask_prompt=False)
    assert everything.tolist() == ids[1:]


def test_long_examples_are_cut_from_the_prompt_side():
    ids = list(range(10))
    trained = [False] * 6 + [True] * 4  # a prompt of 6 tokens, a response of 4
    assert truncate(ids, trained, 10) == (ids, trained, False)
    assert truncate(ids, trained, 7) == (ids[3:], trained[3:], True)  # the prompt's end and the whole response
    assert truncate(ids, trained, 5) == (ids[5:], trained[5:], True)  # one prompt token is enough
    # A response that does not fit with a prompt token: half the limit of prompt, the response's start.
    assert truncate(ids, trained, 4) == ([4, 5, 6, 7], [False, False, True, True], True)
    # A chat: the last answer counts as the response; an earlier one is cut like the prompt.
    chat = [False, False, True, True, False, False, True, True, False]
    assert truncate(list(range(9)), chat, 6) == ([3, 4, 5, 6, 7, 8], chat[3:], True)


def test_an_example_cut_to_the_context_keeps_its_answer(tokenizer):
    messages = [{"role": "user", "content": "hello there " * 20}, {"role": "assistant", "content": "hi you"}]
    x, y, cut = example_arrays(messages, CHAT, tokenizer, block_size=12)
    answer = tokenizer.encode_ordinary("hi you") + [tokenizer.special_tokens["<|endoftext|>"]]
    assert cut and len(x) == len(y) == 12
    assert [t for t in y.tolist() if t != IGNORE_INDEX] == answer


def test_a_conversation_longer_than_the_context_loses_its_oldest_turns(tokenizer):
    system = {"role": "system", "content": "hi"}
    turns = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi you"}] * 3
    messages = [system, *turns, {"role": "user", "content": "hello"}]
    limit = len(prompt_ids(CHAT, [system, *turns[3:], messages[-1]], tokenizer))
    kept, ids, dropped = fit_conversation(CHAT, messages, tokenizer, limit)
    assert kept == [system, *turns[3:], messages[-1]] and dropped == 3
    assert ids == prompt_ids(CHAT, kept, tokenizer)
    alone = fit_conversation(CHAT, [system, messages[-1]], tokenizer, 1)  # the last message always stays
    assert alone[0] == [system, messages[-1]] and alone[2] == 0


def test_the_prompt_gets_no_gradient_and_the_loss_is_that_of_the_answer(tokenizer):
    """Through the model: the gradient of the loss reaches the logits of the answer's positions
    only, the loss is the mean of -log p over the answer's tokens, and --no-mask-prompt counts all."""
    import torch

    from gpt2_llm import GPT2, GPT2Config

    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_preset("tiny", vocab_size=tokenizer.vocab_size, block_size=64))
    messages = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi you"}]
    x, y, _ = example_arrays(messages, CHAT, tokenizer, block_size=64)
    x, y = torch.from_numpy(x)[None], torch.from_numpy(y)[None]  # (1, T)
    head_out = []

    def keep(module, inputs, out):  # the logits, with their gradient kept (returns None: out is unchanged)
        out.retain_grad()
        head_out.append(out)

    model.lm_head.register_forward_hook(keep)
    _, loss = model(x, y)
    loss.backward()
    grad, prompt = head_out[0].grad[0], y[0] == IGNORE_INDEX  # (T, padded vocab), (T,)
    assert prompt.sum() > 10 and (~prompt).sum() == len(tokenizer.encode_ordinary("hi you")) + 1
    assert not grad[prompt].any()
    assert (grad[~prompt].abs().sum(dim=-1) > 0).all()
    log_p = head_out[0].detach()[0, :, : tokenizer.vocab_size].log_softmax(dim=-1)
    answer = (~prompt).nonzero().squeeze(1)
    assert loss.item() == pytest.approx(-log_p[answer, y[0, answer]].mean().item(), abs=1e-5)
    _, everything, _ = example_arrays(messages, CHAT, tokenizer, block_size=64, mask_prompt=False)
    _, unmasked = model(x, torch.from_numpy(everything)[None])
    assert unmasked.item() == pytest.approx(-log_p[torch.arange(len(everything)), everything].mean().item(), abs=1e-5)
