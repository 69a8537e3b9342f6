"""Prompt templates and loss masks for instruction and chat records.

A record is one conversation, as a list of messages {"role": "system" | "user" | "assistant",
"content": str}. An Alpaca record {"instruction", "input", "output"} is the conversation
[{"role": "user", "content": instruction, "input": input}, {"role": "assistant", "content": output}].

A template turns a conversation into text, in pieces that say what the model is trained on:

    alpaca   Below is an instruction that describes a task. Write a response that ...   prompt
             ### Instruction:\\n{instruction}\\n\\n### Response:\\n                            prompt
             {output}<|endoftext|>                                                        response
    chat     ### User:\\n{content}\\n\\n### Assistant:\\n                                     prompt
             {content}<|endoftext|>                                                       response
             \\n\\n### User:\\n ... \\n\\n### Assistant:\\n                                    prompt ...

The loss is on the responses only (the assistant's words and the <|endoftext|> that ends its turn):
the model learns to answer, not to write questions. Each template exists twice, as the Python here
(for training and for `predict --chat`) and as a Jinja string for transformers' tokenizer_config.json
(`chat_template`); the tests check that both render the same text.

Text is encoded piece by piece, each prompt part and each response part on its own, exactly as
generation sees it: the prompt is encoded alone, so the response's first token is the token the
model must produce after that prompt (encoding the whole text at once could merge the prompt's
last characters with the response's first ones). The content of a message is always plain text:
a "<|endoftext|>" typed by a user is characters, never the end-of-turn token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from basics import UserError
from bpe import ENDOFTEXT

IGNORE_INDEX = -100  # a target that is not trained on: the loss (fast_cpu.cross_entropy) leaves it out of the mean
ROLES = ("system", "user", "assistant")


class RecordError(UserError):
    """A record that is not a conversation we can train on (data.py adds the file and line)."""


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation. `trained`: its tokens are targets of the loss (a
    response); `end_of_turn`: the piece is the <|endoftext|> token itself, one id."""

    text: str
    trained: bool
    end_of_turn: bool = False


# ---- records -----------------------------------------------------------------------------------


def record_kind(record) -> str:
    """"alpaca" or "chat": the template a record (a parsed JSON line) calls for."""
    if not isinstance(record, dict):
        raise RecordError(f"a record is a JSON object, this is a JSON {_json_type(record)}")
    if "instruction" in record and "messages" in record:
        raise RecordError("a record has 'instruction' (Alpaca) or 'messages' (chat), not both")
    if "instruction" in record:
        return "alpaca"
    if "messages" in record:
        return "chat"
    raise RecordError("a record needs 'instruction' and 'output' (Alpaca) or 'messages' (chat); "
                      f"this one has {_keys(record)}")


def record_messages(record: dict) -> list[dict]:
    """The conversation of a record (see the module's docstring), every field checked."""
    if record_kind(record) == "alpaca":
        for name in ("instruction", "output"):
            if name not in record:
                raise RecordError(f"an Alpaca record needs '{name}'; this one has {_keys(record)}")
        for name in ("instruction", "input", "output"):
            if name in record and not isinstance(record[name], str):
                raise RecordError(f"'{name}' must be a string, not a JSON {_json_type(record[name])}")
        user = {"role": "user", "content": record["instruction"], "input": record.get("input", "")}
        return [user, {"role": "assistant", "content": record["output"]}]
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise RecordError("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    for k, message in enumerate(messages, 1):
        check_message(message, f"message {k}")
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("a chat record needs at least one assistant turn (the loss is on those)")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def check_message(message, where: str) -> None:
    if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
        raise RecordError(f"{where} must be an object with a 'role' and a string 'content'")
    if message["role"] not in ROLES:
        raise RecordError(f"{where} has the role {message['role']!r}; the roles are {', '.join(ROLES)}")


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _keys(record: dict) -> str:
    return ", ".join(repr(k) for k in record) if record else "no fields"


# ---- the templates -----------------------------------------------------------------------------

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.\n\n")
ALPACA_PREAMBLE_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                              "further context. Write a response that appropriately completes the request.\n\n")
ALPACA_INSTRUCTION, ALPACA_INPUT, ALPACA_RESPONSE = "### Instruction:\n", "\n\n### Input:\n", "\n\n### Response:\n"
CHAT_HEADERS = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}
TURN_SEPARATOR = "\n\n"  # a blank line between the turns of a chat


def _lit(text: str) -> str:
    """A Jinja string literal of `text` (JSON's escapes are Jinja's)."""
    return json.dumps(text)


class Template:
    """A prompt template: `segments` renders a conversation as prompt and response pieces."""

    name: str
    multi_turn: bool  # does a conversation go on after the first answer?
    jinja: str  # the same template for transformers' tokenizer_config.json

    def segments(self, messages: list[dict], add_generation_prompt: bool = False) -> list[Segment]:
        raise NotImplementedError

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as one text, as transformers' apply_chat_template renders the Jinja."""
        return "".join(s.text for s in self.segments(messages, add_generation_prompt))

    def to_checkpoint(self) -> dict:
        return {"name": self.name, "jinja": self.jinja}

    def next_prompt(self, history: list[dict], question: str) -> list[dict]:
        """The conversation to answer when the user writes `question` after `history`."""
        user = {"role": "user", "content": question}
        return [*history, user] if self.multi_turn else [user]


def _response(content: str) -> list[Segment]:
    return [Segment(content, trained=True), Segment(ENDOFTEXT, trained=True, end_of_turn=True)]


class AlpacaTemplate(Template):
    """Stanford Alpaca's published prompt: one instruction (with an optional input), one response."""

    name, multi_turn = "alpaca", False

    def segments(self, messages, add_generation_prompt=False):
        shape = [m.get("role") for m in messages]
        if shape not in (["user"], ["user", "assistant"]):
            raise RecordError("the Alpaca template takes one user message (the instruction), then at most "
                              f"one assistant message (the response); got the roles {shape}")
        for k, message in enumerate(messages):
            check_message(message, f"message {k + 1}")
        user = messages[0]
        given = user.get("input") or ""
        prompt = (ALPACA_PREAMBLE_WITH_INPUT if given else ALPACA_PREAMBLE) + ALPACA_INSTRUCTION + user["content"]
        if given:
            prompt += ALPACA_INPUT + given
        if len(messages) == 1 and not add_generation_prompt:
            return [Segment(prompt, trained=False)]
        prompt += ALPACA_RESPONSE
        return [Segment(prompt, trained=False), *(_response(messages[1]["content"]) if len(messages) == 2 else [])]

    # A user message may carry Alpaca's "input" beside its content (the instruction).
    jinja = (
        "{%- set roles = messages | map(attribute='role') | list -%}"
        "{%- if roles != ['user'] and roles != ['user', 'assistant'] -%}"
        "{{- raise_exception('The Alpaca template takes one user message (the instruction), then at most one "
        "assistant message (the response).') -}}"
        "{%- endif -%}"
        "{%- set given = messages[0]['input'] if messages[0]['input'] is defined and messages[0]['input'] else '' -%}"
        f"{{{{- ({_lit(ALPACA_PREAMBLE_WITH_INPUT)} if given else {_lit(ALPACA_PREAMBLE)}) + "
        f"{_lit(ALPACA_INSTRUCTION)} + messages[0]['content'] -}}}}"
        f"{{%- if given -%}}{{{{- {_lit(ALPACA_INPUT)} + given -}}}}{{%- endif -%}}"
        "{%- if messages | length == 2 or add_generation_prompt -%}"
        f"{{{{- {_lit(ALPACA_RESPONSE)} -}}}}"
        "{%- endif -%}"
        f"{{%- if messages | length == 2 -%}}{{{{- messages[1]['content'] + {_lit(ENDOFTEXT)} -}}}}{{%- endif -%}}"
    )


class ChatTemplate(Template):
    """Turns under plain-text headers (### System:, ### User:, ### Assistant:), a blank line between
    them, each assistant turn ended by <|endoftext|>; no new tokens needed."""

    name, multi_turn = "chat", True

    def segments(self, messages, add_generation_prompt=False):
        pieces = []
        for k, message in enumerate(messages):
            check_message(message, f"message {k + 1}")
            head = (TURN_SEPARATOR if k else "") + CHAT_HEADERS[message["role"]]
            if message["role"] == "assistant":
                pieces += [Segment(head, trained=False), *_response(message["content"])]
            else:
                pieces.append(Segment(head + message["content"], trained=False))
        if add_generation_prompt:
            pieces.append(Segment((TURN_SEPARATOR if messages else "") + CHAT_HEADERS["assistant"], trained=False))
        return _joined(pieces)

    jinja = (
        f"{{%- set headers = {json.dumps(CHAT_HEADERS)} -%}}"
        "{%- for message in messages -%}"
        "{%- if message['role'] not in headers -%}"
        "{{- raise_exception('Unknown role ' + message['role'] + ': the roles are system, user, assistant.') -}}"
        "{%- endif -%}"
        f"{{%- if not loop.first -%}}{{{{- {_lit(TURN_SEPARATOR)} -}}}}{{%- endif -%}}"
        "{{- headers[message['role']] + message['content'] -}}"
        f"{{%- if message['role'] == 'assistant' -%}}{{{{- {_lit(ENDOFTEXT)} -}}}}{{%- endif -%}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}"
        f"{{%- if messages -%}}{{{{- {_lit(TURN_SEPARATOR)} -}}}}{{%- endif -%}}"
        "{{- headers['assistant'] -}}"
        "{%- endif -%}"
    )


def _joined(pieces: list[Segment]) -> list[Segment]:
    """Adjacent prompt pieces as one: the text between two responses is encoded as a whole."""
    out: list[Segment] = []
    for piece in pieces:
        if out and not piece.trained and not out[-1].trained:
            out[-1] = Segment(out[-1].text + piece.text, trained=False)
        else:
            out.append(piece)
    return out


TEMPLATES: dict[str, Template] = {t.name: t for t in (AlpacaTemplate(), ChatTemplate())}


def template_by_jinja(jinja: str) -> Template | None:
    """One of our templates recognised by its Jinja text (all that an exported folder keeps of it)."""
    return next((template for template in TEMPLATES.values() if template.jinja == jinja), None)


def template_from_checkpoint(stored, where: str) -> Template | None:
    """The template a checkpoint records ({"name", "jinja"}), None for a model trained on text."""
    if stored is None:
        return None
    if not isinstance(stored, dict) or stored.get("name") not in TEMPLATES:
        name = stored.get("name") if isinstance(stored, dict) else stored
        raise UserError(f"{where}: its chat template {name!r} is not one this version knows "
                        f"({', '.join(TEMPLATES)})")
    return TEMPLATES[stored["name"]]


# ---- tokens and the loss mask --------------------------------------------------------------------


def end_of_turn_id(tokenizer, role: str = "ends each response of an instruction template") -> int:
    """The id of <|endoftext|>, which ends every response (and pads a classifier's texts: `role`);
    a tokenizer without it cannot be used."""
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    if eot is None:
        raise UserError(f"the tokenizer has no {ENDOFTEXT} token, which {role}: use a vocab file made by this "
                        f"toolkit (they always have it)")
    return eot


def encode_segments(segments: list[Segment], tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of the pieces, each encoded alone, and for each id whether it is trained on."""
    eot = end_of_turn_id(tokenizer)
    ids: list[int] = []
    trained: list[bool] = []
    for segment in segments:
        piece = [eot] if segment.end_of_turn else tokenizer.encode_ordinary(segment.text)
        ids += piece
        trained += [segment.trained] * len(piece)
    return ids, trained


def prompt_ids(template: Template, messages: list[dict], tokenizer) -> list[int]:
    """The ids generation starts from: the conversation, then the assistant's header. Encoded piece
    by piece as in training, so an earlier answer has the ids it was trained with."""
    return encode_segments(template.segments(messages, add_generation_prompt=True), tokenizer)[0]


def fit_conversation(template: Template, messages: list[dict], tokenizer, limit: int
                     ) -> tuple[list[dict], list[int], int]:  # fmt: skip
    """Leave out a conversation's oldest messages until its prompt fits `limit` tokens (a first
    system message stays, and so does the last message, however long): returns the messages
    kept, their prompt ids (see prompt_ids) and how many were left out."""
    first = 1 if messages and messages[0]["role"] == "system" else 0
    dropped = 0
    while True:
        ids = prompt_ids(template, messages, tokenizer)
        if len(ids) <= limit or len(messages) - first <= 1:
            return messages, ids, dropped
        messages = messages[:first] + messages[first + 1 :]
        dropped += 1


def truncate(ids: list[int], trained: list[bool], limit: int) -> tuple[list[int], list[bool], bool]:
    """At most `limit` tokens of an example, and whether it was cut.

    The last response (from its first trained token to the end) is kept whole with as much of
    what comes before it as fits: the prompt is cut from its start, since its end is what the
    answer follows. A response that cannot fit with at least one prompt token keeps up to half
    the limit of prompt (its end) and the response's beginning: the end of the response is cut.
    """
    if len(ids) <= limit:
        return ids, trained, False
    start = _last_response_start(trained)
    if len(ids) - start < limit:
        keep = slice(len(ids) - limit, len(ids))
    else:
        before = min(start, limit // 2)
        keep = slice(start - before, start - before + limit)
    return ids[keep], trained[keep], True


def _last_response_start(trained: list[bool]) -> int:
    k = len(trained) - 1
    while k >= 0 and not trained[k]:
        k -= 1  # past a prompt after the last response (a chat ending on a user turn)
    while k > 0 and trained[k - 1]:
        k -= 1
    return max(k, 0)


def example_arrays(messages: list[dict], template: Template, tokenizer, block_size: int, mask_prompt: bool = True
                   ) -> tuple[np.ndarray, np.ndarray, bool]:  # fmt: skip
    """One training example: inputs x and targets y, (n,) each with n <= block_size, and whether it
    was cut to fit. y[i] is the token after x[i], or IGNORE_INDEX where that token is not trained
    on: a prompt token (unless mask_prompt is False). Padding is the batches' business."""
    ids, trained, cut = truncate(*encode_segments(template.segments(messages), tokenizer), block_size + 1)
    ids_array = np.asarray(ids, dtype=np.int64)
    counts = np.asarray(trained, dtype=bool) | (not mask_prompt)
    targets = np.where(counts[1:], ids_array[1:], IGNORE_INDEX)
    return ids_array[:-1], targets, cut
