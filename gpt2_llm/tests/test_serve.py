"""The HTTP server: the official openai client, raw HTTP for bad input and hang-ups, threads for
concurrency, and `main.py serve` itself for SIGTERM. Loopback only; every wait is bounded."""

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from basics import UserError
from bpe import BPE
from gpt2_llm import GPT2, GPT2Config, load, save_checkpoint
from gpt2_llm.tests.conftest import some_text

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
from gpt2_llm.serve.app import create_app  # noqa: E402
from gpt2_llm.serve.server import api_key_of, exposure_warning, serve  # noqa: E402  (after the skip: fastapi comes with uvicorn)

ROOT = Path(__file__).resolve().parents[2]
WAIT = 15  # seconds any one wait may take


# ---- models and servers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> BPE:
    return BPE.train(some_text(20_000), vocab_size=300)


def save(path: Path, model: GPT2, tokenizer: BPE, **extra) -> Path:
    save_checkpoint(path, {"model_config": asdict(model.config), "model": model.state_dict(),
                           "tokenizer": {"text": tokenizer.to_text(), "hash": tokenizer.hash}, **extra})  # fmt: skip
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer) -> Path:
    """A random tiny model with a training state and a metrics log of 1200 steps beside it. It never
    makes <|endoftext|> (that logit is held far below the others: the final norm's bias points away
    from its row), so every sequence runs to max_tokens and token counts are exact."""
    folder = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=64, block_size=128))
    with torch.no_grad():
        model.ln_f.bias[0] = 10.0
        model.wte.weight[tokenizer.special_tokens["<|endoftext|>"]] = torch.zeros(64).index_fill(0, torch.tensor(0), -10.0)
    with open(folder / "tiny.metrics.jsonl", "w") as f:
        for step in range(1, 1201):
            f.write(json.dumps({"step": step, "loss": 6 - step / 400, "lr": 1e-3}) + "\n")
            if step % 100 == 0:
                f.write(json.dumps({"step": step, "eval": True, "val_loss": 6.5 - step / 400}) + "\n")
    state = {"step": 1200, "tokens_seen": 98304, "best_val_loss": 3.5, "total_steps": 1200}
    return save(folder / "tiny.pt", model, tokenizer, state=state)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what: str, seconds: float = WAIT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def running(path: Path, step_delay: float = 0.0, **options):
    """A server in a thread on a free loopback port; yields (base URL, app). step_delay slows each
    decode step, so that a request lasts long enough to hang up on or to fill the queue."""
    app = create_app(lambda: load(path), **options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: status(base, "/health") == 200, "the server to load its model")
        if step_delay:
            engine = app.state.serving.served.engine
            step = engine._step
            engine._step = lambda: (time.sleep(step_delay), step())[1]
        yield base, app
    finally:
        server.should_exit = True
        thread.join(WAIT)


def request(base: str, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None):
    """(status, headers, parsed JSON or text) of one plain HTTP request."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=WAIT)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    payload = response.read().decode("utf-8")
    conn.close()
    try:
        payload = json.loads(payload)
    except ValueError:
        pass
    return response.status, dict(response.getheaders()), payload


def status(base: str, path: str) -> int:
    try:
        return request(base, "GET", path)[0]
    except OSError:
        return 0


def metric(base: str, name: str, headers: dict | None = None) -> float:
    text = request(base, "GET", "/metrics", headers=headers)[2]
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


@pytest.fixture(scope="module")
def server(checkpoint):
    with running(checkpoint) as (base, _):
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=WAIT)


def model_id(client) -> str:
    return client.models.list().data[0].id


# ---- the openai client --------------------------------------------------------------------------


def test_models_health_and_the_model_card(server, client):
    (entry,) = client.models.list().data
    assert (entry.id, entry.object, entry.owned_by) == ("tiny.pt", "model", "gpt2-toolkit") and entry.created > 0
    card = request(server, "GET", "/model_card")[2]
    assert card["id"] == "tiny.pt" and card["source"] == "checkpoint" and card["parameters"] > 100_000
    assert {k: card["architecture"][k] for k in ("n_layer", "n_head", "n_embd", "block_size", "positions")} == \
        {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 128, "positions": "learned"}
    assert card["tokenizer"] == {"vocab_size": 300, "pattern": "gpt2", "special_tokens": ["<|endoftext|>"]}
    assert card["training"] == {"step": 1200, "best_val_loss": 3.5, "tokens": 98304}
    # A base model has no template of its own; its chat route uses the plain chat template.
    assert (card["chat_template"], card["chat_served_with"]) == (None, "chat")
    train, evals = card["metrics"]["train"], card["metrics"]["eval"]
    assert len(train["step"]) == len(train["loss"]) == 500 and train["step"][0] == 1 and train["step"][-1] == 1200
    assert evals["step"] == list(range(100, 1201, 100)) and evals["val_loss"][0] == 6.25
    assert request(server, "GET", "/health")[0] == 200


def test_completions_usage_and_seeds(server, client, tokenizer):
    model = model_id(client)
    prompt_tokens = len(tokenizer.encode("ROMEO:"))
    one = client.completions.create(model=model, prompt="ROMEO:", max_tokens=12, seed=5)
    again = client.completions.create(model=model, prompt="ROMEO:", max_tokens=12, seed=5)
    other = client.completions.create(model=model, prompt="ROMEO:", max_tokens=12, seed=6)
    assert one.object == "text_completion" and one.choices[0].finish_reason == "length"
    assert one.choices[0].text == again.choices[0].text != other.choices[0].text
    assert (one.usage.prompt_tokens, one.usage.completion_tokens, one.usage.total_tokens) == (prompt_tokens, 12, prompt_tokens + 12)
    several = client.completions.create(model=model, prompt="ROMEO:", max_tokens=12, seed=5, n=3)
    assert [c.index for c in several.choices] == [0, 1, 2] and several.usage.completion_tokens == 36
    assert several.choices[0].text == one.choices[0].text  # choice i has seed + i
    assert len({c.text for c in several.choices}) == 3


def test_streamed_text_is_the_whole_text_in_pieces(client):
    model = model_id(client)
    whole = client.completions.create(model=model, prompt="KING", max_tokens=20, seed=1, temperature=0.8)
    chunks = list(client.completions.create(model=model, prompt="KING", max_tokens=20, seed=1, temperature=0.8,
                                            stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_chat_streamed_and_not(client):
    model = model_id(client)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=15, seed=2)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=15, seed=2, stream=True))
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    prompt = request(client.base_url.scheme + "://" + client.base_url.netloc.decode(), "POST", "/tokenize",
                     {"messages": messages})[2]  # fmt: skip
    assert whole.usage.prompt_tokens == prompt["count"] and prompt["max_model_len"] == 128


def test_a_stop_string_ends_the_text_with_finish_reason_stop(client):
    model = model_id(client)
    text = client.completions.create(model=model, prompt="To be", max_tokens=40, temperature=0).choices[0].text
    stop = text[12:15]
    cut = client.completions.create(model=model, prompt="To be", max_tokens=40, temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].text == text[: text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_greedy_text_is_the_same_alone_and_among_concurrent_clients(checkpoint):
    """With --batch-invariant (by default a step multiplies only the rows in use, which a CPU's
    BLAS may round differently: engine.py says why)."""
    with running(checkpoint, batch_invariant=True) as (base, _):
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=WAIT)
        check_greedy_is_batch_invariant(client)


def check_greedy_is_batch_invariant(client):
    model = model_id(client)

    def greedy(prompt: str) -> str:
        return client.completions.create(model=model, prompt=prompt, max_tokens=30, temperature=0).choices[0].text

    alone = greedy("ROMEO: I")
    prompts = ["To be", "ROMEO: I", "First Citizen:", "KING", "ROMEO: I", "O"] * 2
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(greedy, prompts))
    assert [t for p, t in zip(prompts, texts) if p == "ROMEO: I"] == [alone] * 4


def test_tokenize_and_detokenize(server):
    code, _, tokens = request(server, "POST", "/tokenize", {"prompt": "To be, or not"})
    assert code == 200 and tokens["count"] == len(tokens["tokens"]) > 1
    assert request(server, "POST", "/detokenize", {"tokens": tokens["tokens"]})[2] == {"prompt": "To be, or not"}
    code, _, error = request(server, "POST", "/detokenize", {"tokens": [1, 300]})
    assert code == 400 and error["error"]["param"] == "tokens" and "300" in error["error"]["message"]


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, body, code, param, says", [
    ("/v1/completions", b"{not json", 400, None, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, None, "JSON object"),
    ("/v1/completions", {"prompt": "x", "temperature": "hot"}, 400, "temperature", "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": 3}, 400, "temperature", "less than or equal to 2"),
    ("/v1/completions", {"prompt": "x", "n": 5}, 400, "n", "n:"),
    ("/v1/completions", {"max_tokens": 3}, 400, "prompt", "Field required"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 500}, 400, "max_tokens", "at most 127"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options", "stream"),
    ("/v1/completions", {"prompt": [5, 999]}, 400, "prompt", "999"),
    ("/v1/completions", {"prompt": "x", "model": "gpt-4"}, 404, "model", "gpt-4"),
    ("/v1/completions", {"prompt": "x " * 200}, 413, "prompt", "context is 128"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages", "robot"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 400, "messages", "content"),
])  # fmt: skip
def test_bad_requests_get_openai_error_bodies(server, path, body, code, param, says):
    raw = body if isinstance(body, bytes) else None
    status_code, _, payload = request(server, "POST", path, None if raw else body, raw=raw)
    error = payload["error"]
    assert status_code == code and error["param"] == param and says in error["message"], payload
    assert set(error) == {"message", "type", "param", "code"} and error["type"]


def test_unknown_paths_and_methods(server):
    code, _, payload = request(server, "GET", "/v2/nothing")
    assert code == 404 and payload["error"]["type"] == "not_found_error" and "/v2/nothing" in payload["error"]["message"]
    code, _, payload = request(server, "GET", "/v1/completions")
    assert code == 405 and "GET" in payload["error"]["message"]
    code, _, payload = request(server, "GET", "/static/no-such-file.js")
    assert code == 404 and "error" in payload
    assert request(server, "GET", "/")[0] == 200


def test_the_server_survives_every_bad_request_above(server, client):
    assert client.completions.create(model=model_id(client), prompt="x", max_tokens=2).usage.completion_tokens == 2


def test_an_api_key_guards_every_api_route_but_not_the_page(checkpoint):
    with running(checkpoint, api_key="s3cret") as (base, _):
        for method, path, body in (("GET", "/v1/models", None), ("POST", "/v1/completions", {"prompt": "x"}),
                                   ("GET", "/model_card", None), ("POST", "/tokenize", {"prompt": "x"}),
                                   ("GET", "/metrics", None)):  # fmt: skip
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                code, got, payload = request(base, method, path, body, headers)
                assert code == 401 and payload["error"]["code"] == "invalid_api_key" and got["www-authenticate"]
        assert request(base, "GET", "/")[0] == request(base, "GET", "/health")[0] == 200
        guarded = openai.OpenAI(base_url=base + "/v1", api_key="s3cret", max_retries=0, timeout=WAIT)
        assert guarded.completions.create(model="tiny.pt", prompt="x", max_tokens=3).usage.completion_tokens == 3
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="nope", max_retries=0).models.list()


def test_cors_only_for_the_origin_named(checkpoint, server):
    preflight = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in request(server, "OPTIONS", "/v1/completions", headers=preflight)[1]
    with running(checkpoint, cors_origins=("http://example.test",)) as (base, _):
        _, headers, _ = request(base, "OPTIONS", "/v1/completions", headers=preflight)
        assert headers["access-control-allow-origin"] == "http://example.test"
        _, headers, _ = request(base, "OPTIONS", "/v1/completions", headers={**preflight, "Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in headers


# ---- load: a full queue, a hang-up, a time limit, loading ------------------------------------------


def test_a_full_queue_answers_429_with_retry_after(checkpoint):
    with running(checkpoint, step_delay=0.05, max_batch=1, max_queue=1) as (base, _):
        first = stream_request(base, {"prompt": "To be", "max_tokens": 100, "stream": True})
        wait_until(lambda: metric(base, "gpt2_active_sequences") == 1, "the first request to be decoded")
        second = threading.Thread(target=request, args=(base, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 2}))
        second.start()
        wait_until(lambda: metric(base, "gpt2_queue_length") == 1, "the second request to wait in the queue")
        code, headers, payload = request(base, "POST", "/v1/completions", {"prompt": "KING", "max_tokens": 2})
        assert code == 429 and headers["retry-after"] == "1" and payload["error"]["code"] == "queue_full"
        first.close()
        second.join(WAIT)
        assert not second.is_alive()


def stream_request(base: str, body: dict) -> socket.socket:
    """Send a streaming request by hand and read its first event; returns the open socket."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))  # fmt: skip
    received = b""
    while b"data: " not in received:
        received += sock.recv(4096)
    return sock


def test_a_client_that_hangs_up_leaves_the_batch(checkpoint):
    with running(checkpoint, step_delay=0.05) as (base, _):
        sock = stream_request(base, {"prompt": "To be", "max_tokens": 120, "stream": True})  # 6 s if read to the end
        assert metric(base, "gpt2_active_sequences") == 1
        sock.close()
        started = time.monotonic()
        wait_until(lambda: metric(base, "gpt2_active_sequences") == 0, "the sequence to leave the batch", 3)
        assert time.monotonic() - started < 3
        text = request(base, "GET", "/metrics")[2]
        assert 'gpt2_finished_sequences_total{reason="cancelled"} 1' in text
        assert metric(base, "gpt2_generated_tokens_total") < 120


def test_the_request_time_limit_ends_a_request_early(checkpoint):
    with running(checkpoint, step_delay=0.05, request_timeout=0.5) as (base, _):
        code, _, payload = request(base, "POST", "/v1/completions", {"prompt": "To be", "max_tokens": 100})
        assert code == 200 and payload["choices"][0]["finish_reason"] == "length"
        assert 2 <= payload["usage"]["completion_tokens"] < 50


def test_health_is_503_until_the_model_is_loaded(checkpoint):
    ready = threading.Event()
    app = create_app(lambda: (ready.wait(WAIT), load(checkpoint))[1])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: status(base, "/health") != 0, "the server to listen")
        code, headers, payload = request(base, "GET", "/health")
        assert code == 503 and headers["retry-after"] == "1" and "loading" in payload["error"]["message"]
        assert request(base, "POST", "/v1/completions", {"prompt": "x"})[0] == 503
        ready.set()
        wait_until(lambda: status(base, "/health") == 200, "the model to load")
    finally:
        ready.set()
        server.should_exit = True
        thread.join(WAIT)


# ---- logprobs, echo, penalties and bias: the model's own numbers through the openai client ----


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The served model itself, to compare the server's numbers with."""
    return load(checkpoint).model.eval()


def own_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log-softmax of the model's logits at every position of ids: (T, vocab)."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0][0].float(), dim=-1)


def test_completion_logprobs_are_the_models_own_streamed_or_not(client, reference, tokenizer):
    model, prompt = model_id(client), tokenizer.encode("ROMEO:")
    reply = client.completions.create(model=model, prompt="ROMEO:", max_tokens=8, temperature=0, logprobs=3)
    lp = reply.choices[0].logprobs
    made = tokenizer.encode(reply.choices[0].text)
    assert lp.tokens == [token_text(tokenizer, t) for t in made]
    own = own_logprobs(reference, prompt + made[:-1])[len(prompt) - 1 :]  # the positions that predicted them
    assert lp.token_logprobs == pytest.approx(own.gather(1, torch.tensor(made)[:, None])[:, 0].tolist(), abs=1e-4)
    for position, top in enumerate(lp.top_logprobs):
        best = own[position].topk(3)
        expected = {token_text(tokenizer, t): v for t, v in zip(best.indices.tolist(), best.values.tolist())}
        assert set(expected) <= set(top) and len(top) == 3  # greedy: the chosen token is the most likely
        assert [top[k] for k in expected] == pytest.approx(list(expected.values()), abs=1e-4)
    widths = [len(tokenizer.decode_bytes([t]).decode("utf-8", errors="replace")) for t in made]  # each token's own text
    assert lp.text_offset == [sum(widths[:i]) for i in range(8)]
    streamed = list(client.completions.create(model=model, prompt="ROMEO:", max_tokens=8, temperature=0, logprobs=3,
                                              stream=True))  # fmt: skip
    pieces = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    assert sum((p.token_logprobs for p in pieces), []) == lp.token_logprobs
    assert sum((p.text_offset for p in pieces), []) == lp.text_offset


def token_text(tokenizer, token: int) -> str:
    """A token as OpenAI's completions show it: its text, or "bytes:\\xNN..." for part of a character."""
    data = tokenizer.decode_bytes([token])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def test_echo_with_no_new_tokens_scores_the_prompt(client, reference, tokenizer):
    """What evaluation harnesses send: echo, max_tokens 0, logprobs: the prompt's own log-probabilities."""
    text = "First Citizen: we are accounted poor"
    ids = tokenizer.encode(text)
    reply = client.completions.create(model=model_id(client), prompt=text, max_tokens=0, echo=True, logprobs=1)
    choice = reply.choices[0]
    assert choice.text == text and choice.finish_reason == "length" and reply.usage.completion_tokens == 0
    own = own_logprobs(reference, ids)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(own, abs=1e-4)
    assert "".join(choice.logprobs.tokens) == text
    more = client.completions.create(model=model_id(client), prompt=text, max_tokens=3, echo=True, temperature=0)
    assert more.choices[0].text.startswith(text) and len(more.choices[0].text) > len(text)


def test_chat_logprobs_with_bytes(client, reference, tokenizer):
    reply = client.chat.completions.create(model=model_id(client), messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)  # fmt: skip
    content = reply.choices[0].logprobs.content
    assert len(content) == 6 and all(len(c.top_logprobs) == 2 for c in content)
    assert b"".join(bytes(c.bytes) for c in content).decode("utf-8", errors="replace") == reply.choices[0].message.content
    assert all(c.logprob == pytest.approx(c.top_logprobs[0].logprob, abs=1e-6) for c in content)  # greedy: the best


def test_penalties_and_bias_are_generates_own(client, reference, tokenizer):
    prompt = tokenizer.encode("ROMEO:")
    for settings in ({"frequency_penalty": 2.0}, {"presence_penalty": 1.5}, {"logit_bias": {"65": 100}}):
        reply = client.completions.create(model=model_id(client), prompt=prompt, max_tokens=10, temperature=0, **settings)
        bias = {int(k): v for k, v in settings.pop("logit_bias", {}).items()} or None
        own = reference.generate(prompt, 10, temperature=0, logit_bias=bias, **settings)[len(prompt) :]
        assert reply.choices[0].text == tokenizer.decode(own), settings
    assert tokenizer.decode(own) == tokenizer.decode([65]) * 10


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "presence_penalty": 2.5}, "presence_penalty"),
    ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"100000": 1}}, "logit_bias"),
])  # fmt: skip
def test_bad_sampling_settings_are_400(server, body, param):
    code, _, payload = request(server, "POST", "/v1/completions", body)
    assert code == 400 and payload["error"]["param"] == param


def test_top_logprobs_needs_logprobs(server):
    body = {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}
    code, _, payload = request(server, "POST", "/v1/chat/completions", body)
    assert code == 400 and payload["error"]["param"] == "top_logprobs"


def test_a_chats_next_turn_reuses_its_beginning_and_says_so_in_metrics(checkpoint, server):
    system = {"role": "system", "content": "You answer in verse."}
    turn = [system, {"role": "user", "content": "Who are you?"}]
    with running(checkpoint, prefix_cache_mb=16) as (base, _):
        first = request(base, "POST", "/v1/chat/completions", {"messages": turn, "max_tokens": 6, "temperature": 0})[2]
        answer = first["choices"][0]["message"]["content"]
        wait_until(lambda: metric(base, "gpt2_prefix_cache_bytes") > 0, "the first turn's keys to be kept")
        turn += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And then?"}]
        body = {"messages": turn, "max_tokens": 8, "temperature": 0}
        second = request(base, "POST", "/v1/chat/completions", body)[2]["choices"][0]["message"]["content"]
        assert metric(base, "gpt2_prefix_cache_hits_total") == 1
        assert metric(base, "gpt2_prefix_cache_reused_tokens_total") >= 20
    assert second == request(server, "POST", "/v1/chat/completions", body)[2]["choices"][0]["message"]["content"]


# ---- faults and bounds ---------------------------------------------------------------------------


def break_on(app, token: int):
    """Make the served model's decode steps raise when `token` is among their inputs."""

    def hook(module, inputs):
        if inputs[0].size(1) == 1 and bool((inputs[0] == token).any()):
            raise RuntimeError(f"token {token} is marked")

    return app.state.serving.served.engine.model.wte.register_forward_pre_hook(hook)


def test_a_temperature_too_small_to_divide_by_is_greedy(server):
    body = {"prompt": "ROMEO:", "max_tokens": 10}
    greedy = request(server, "POST", "/v1/completions", {**body, "temperature": 0})[2]["choices"][0]["text"]
    for temperature in (1e-40, 1e-300):
        code, _, payload = request(server, "POST", "/v1/completions", {**body, "temperature": temperature})
        assert code == 200 and payload["choices"][0]["text"] == greedy
    assert request(server, "GET", "/health")[0] == 200


def test_a_request_whose_step_raises_fails_alone_and_the_server_goes_on(checkpoint, tokenizer):
    """Four requests at once, one of them makes the model raise: it gets a 500 in OpenAI's shape
    (streamed: an error event, then [DONE]); the other three are answered in full."""
    with running(checkpoint) as (base, app):
        body = {"max_tokens": 12, "temperature": 0}
        made = request(base, "POST", "/v1/completions", {**body, "prompt": "ROMEO: I"})[2]["choices"][0]["text"]
        marked = tokenizer.encode(made)[2]
        others = [request(base, "POST", "/v1/completions", {**body, "prompt": p})[2] for p in ("To be", "KING", "O")]
        assert all(marked not in tokenizer.encode(o["choices"][0]["text"]) for o in others)
        handle = break_on(app, marked)
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda p: request(base, "POST", "/v1/completions", {**body, "prompt": p}),
                                    ["To be", "ROMEO: I", "KING", "O"]))  # fmt: skip
            code, _, raw = request(base, "POST", "/v1/completions", {**body, "prompt": "ROMEO: I", "stream": True})
        handle.remove()
        assert [r[0] for r in replies] == [200, 500, 200, 200]
        error = replies[1][2]["error"]
        assert error["type"] == "server_error" and error["code"] == "generation_failed"
        assert error["message"] == f"generation failed: RuntimeError: token {marked} is marked"
        assert [replies[i][2]["choices"] for i in (0, 2, 3)] == [o["choices"] for o in others]
        events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e.startswith("data: ")]
        assert code == 200 and events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "generation_failed"
        assert request(base, "GET", "/health")[0] == 200
        assert request(base, "POST", "/v1/completions", {**body, "prompt": "ROMEO: I"})[2]["choices"][0]["text"] == made
        assert 'gpt2_finished_sequences_total{reason="error"} 2' in request(base, "GET", "/metrics")[2]


def test_a_deadline_ends_a_request_while_the_engine_is_stuck(checkpoint):
    """The web side keeps the deadline too: a request is answered (finish_reason "length") about
    DEADLINE_GRACE seconds after its deadline, though the engine never ends it."""
    with running(checkpoint, request_timeout=0.3) as (base, app):
        engine, stuck = app.state.serving.served.engine, threading.Event()
        step = engine._step
        engine._step = lambda: (stuck.wait(WAIT), step())[1]
        try:
            started = time.monotonic()
            code, _, payload = request(base, "POST", "/v1/completions", {"prompt": "To be", "max_tokens": 50})
            waited = time.monotonic() - started
            code_s, _, raw = request(base, "POST", "/v1/completions", {"prompt": "To be", "max_tokens": 50, "stream": True})
        finally:
            stuck.set()
    assert code == 200 and payload["choices"][0]["finish_reason"] == "length" and waited < WAIT
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e.startswith("data: ")]
    assert code_s == 200 and events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"] == "length"


def test_a_body_over_the_limit_is_refused_before_it_is_read(checkpoint):
    with running(checkpoint, max_body=1000) as (base, _):
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=WAIT) as sock:  # headers only: 40 MB promised
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 40000000\r\n\r\n")  # fmt: skip
            head = b""
            for _ in range(100):  # the head, then the body it announces
                head += sock.recv(65536)
                if b"\r\n\r\n" in head and head.endswith(b"}"):
                    break
            head = head.decode()
        assert head.startswith("HTTP/1.1 413") and '"code":"body_too_large"' in head and "1,000 (--max-body)" in head
        conn = http.client.HTTPConnection(host, int(port), timeout=WAIT)  # chunked: no length declared
        conn.request("POST", "/v1/completions", body=iter([b'{"prompt": "', b"x" * 2000, b'"}']),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)  # fmt: skip
        response = conn.getresponse()
        assert response.status == 413 and json.loads(response.read())["error"]["code"] == "body_too_large"
        assert request(base, "POST", "/v1/completions", {"prompt": "To be", "max_tokens": 2})[0] == 200


def test_a_prompt_too_long_for_the_context_is_refused_before_tokenizing(checkpoint, monkeypatch):
    with running(checkpoint) as (base, app):
        tokenizer = app.state.serving.served.loaded.tokenizer
        calls = []
        encode = tokenizer.encode
        monkeypatch.setattr(tokenizer, "encode", lambda *a, **k: calls.append(1) or encode(*a, **k))
        words = "the king " * 200_000  # 1.8 MB: could not fit 128 tokens whatever the tokenizer made of it
        for path, body in (("/v1/completions", {"prompt": words}), ("/tokenize", {"prompt": words}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": words}]})):  # fmt: skip
            code, _, payload = request(base, "POST", path, body)
            assert code == 413 and payload["error"]["code"] == "context_length_exceeded", path
        assert calls == []
        assert request(base, "POST", "/v1/completions", {"prompt": "the king " * 100})[0] == 413  # tokenized: 200+
        assert calls == [1]


def test_the_api_key_from_a_file_or_the_environment_without_surrounding_whitespace(tmp_path, checkpoint):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret \n")
    assert api_key_of(None, str(key_file), "other") == "s3cret"
    assert api_key_of(None, None, " s3cret\t") == "s3cret" and api_key_of(None, None, "") is None
    assert api_key_of("given", None, "other") == "given"
    for args, says in (((None, str(tmp_path / "none"), None), "cannot read the API key file"),
                       (("k", str(key_file), None), "not both"), ((" ", None, None), "--api-key is empty")):  # fmt: skip
        with pytest.raises(UserError, match=says):
            api_key_of(*args)
    key_file.write_text("\n")
    with pytest.raises(UserError, match="is empty"):
        api_key_of(None, str(key_file), None)
    with running(checkpoint, api_key="s3cret \n") as (base, _):  # the same rule on both sides
        for given, code in (("s3cret", 200), ("s3cret ", 200), ("s3cre", 401)):
            assert request(base, "GET", "/v1/models", headers={"Authorization": f"Bearer {given}"})[0] == code


def test_a_warning_when_listening_beyond_this_machine_without_a_key():
    assert "without an API key" in exposure_warning("0.0.0.0", None)
    assert exposure_warning("0.0.0.0", "k") is None
    assert exposure_warning("127.0.0.1", None) is None and exposure_warning("::1", None) is None


def test_an_engine_that_cannot_go_on_ends_the_server_with_an_error(checkpoint, monkeypatch):
    """/health turns 503 and serve() ends with one line (main.py: exit code 1), for a supervisor."""
    from gpt2_llm.serve.engine import Engine

    port, ended = free_port(), []

    def run_serve():
        try:
            ended.append(serve(lambda: load(checkpoint), port=port, say=lambda line: None))
        except UserError as e:
            ended.append(e)

    thread = threading.Thread(target=run_serve, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: status(base, "/health") == 200, "the server to load its model")
    monkeypatch.setattr(Engine, "_retire", lambda self, rows: [][0])  # a bug in the worker's own bookkeeping
    code, _, payload = request(base, "POST", "/v1/completions", {"prompt": "To be", "max_tokens": 3})
    health = status(base, "/health")
    thread.join(WAIT)
    assert code == 500 and "the engine has stopped on an error" in payload["error"]["message"]
    assert health in (503, 0)  # 503, or nothing once the server has closed
    assert isinstance(ended[0], UserError) and str(ended[0]).startswith("the engine stopped on an error")


# ---- UTF-8 ---------------------------------------------------------------------------------------

# Every byte of these characters is its own token; each character takes 2 to 4 tokens.
CHARACTERS = "é😀ж€"


@pytest.fixture(scope="module")
def utf8_model(tmp_path_factory, tokenizer) -> Path:
    """A model made by hand whose greedy text is CHARACTERS over and over, one byte per token:
    its blocks add nothing (zero output projections), so the next token depends on the last one
    alone, and its untied head maps each byte of the cycle to the next one."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=64, block_size=64,
                        tie_embeddings=False)  # fmt: skip
    model = GPT2(config)
    cycle = list(CHARACTERS.encode("utf-8"))  # byte b is token b in our tokenizers
    with torch.no_grad():
        for block in model.decoder.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.wpe.weight.zero_()
        model.lm_head.weight.zero_()
        for here, after in zip(cycle, cycle[1:] + cycle[:1]):
            x = torch.nn.functional.layer_norm(model.wte.weight[here], (64,))
            model.lm_head.weight[after] = 10 * x / x.norm()
    return save(tmp_path_factory.mktemp("utf8") / "utf8.pt", model, tokenizer)


def test_stream_chunks_never_split_a_character(utf8_model):
    with running(utf8_model) as (base, _):
        cycle = len(CHARACTERS.encode("utf-8"))  # 11 bytes, 11 tokens
        body = {"prompt": [CHARACTERS.encode("utf-8")[-1]], "max_tokens": 4 * cycle, "temperature": 0}
        whole = request(base, "POST", "/v1/completions", body)[2]["choices"][0]["text"]
        assert whole == CHARACTERS * 4
        cut = request(base, "POST", "/v1/completions", {**body, "max_tokens": 4 * cycle - 1})[2]["choices"][0]["text"]
        assert cut == CHARACTERS * 3 + CHARACTERS[:3] + "\ufffd"  # the end of an unfinished character, as bpe.decode
        host, port = base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=WAIT)
        conn.request("POST", "/v1/completions", json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
        raw = conn.getresponse().read()
        conn.close()
    events = [line[len(b"data: "):] for line in raw.split(b"\n\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    pieces = [json.loads(e.decode("utf-8", errors="strict"))["choices"][0]["text"] for e in events[:-1]]
    assert "".join(pieces) == whole and "\ufffd" not in whole
    assert all(piece == "" or piece[0] in CHARACTERS for piece in pieces)
    assert sum(1 for piece in pieces if piece) == 16  # a chunk per character, not one at the end


# ---- a classifier: POST /v1/classify -----------------------------------------------------------------

CLASSES = ["ham", "spam", "eggs"]
TEXTS = ["To be, or not to be", "O", "ROMEO: I will tell thee what thou art, and all the rest of it", "KING"]


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """A random classifier of three classes with a 32-token context; its score made large, so that
    the texts' probabilities differ well beyond float noise."""
    from gpt2_llm.classifier import GPT2Classifier, pad_id_of

    torch.manual_seed(1)
    gpt = GPT2(GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=64, block_size=32))
    model = GPT2Classifier(gpt, CLASSES, pad_id_of(tokenizer))
    with torch.no_grad():
        model.score.weight.mul_(100)
    part = model.checkpoint_entries(model.state_dict())["classifier"]
    return save(tmp_path_factory.mktemp("classify") / "spam.pt", gpt, tokenizer, classifier=part)


@pytest.fixture(scope="module")
def classifier_server(classifier_checkpoint):
    with running(classifier_checkpoint, max_batch=3) as (base, app):
        yield base, app


def own_probabilities(path: Path, tokenizer, text: str) -> list[float]:
    """The classifier's own softmax for one text alone, read as training reads it (its beginning, cut to the context)."""
    model = load(path).model
    ids = tokenizer.encode_ordinary(text)[: model.config.block_size]
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].softmax(-1).tolist()


def test_classify_gives_the_models_own_probabilities_alone_or_batched(classifier_server, classifier_checkpoint,
                                                                      tokenizer):  # fmt: skip
    """One text, and texts of different lengths in one request (batches of at most --max-batch 3
    rows, right-padded), one of them longer than the context: each equals the model on that text
    alone within 1e-5, and its label is the most probable class."""
    base, _ = classifier_server
    long = "To be, or not to be, that is the question: " * 20  # far more than 32 tokens
    texts = [*TEXTS, long]
    code, _, one = request(base, "POST", "/v1/classify", {"input": TEXTS[0], "model": "spam.pt"})
    assert code == 200 and one["object"] == "list" and one["model"] == "spam.pt" and len(one["data"]) == 1
    code, _, many = request(base, "POST", "/v1/classify", {"input": texts})
    assert code == 200 and [d["index"] for d in many["data"]] == list(range(5))
    for answer, text in [(one["data"][0], TEXTS[0]), *zip(many["data"], texts)]:
        expected = own_probabilities(classifier_checkpoint, tokenizer, text)
        assert answer["object"] == "classification" and list(answer["probabilities"]) == CLASSES
        got = list(answer["probabilities"].values())
        assert max(abs(g - e) for g, e in zip(got, expected)) <= 1e-5, (got, expected)
        assert answer["label"] == CLASSES[expected.index(max(expected))]
    assert len({d["label"] for d in many["data"]}) > 1  # not one class for everything
    lengths = [min(32, len(tokenizer.encode_ordinary(t))) for t in texts]
    assert many["usage"] == {"prompt_tokens": sum(lengths), "total_tokens": sum(lengths)} and lengths[-1] == 32
    # A long text is read from its beginning: what comes after the context changes nothing.
    longer = request(base, "POST", "/v1/classify", {"input": [long + "KING RICHARD"]})[2]["data"][0]
    cut = many["data"][-1]["probabilities"]  # the same text in a batch: equal within float noise
    assert max(abs(longer["probabilities"][name] - cut[name]) for name in CLASSES) <= 1e-5


@pytest.mark.parametrize("body, code, param, says", [
    ({"input": []}, 400, "input", "at least 1 item"),
    ({"input": 5}, 400, "input", "input"),
    ({"input": ["a", 3]}, 400, "input", "input.1"),
    ({"input": [[1, 2]]}, 400, "input", "input"),
    ({"inputs": "a"}, 400, "input", "Field required"),
    ({"input": ["a", ""]}, 400, "input", "input[1] is empty"),
    ({"input": ""}, 400, "input", "input is empty"),
    ({"input": ["a"] * 33}, 400, "input", "at most 32"),
    ({"input": ["é" * 300_000, "x" * 500_000]}, 413, "input", "1,100,000 bytes"),
    ({"input": "a", "model": "gpt-4"}, 404, "model", "gpt-4"),
    ({"input": "a", "temperature": 0.5}, 200, None, None),  # an unknown field is ignored, as elsewhere
])  # fmt: skip
def test_bad_classify_requests_get_openai_error_bodies(classifier_server, body, code, param, says):
    base, _ = classifier_server
    status_code, _, payload = request(base, "POST", "/v1/classify", body)
    assert status_code == code, payload
    if code != 200:
        error = payload["error"]
        assert error["param"] == param and says in error["message"], payload
        assert set(error) == {"message", "type", "param", "code"} and error["type"]


def test_a_language_model_refuses_classify(server):
    code, _, payload = request(server, "POST", "/v1/classify", {"input": "To be"})
    error = payload["error"]
    assert code == 400 and error["code"] == "model_not_classifier" and error["type"] == "invalid_request_error"
    assert error["message"].startswith("this model is a language model")
    assert "classes" not in request(server, "GET", "/v1/models")[2]["data"][0]
    assert request(server, "GET", "/model_card")[2]["classes"] is None


def test_a_classifier_refuses_generation_and_answers_the_rest(classifier_server):
    """The generation routes answer 400 saying where to go; no engine runs; the models list, the
    model card, /health, /metrics and /tokenize work as for a language model."""
    base, app = classifier_server
    for path, body in (("/v1/completions", {"prompt": "To be", "max_tokens": 3}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "To be", "stream": True})):  # fmt: skip
        code, _, payload = request(base, "POST", path, body)
        error = payload["error"]
        assert code == 400 and error["code"] == "model_is_classifier" and error["param"] == "model", payload
        assert "use POST /v1/classify" in error["message"] and "ham, spam, eggs" in error["message"]
    assert app.state.serving.served.engine is None
    (entry,) = request(base, "GET", "/v1/models")[2]["data"]
    assert (entry["id"], entry["classes"], entry["max_model_len"]) == ("spam.pt", CLASSES, 32)
    card = request(base, "GET", "/model_card")[2]
    assert card["classes"] == CLASSES and card["architecture"]["block_size"] == 32
    assert request(base, "GET", "/health")[0] == 200
    code, _, tokens = request(base, "POST", "/tokenize", {"prompt": "To be"})
    assert code == 200 and tokens["max_model_len"] == 32 and tokens["count"] >= 2
    before = metric(base, "gpt2_classified_texts_total")
    assert request(base, "POST", "/v1/classify", {"input": ["To be", "O"]})[0] == 200
    assert metric(base, "gpt2_classified_texts_total") == before + 2
    assert metric(base, "gpt2_queue_length") == 0


def test_a_classify_request_whose_forward_pass_raises_fails_alone(classifier_checkpoint):
    """A fault in the forward pass: 500 in OpenAI's shape for that request; the next ones are answered.
    The API key guards the route as every other."""
    with running(classifier_checkpoint, api_key="k") as (base, app):
        key = {"Authorization": "Bearer k"}
        code, _, payload = request(base, "POST", "/v1/classify", {"input": "To be"})
        assert code == 401 and payload["error"]["code"] == "invalid_api_key"
        expected = request(base, "POST", "/v1/classify", {"input": "To be"}, key)[2]["data"]
        model = app.state.serving.served.classifier.model
        model.forward = lambda *args, **kwargs: [][0]
        code, _, payload = request(base, "POST", "/v1/classify", {"input": "To be"}, key)
        del model.forward
        error = payload["error"]
        assert code == 500 and error["type"] == "server_error" and error["code"] == "classification_failed"
        assert error["message"] == "classification failed: IndexError: list index out of range"
        assert request(base, "POST", "/v1/classify", {"input": "To be"}, key)[2]["data"] == expected
        assert request(base, "GET", "/health")[0] == 200


def test_a_slow_classification_times_out_and_a_full_queue_answers_429(classifier_checkpoint):
    """A forward pass that outlasts --request-timeout: 503 for its request; a request while
    --max-queue requests are waiting: 429 with Retry-After; afterwards the route answers again."""
    with running(classifier_checkpoint, request_timeout=0.5, max_queue=1) as (base, app):
        classifier = app.state.serving.served.classifier
        model = classifier.model
        model.forward = lambda *args, **kwargs: (time.sleep(1.5), type(model).forward(model, *args, **kwargs))[1]
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(request, base, "POST", "/v1/classify", {"input": "To be"})
            wait_until(lambda: classifier.waiting == 1, "the first request to be classified")
            code, headers, payload = request(base, "POST", "/v1/classify", {"input": "KING"})
            assert code == 429 and payload["error"]["code"] == "queue_full" and headers["retry-after"] == "1"
            code, _, payload = slow.result(WAIT)
        assert code == 503 and "request time limit (0.5 s)" in payload["error"]["message"]
        wait_until(lambda: classifier.waiting == 0, "the slow forward pass to end")
        del model.forward
        assert request(base, "POST", "/v1/classify", {"input": "KING"})[0] == 200


# ---- main.py serve ---------------------------------------------------------------------------------


def test_main_serve_stops_cleanly_on_sigterm_while_streaming(checkpoint):
    port = free_port()
    key_file = checkpoint.with_name("key.txt")
    key_file.write_text("k\n")  # a key file's newline is not part of the key
    process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "serve", str(checkpoint), "--port", str(port),
                                "--api-key-file", str(key_file)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: status(base, "/health") == 200, "main.py serve to load its model", 60)
        client = openai.OpenAI(base_url=base + "/v1", api_key="k", max_retries=0, timeout=WAIT)
        stream = client.completions.create(model="tiny.pt", prompt="To be", max_tokens=100, stream=True)
        first = next(iter(stream))
        process.send_signal(signal.SIGTERM)
        rest = list(stream)  # the response in flight is finished
        out, err = process.communicate(timeout=WAIT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err.decode()
    assert first.choices[0].finish_reason is None and rest[-1].choices[0].finish_reason in ("stop", "length")
    assert "Traceback" not in err.decode() and f"http://127.0.0.1:{port}" in err.decode()
