"""Text from a model, printed as it is made (`main.py predict`): a prompt continued, prompts read in
a loop, or a chat with a model trained on instruction records.

    predict("Once upon a time", 50, "gpt2_model.pt", seed=1)     # prints the prompt, then 50 tokens
    predict(["Hello", "Goodbye"], 20, "gpt2")                    # one continuation per prompt
    predict("What is a noun?", 100, "chat.pt", chat=True)        # the answer alone, up to its end of turn

Each new token goes to standard output as soon as it is made, whole characters only; the texts made
are returned too.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import bpe
from basics import UserError

from .config import DEFAULT_MODEL
from .generation import TextStream, check_sampling
from .instruct import Template, fit_conversation, template_from_checkpoint
from .loading import Loaded, load_with_tokenizer


def predict(prompts: str | Iterable[str], num_tokens: int = 100, model: str = DEFAULT_MODEL,
            vocab_file: str | None = None, *, chat: bool = False, device: str = "auto", temperature: float = 0.8,
            top_k: int | None = 40, top_p: float | None = None, greedy: bool = False, seed: int | None = None,
            presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
            logit_bias: dict[int, float] | None = None, as_json: bool = False) -> list[str] | list[dict]:  # fmt: skip
    """Continue each prompt with up to num_tokens tokens (or answer each question, with chat), printing
    as it goes; the texts made. One prompt (a str) must not be empty; in a stream of them (read from
    a terminal, say) empty ones are passed over. The model is a checkpoint, a transformers folder or
    a hub name; vocab_file, if given, must be its tokenizer (or stands in for a missing one). A
    classifier prints each text's label and its probability instead (predict_labels); as_json: one
    JSON line per prompt, for a language model {"prompt", "completion"}, printed when each is done."""
    penalties = {"presence_penalty": presence_penalty, "frequency_penalty": frequency_penalty, "logit_bias": logit_bias}
    check_sampling(num_tokens, temperature, top_k, top_p, **penalties)  # before the slow load
    loaded = load_with_tokenizer(model, device, vocab_file, "give its vocab file after it")
    if loaded.classes is not None:  # a classifier: labels, not text
        if isinstance(prompts, str) and not prompts.strip():
            raise UserError("the text is empty: give at least one character")
        return predict_labels(loaded, [prompts] if isinstance(prompts, str) else prompts, as_json=as_json)
    check_sampling(num_tokens, temperature, top_k, top_p, **penalties, vocab_size=loaded.model.config.vocab_size)
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "greedy": greedy, "seed": seed, **penalties}
    one = isinstance(prompts, str)
    if chat:
        return converse(loaded, [prompts] if one else prompts, num_tokens, sampling, skip_empty=not one)
    if as_json:
        return [print_json({"prompt": prompt, "completion": complete(loaded, prompt, num_tokens, sampling)})
                for prompt in prompts if prompt]
    return [continue_text(loaded.model, loaded.tokenizer, prompt, num_tokens, sampling)
            for prompt in ([prompts] if one else prompts) if prompt or one]


def complete(loaded: Loaded, prompt: str, num_tokens: int, sampling: dict) -> str:
    """The continuation of a prompt, not printed (predict --file: its JSON line holds it)."""
    stop = loaded.tokenizer.special_tokens.get(bpe.ENDOFTEXT)
    new = []
    for token in loaded.model.generate_stream(loaded.tokenizer.encode(prompt, allowed_special="all"), num_tokens,
                                              stop_token=stop, **sampling):  # fmt: skip
        if token == stop:
            break
        new.append(token)
    return loaded.tokenizer.decode(new)


def print_json(record: dict) -> str:
    print(json.dumps(record, ensure_ascii=False), flush=True)
    return record["completion"]


def continue_text(model, tokenizer: bpe.BPE, prompt: str, num_tokens: int, sampling: dict) -> str:
    """Print the prompt, then each new token as soon as it is made; the new text."""
    ids = tokenizer.encode(prompt, allowed_special="all")
    if not ids:
        raise UserError("the prompt is empty: give at least one character")
    context = model.config.block_size
    if len(ids) > context:
        print(f"note: the prompt has {len(ids)} tokens; only its last {context} (the context) are used", file=sys.stderr)
    print(prompt, end="")
    return stream_tokens(model, tokenizer, ids, num_tokens, sampling)


def stream_tokens(model, tokenizer: bpe.BPE, ids: list[int], num_tokens: int, sampling: dict) -> str:
    """Print each new token as soon as it is made (whole characters only), up to num_tokens or the
    end of text (<|endoftext|>, which also ends an answer), then a line end; the text printed."""
    stop = tokenizer.special_tokens.get(bpe.ENDOFTEXT)
    text = TextStream()
    sys.stdout.flush()
    pieces = []
    for token in model.generate_stream(ids, num_tokens, stop_token=stop, **sampling):
        if token == stop:
            break
        pieces.append(text.feed(tokenizer.decode_bytes([token])))
        print(pieces[-1], end="", flush=True)
    pieces.append(text.finish())
    print(pieces[-1], flush=True)
    return "".join(pieces)


def chat_template(loaded: Loaded) -> Template | None:
    """The template a model was trained on records with; None for a model of text, or a folder's
    own template that is not one of ours."""
    stored = loaded.chat_template
    return template_from_checkpoint(stored, loaded.name) if stored and stored["name"] is not None else None


def converse(loaded: Loaded, questions: Iterable[str], num_tokens: int, sampling: dict,
             skip_empty: bool = True) -> list[str]:  # fmt: skip
    """Each question in the model's template, the answer printed as it comes and ended by the
    end-of-turn token; the answers. The chat template keeps the conversation (its oldest turns
    leave when it outgrows the context); Alpaca's answers each instruction on its own."""
    model, tokenizer, template = loaded.model, loaded.tokenizer, chat_template(loaded)
    if template is None:
        raise UserError(f"{loaded.name} was not trained on instruction records, so it has no chat template: "
                        f"use predict without --chat (or train it on a .jsonl file of instructions)")
    history: list[dict] = []
    answers = []
    room = model.config.block_size - min(num_tokens, model.config.block_size // 2)  # the rest is the answer's
    for question in questions:
        if not question.strip():
            if skip_empty:
                continue
            raise UserError("the question is empty: give at least one character")
        messages, ids, dropped = fit_conversation(template, template.next_prompt(history, question), tokenizer, room)
        if dropped:
            print(f"note: the {dropped} oldest messages no longer fit the context and were left out", file=sys.stderr)
        if len(ids) > room:
            print(f"note: the question has {len(ids)} tokens with its template; only its last "
                  f"{model.config.block_size} (the context) are read", file=sys.stderr)
        answers.append(stream_tokens(model, tokenizer, ids, num_tokens, sampling))
        history = [*messages, {"role": "assistant", "content": answers[-1]}]
    return answers


@dataclass
class Positionals:
    """predict's positional arguments as the user meant them (see read_positionals)."""

    prompt: str
    num_tokens: int
    model: str
    vocab_file: str | None
    interactive: bool  # the prompts come from the terminal


def read_positionals(given: list[str], chat: bool = False, interactive: bool = False, file: bool = False) -> Positionals:
    """`predict [PROMPT] [NUM_TOKENS] [MODEL] [VOCAB]`, where a second argument that is not a number
    names the model (`predict "text" MODEL`, as a classifier is used). There is no prompt with
    --file (`predict --file texts.txt MODEL`) or --interactive; `predict --chat MODEL` (a model file
    alone) is a conversation on the terminal, `predict --chat "question" [N] [MODEL]` one question."""
    from .loading import looks_like_hub_name

    items = list(given)
    one_model = items and os.path.exists(items[0]) and all(item.isdigit() for item in items[1:])
    interactive = interactive or (chat and not file and bool(one_model))
    prompt = ""
    if interactive and items and items[0] == "":
        items.pop(0)  # predict --interactive "" N MODEL: an empty prompt stands for none
    elif not (interactive or file) and items:
        prompt = items.pop(0)
    elif interactive and items and not items[0].isdigit() and not (os.path.exists(items[0]) or looks_like_hub_name(items[0])):
        raise UserError(f"with --interactive the prompts are read from the terminal: {items[0]!r} is not a model "
                        f"(write: predict --interactive [NUM_TOKENS] MODEL)")
    if interactive and len(items) >= 2 and not items[0].isdigit() and items[1].isdigit():
        items[:2] = items[1], items[0]  # predict --chat MODEL N: the model's name came first
    num_tokens = 100
    if items and items[0].lstrip("-").isdigit():
        num_tokens = int(items.pop(0))
    if len(items) > 2:
        raise UserError(f"too many arguments: {shlex.join(items[2:])} (predict [PROMPT] [NUM_TOKENS] [MODEL] [VOCAB_FILE])")
    model, vocab_file = items[0] if items else DEFAULT_MODEL, items[1] if len(items) > 1 else None
    return Positionals(prompt, num_tokens, model, vocab_file, interactive)


def predict_labels(loaded: Loaded, texts: Iterable[str], as_json: bool) -> list[dict]:
    """A classifier's predict: each text's label and its probability (as_json: one JSON line per
    text, with every class's probability), printed as each text is read; the results."""
    from .classifier import classify

    results = []
    for text in texts:
        if not text.strip():
            continue
        found = classify(loaded.model, loaded.tokenizer, [text])[0]
        if as_json:
            print(json.dumps({"text": text, **found}, ensure_ascii=False), flush=True)
        else:
            print(f"{found['label']}\t{found['probabilities'][found['label']]:.4f}", flush=True)
        results.append(found)
    return results


def file_lines(path: str) -> Iterator[str]:
    """The lines of a UTF-8 file, or of standard input for "-", each without its line end (the file
    is opened at once, so that a missing one is said before a model is loaded)."""
    try:
        stream = sys.stdin.buffer if path == "-" else open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    return _decoded_lines(stream, "standard input" if path == "-" else path)


def _decoded_lines(stream, name: str) -> Iterator[str]:
    with stream:
        for number, line in enumerate(stream, 1):
            try:
                yield line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise UserError(f"{name} is not UTF-8 text (line {number})") from None


def terminal_lines() -> Iterator[str]:
    """The lines typed after a "> " prompt, until the end of input (which ends the line on the screen)."""
    try:
        while True:
            yield input("> ")
    except EOFError:
        print(file=sys.stderr)
