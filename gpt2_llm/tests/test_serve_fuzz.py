"""Fuzzing the HTTP API with schemathesis: requests made from the schema the app serves at
/openapi.json, valid ones and invalid ones, on every route. No answer may be a 5xx, every error
is OpenAI's body, every stream read to its end ends with [DONE], and the server still answers
afterwards.

A real server on 127.0.0.1 (test_serve.running) with a tiny model whose context is 64 tokens, so
that whatever max_tokens the fuzzer picks is generated in milliseconds, and again with a tiny
classifier (POST /v1/classify answers; the generation routes refuse it). The default run is
deterministic (derandomized, a few hundred requests); longer, random ones:

    python -m pytest -q -n 0 -m slow gpt2_llm/tests/test_serve_fuzz.py   # 300 per route and mode
    GPT2_FUZZ_EXAMPLES=2000 python -m pytest -q -n 0 -m slow gpt2_llm/tests/test_serve_fuzz.py
"""

import json
import os

import pytest
import torch

from bpe import BPE
from gpt2_llm import GPT2, GPT2Config
from gpt2_llm.tests.conftest import some_text
from gpt2_llm.tests.test_serve import WAIT, request, running, save

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance  # noqa: E402

DEFAULT_EXAMPLES = 40  # per route and mode, in the default run (a route without input: 1)
LONG_EXAMPLES = int(os.environ.get("GPT2_FUZZ_EXAMPLES", "300"))  # per route and mode, in the slow run
TIMEOUT = 5  # seconds for one request: the longest the fuzzer can ask for takes well under one


@pytest.fixture(scope="module")
def tokenizer():
    return BPE.train(some_text(10_000), vocab_size=280)


@pytest.fixture(scope="module")
def small_context(tmp_path_factory, tokenizer):
    """A random model with a 64-token context (and <|endoftext|> left possible: sequences end early too)."""
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64))
    return save(tmp_path_factory.mktemp("fuzz") / "fuzz.pt", model, tokenizer)


@pytest.fixture(scope="module")
def small_classifier(tmp_path_factory, tokenizer):
    """A random classifier of two classes on the same shape: /v1/classify answers, generation is refused."""
    from gpt2_llm.classifier import GPT2Classifier, pad_id_of

    torch.manual_seed(0)
    gpt = GPT2(GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=64))
    part = GPT2Classifier(gpt, ["ham", "spam"], pad_id_of(tokenizer)).checkpoint_entries({"score.weight": torch.randn(2, 32)})
    return save(tmp_path_factory.mktemp("fuzz") / "classify.pt", gpt, tokenizer, classifier=part["classifier"])


def openai_error_shape(ctx, response, case) -> None:
    """Every 4xx or 5xx answer is {"error": {"message": str, "type": str, "param": ..., "code": ...}}."""
    if response.status_code < 400:
        return
    body = json.loads(response.content)
    assert set(body) == {"error"}, f"an error body with keys {sorted(body)}"
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, f"an error with keys {sorted(error)}"
    assert isinstance(error["message"], str) and error["message"], "an error without a message"
    assert isinstance(error["type"], str) and error["type"], "an error without a type"
    assert error["param"] is None or isinstance(error["param"], str), f"param {error['param']!r}"
    assert error["code"] is None or isinstance(error["code"], str), f"code {error['code']!r}"


def streams_end_well(ctx, response, case) -> None:
    """A stream answered 200 carries only chunks (no error event) and ends with [DONE]. Schemathesis
    hangs up on a long stream (after a number of events): then the events it read are checked."""
    content_type = response.headers.get("content-type", [""])[0]  # schemathesis keeps each header's values
    if response.status_code != 200 or not content_type.startswith("text/event-stream"):
        return
    events = [line.removeprefix("data: ") for line in response.content.decode().split("\n\n") if line]
    if not response.stream_cut_short:
        assert events and events[-1] == "[DONE]", f"a stream that ends with {events[-1:]}"
    for event in events:
        assert event == "[DONE]" or "error" not in json.loads(event), f"an error event in a 200 stream: {event}"


def within_reach(body: dict) -> None:
    """Three in four valid bodies are made to generate: the served model (a random name is a 404) and
    a max_tokens that fits the context (most random ones are a 400), as a client's would."""
    body.pop("model", None)
    if type(body.get("prompt")) is str:
        body["prompt"] = "Once" + body["prompt"]  # a client's prompt is not empty, nor its texts
    if type(body.get("input")) is str:
        body["input"] = "Once" + body["input"]
    elif type(body.get("input")) is list and all(type(text) is str for text in body["input"]):
        body["input"] = ["Once" + text for text in body["input"]]
    for key in ("max_tokens", "max_completion_tokens"):
        if type(body.get(key)) is int:
            body[key] = 1 + body[key] % 8
    for message in body.get("messages") or []:
        message["role"] = ("user", "assistant", "system")[len(message["role"]) % 3]


CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, openai_error_shape,
          streams_end_well]  # fmt: skip


def fuzz(operation, mode: GenerationMode, base: str, session, examples: int, derandomize: bool) -> None:
    """`examples` requests to one route, made by schemathesis in one mode, each checked by CHECKS."""

    # No shrinking: once a request has stopped the engine, every later one would wait for its timeout.
    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])  # fmt: skip
    @given(case=operation.as_strategy(generation_mode=mode), served=st.sampled_from([True, True, True, False]))
    def one(case, served):
        if served and mode == GenerationMode.POSITIVE and isinstance(case.body, dict):
            within_reach(case.body)
        response = case.call(base_url=base, session=session, timeout=TIMEOUT)
        case.validate_response(response, checks=CHECKS)

    one()


def test_every_route_fuzzed(small_context):
    with running(small_context, max_queue=256, request_timeout=WAIT) as (base, app):
        fuzz_every_route(base, app, DEFAULT_EXAMPLES, derandomize=True)
        code, _, body = request(base, "POST", "/v1/completions", {"prompt": "the", "max_tokens": 3})
        assert code == 200 and body["usage"]["completion_tokens"] >= 1  # the engine still generates


def test_every_route_fuzzed_on_a_classifier(small_classifier):
    with running(small_classifier, max_queue=256, request_timeout=WAIT) as (base, app):
        fuzz_every_route(base, app, DEFAULT_EXAMPLES, derandomize=True)
        code, _, body = request(base, "POST", "/v1/classify", {"input": ["the", "a king"]})
        assert code == 200 and [d["index"] for d in body["data"]] == [0, 1]
        assert {d["label"] for d in body["data"]} <= {"ham", "spam"}


@pytest.mark.slow
def test_every_route_fuzzed_long(small_context, small_classifier):
    for model in (small_context, small_classifier):
        with running(model, max_queue=256, request_timeout=WAIT) as (base, app):
            fuzz_every_route(base, app, LONG_EXAMPLES, derandomize=False)


def fuzz_every_route(base: str, app, examples: int, derandomize: bool) -> None:
    before = app.state.serving.requests_total.copy()  # the 503s of /health while the model loaded
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    assert [request(base, "GET", path)[0] for path in ("/docs", "/redoc")] == [404, 404]  # the schema only
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert paths == {"/health", "/v1/models", "/v1/models/{model_id}", "/model_card", "/v1/completions",
                     "/v1/chat/completions", "/v1/classify", "/tokenize", "/detokenize", "/metrics"}  # fmt: skip
    with requests.Session() as session:
        for op in operations:
            has_input = op.method.upper() == "POST" or "{" in op.path
            # Invalid bodies too; a path's string parameter has no invalid value (schemathesis finds none).
            has_body = op.method.upper() == "POST"
            modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_body else (GenerationMode.POSITIVE,)
            for mode in modes:
                fuzz(op, mode, base, session, examples if has_input else 1, derandomize)
    # What the schema leaves out: the page, its files, a wrong method.
    assert request(base, "GET", "/")[0] == 200
    for method, path, code in (("GET", "/static/no-such-file", 404), ("DELETE", "/v1/completions", 405)):
        got, _, body = request(base, method, path)
        assert got == code and set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    counts = app.state.serving.requests_total - before
    assert not {key: n for key, n in counts.items() if key[1] >= 500}, "5xx answers"
    assert request(base, "GET", "/health")[0] == 200


def test_settings_without_a_finite_distribution(small_context):
    """A temperature whose scaled logits overflow (treated as greedy, its limit), or a top_p that is 0
    in float32: answered (200 or 400), and the engine still generates afterwards."""
    with running(small_context) as (base, _), requests.Session() as session:
        for extra in ({"temperature": 1e-40}, {"top_p": 5e-324}, {}):
            body = {"prompt": "the", "max_tokens": 2, **extra}
            try:
                code = session.post(base + "/v1/completions", json=body, timeout=2).status_code  # ms, when it works
            except requests.Timeout:
                code = None
            assert code in (200, 400), f"{extra}: {code}"
