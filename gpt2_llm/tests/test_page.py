"""The page of `main.py serve` in a real browser: headless Chromium driven by Playwright against the
real server (a subprocess on a free loopback port) with a tiny random model.

Skipped, saying why, only when Chromium or Playwright is missing (`apt-get install chromium`,
`pip install playwright`); CI has both. Every wait is bounded; screenshots go to the test's tmp_path.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from bpe import BPE
from gpt2_llm import GPT2, GPT2Config, save_checkpoint
from gpt2_llm.instruct import TEMPLATES

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)

# One worker runs every test of this file (pytest.ini's --dist loadgroup): one server and one
# browser, not one of each in both workers at once.
pytestmark = pytest.mark.xdist_group("page")
# The server keeps torch's threads, which conftest.py sets to one for test workers: on one thread
# the tiny model wrote its whole answer before the page could see it stream.
SERVER_ENV = {name: value for name, value in os.environ.items() if name != "OMP_NUM_THREADS"}

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "page-test-key"
KEY_STORAGE = "gpt2-toolkit-api-key"  # app.js's sessionStorage entry
# Flags for a headless Chromium in a container: no sandbox (no user namespaces there), no GPU, and
# nothing that reaches out to the network on its own.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 45_000  # the longest any single wait in the browser may take (a 300-token answer on a loaded 2-core machine took over 15 s)


def write_model(folder: Path) -> Path:
    """A random model with a chat template, its tokenizer, training state and a metrics log, as a
    training run would leave them. A long context, so that a generation lasts long enough to stop."""
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer " * 8
    tokenizer = BPE.train(text, vocab_size=300)
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=64, block_size=1024))
    with torch.no_grad():
        # <|endoftext|> never drawn, so a long generation lasts until Stop: the final LayerNorm's
        # output has zero mean before its bias, so a constant head row scores only the bias, -64.
        model.wte.weight[tokenizer.special_tokens["<|endoftext|>"]] = 10.0
        model.ln_f.bias.fill_(-0.1)
    path = folder / "tiny.pt"
    save_checkpoint(path, {"model_config": asdict(model.config), "model": model.state_dict(),
                           "tokenizer": {"text": tokenizer.to_text(), "hash": tokenizer.hash},
                           "chat_template": TEMPLATES["chat"].to_checkpoint(),
                           "state": {"step": 200, "tokens_seen": 204_800, "best_val_loss": 2.5}})
    records = []  # in the order a run writes them: a step's evaluation after its training record
    for step in range(0, 201, 10):
        records.append({"step": step, "loss": 5.7 - 3.0 * step / 200, "tokens": 1024 * step})
        if step % 100 == 0:
            records.append({"step": step, "eval": True, "tokens": 1024 * step, "val_loss": 5.6 - 3.1 * step / 200})
    (folder / "tiny.metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited ({server.returncode}): {server.stderr.read()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the server at {url} was not healthy within {seconds} s")


@contextlib.contextmanager
def served(model: Path, *flags: str):
    """`main.py serve MODEL FLAGS` on a free port of 127.0.0.1, its base URL once healthy; stopped afterwards."""
    port = free_port()
    command = [sys.executable, str(ROOT / "main.py"), "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
               *flags]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**SERVER_ENV, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The base URL of `main.py serve` on a tiny model with a chat template and an API key."""
    with served(write_model(tmp_path_factory.mktemp("page_model")), "--api-key", API_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=WAIT_MS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh tab on the page, the API key already given (as a user's earlier visit would have),
    the model card loaded. Errors thrown in the page fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    context.add_init_script(f"sessionStorage.setItem({json.dumps(KEY_STORAGE)}, {json.dumps(API_KEY)})")
    tab = context.new_page()
    errors = []
    tab.on("pageerror", lambda error: errors.append(error))
    tab.goto(server)
    tab.wait_for_selector("#param-count")
    yield tab
    context.close()
    assert not errors, f"the page threw: {errors}"


def output_text(page) -> str:
    return page.text_content("#output")


def generate(page, prompt: str, max_tokens: int, seed: str = "") -> str:
    """Generate to the end in the completion view; the text of #output."""
    page.fill("#prompt", prompt)
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#seed", seed)
    page.click("#generate")
    page.wait_for_function("document.querySelector('#stats').textContent.includes('tokens')")
    page.wait_for_selector("#generate:enabled")
    return output_text(page)


def test_the_page_asks_for_the_api_key_then_shows_the_model_card(browser, server, tmp_path):
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    page.goto(server)
    page.wait_for_selector("#api-key", state="visible")  # /model_card answered 401
    assert "401" in page.text_content("#error")
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Enter")
    page.wait_for_selector("#param-count")
    parameters = GPT2(GPT2Config(vocab_size=300, n_layer=2, n_head=2, n_embd=64, block_size=1024)).num_parameters()
    assert page.text_content("#param-count").replace(",", "") == str(parameters)
    assert page.is_hidden("#error") and page.is_hidden("#key-form")
    facts = page.text_content("#facts")
    assert "2 layers" in facts and "64 wide" in facts and "1,024 tokens" in facts and "200" in facts
    assert page.text_content("#best-val-loss") == "2.5000"
    # Both curves drawn, with a legend; a model with a chat template opens in the chat view.
    assert page.locator("#chart path.line").count() == 2
    assert page.text_content("#chart svg").count("loss") >= 3
    assert page.is_visible("#view-chat") and page.is_hidden("#view-completion")
    chart = page.locator("#chart svg").bounding_box()  # pointing at its right end reads the last values
    page.mouse.move(chart["x"] + chart["width"] - 2, chart["y"] + chart["height"] / 2)
    assert page.text_content("#chart .readout") == "step 200 · train loss 2.700 · val loss 2.500"
    page.screenshot(path=tmp_path / "card.png")
    context.close()


def test_generate_streams_into_the_output_and_stop_ends_it(page, server, tmp_path):
    page.click("#tab-completion")
    page.fill("#prompt", "To be, or not")
    page.fill("#max-tokens", "1000")
    page.fill("#temperature", "1")
    page.press("#prompt", "Control+Enter")  # the keyboard's way to Generate
    page.wait_for_selector("#stop:enabled")
    lengths = []
    deadline = time.monotonic() + 10
    while len(set(lengths)) < 4 and time.monotonic() < deadline:  # the text grows while it streams
        lengths.append(len(output_text(page)))
        time.sleep(0.05)
    assert len(set(lengths)) >= 4 and lengths == sorted(lengths), lengths
    assert output_text(page).startswith("To be, or not")
    page.screenshot(path=tmp_path / "streaming.png")
    page.click("#stop")
    page.wait_for_selector("#generate:enabled")
    assert "stopped" in page.text_content("#stats")
    stopped = output_text(page)
    time.sleep(0.5)
    assert output_text(page) == stopped  # nothing arrives after Stop
    generated = page.text_content("#output .generated")
    assert 0 < len(generated) and len(stopped) == len("To be, or not") + len(generated)
    page.screenshot(path=tmp_path / "stopped.png")
    wait_until_idle(server)  # the server ended the sequence when the page hung up


def wait_until_idle(url: str, seconds: float = 3) -> None:
    """Until the server's /metrics says no sequence is being decoded."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(request, timeout=2) as response:
            if "\ngpt2_active_sequences 0\n" in response.read().decode():
                return
        time.sleep(0.1)
    raise AssertionError(f"the server still decodes a sequence {seconds} s after Stop")


def test_the_same_seed_gives_the_same_text(page):
    page.click("#tab-completion")
    page.fill("#temperature", "1")
    first = generate(page, "whether 'tis", 20, seed="7")
    second = generate(page, "whether 'tis", 20, seed="7")
    other = generate(page, "whether 'tis", 20, seed="8")
    assert first == second and len(first) > len("whether 'tis")
    assert other != first
    stats = page.text_content("#stats")
    assert "20 tokens" in stats and "tokens/s" in stats


def test_the_chat_view_streams_an_answer(page, tmp_path):
    assert page.is_visible("#view-chat")  # the model has a chat template
    page.fill("#max-tokens", "5000")  # more than the context: refused, and the question is not lost
    page.fill("#chat-input", "Who are you?")
    page.press("#chat-input", "Enter")
    page.wait_for_selector("#error", state="visible")
    assert "max_tokens" in page.text_content("#error")
    assert page.locator("#messages .message").count() == 0 and page.input_value("#chat-input") == "Who are you?"
    page.fill("#max-tokens", "12")
    page.press("#chat-input", "Enter")
    page.wait_for_function("document.querySelector('#chat-stats').textContent.includes('tokens')")
    messages = page.locator("#messages .message")
    assert messages.count() == 2 and page.is_hidden("#error")
    assert messages.nth(0).text_content() == "YouWho are you?"
    assert page.text_content("#messages .assistant .content")  # an answer came
    page.fill("#chat-input", "And then?")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('#messages .message').length === 4")
    page.wait_for_selector("#send:enabled")
    page.screenshot(path=tmp_path / "chat.png")
    page.click("#chat-clear")
    assert messages.count() == 0


def test_a_conversation_that_outgrows_the_context_leaves_out_its_oldest_turns(page, tmp_path):
    """The tiny model's context is 1024 tokens and its answers run to max_tokens: by the third or
    fourth turn the server answers context_length_exceeded and the page sends fewer turns."""
    sent = []  # the messages of every chat request the page makes, refused ones included
    page.on("request", lambda r: sent.append(json.loads(r.post_data)["messages"])
            if r.url.endswith("/v1/chat/completions") else None)  # fmt: skip
    page.fill("#max-tokens", "300")
    for turn in range(1, 7):
        page.fill("#chat-input", f"Question {turn}?")
        page.press("#chat-input", "Enter")
        page.wait_for_selector("#send:enabled")
        assert page.is_hidden("#error"), page.text_content("#error")
        if page.locator("#messages .left-out").count():
            break
    else:
        raise AssertionError(f"six turns of 300 tokens never filled the context: {[len(m) for m in sent]}")
    messages = page.locator("#messages .message")
    assert messages.count() == 2 * turn and page.text_content("#messages .message:last-child .content")
    left_out = page.locator("#messages .left-out").count()
    assert left_out % 2 == 0 and f"{left_out} earlier messages not sent" in page.text_content("#chat-stats")
    for i in range(messages.count()):  # the oldest turns are the dimmed ones
        assert ("left-out" in messages.nth(i).get_attribute("class")) == (i < left_out)
    # The refused request held the whole conversation; the answered one, the same without its
    # oldest exchanges, down to the question itself at most.
    whole, answered = [m for m in sent if len(m) == 2 * turn - 1][-1], sent[-1]
    assert whole[0]["content"] == "Question 1?" and answered == whole[left_out:]
    assert answered[-1] == {"role": "user", "content": f"Question {turn}?"}
    page.screenshot(path=tmp_path / "left_out.png")
    page.click("#chat-clear")  # a new conversation sends everything again
    page.fill("#chat-input", "Again?")
    page.press("#chat-input", "Enter")
    page.wait_for_selector("#send:enabled")
    assert sent[-1] == [{"role": "user", "content": "Again?"}] and page.locator("#messages .left-out").count() == 0


def test_a_base_model_opens_in_the_completion_view(page, server):
    """A model without a chat template (its card's chat_template null) opens where it is useful."""
    def without_template(route):
        response = route.fetch()
        card = response.json()
        route.fulfill(response=response, json={**card, "chat_template": None})

    page.route("**/model_card", without_template)
    page.reload()
    page.wait_for_selector("#param-count")
    assert page.is_visible("#view-completion") and page.is_hidden("#view-chat")
    assert "no chat template" in page.text_content("#chat-note")


def sse(*payloads) -> str:
    return "".join(f"data: {json.dumps(p)}\n\n" for p in payloads) + "data: [DONE]\n\n"


MARKUP = "<img src=x onerror=\"window.__pwned=1\"><b>bold</b><script>window.__pwned=2</script>"


def test_model_output_and_user_text_are_shown_as_text_never_as_html(page, tmp_path):
    """A model that writes markup shows the characters: no element is made, no script runs."""
    completion = sse({"choices": [{"index": 0, "text": MARKUP[:20], "finish_reason": None}]},
                     {"choices": [{"index": 0, "text": MARKUP[20:], "finish_reason": "length"}]},
                     {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    chat = sse({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
               {"choices": [{"index": 0, "delta": {"content": MARKUP}, "finish_reason": "stop"}]})
    page.route("**/v1/completions", lambda route: route.fulfill(body=completion, content_type="text/event-stream"))
    page.route("**/v1/chat/completions", lambda route: route.fulfill(body=chat, content_type="text/event-stream"))

    page.fill("#chat-input", "<i>my</i> question")
    page.press("#chat-input", "Enter")
    page.wait_for_function("document.querySelector('#chat-stats').textContent.includes('tokens')")
    assert page.text_content("#messages .user .content") == "<i>my</i> question"
    assert page.text_content("#messages .assistant .content") == MARKUP

    page.click("#tab-completion")
    assert generate(page, "<u>prompt</u>", 2) == "<u>prompt</u>" + MARKUP
    page.screenshot(path=tmp_path / "markup.png")
    for tag in ("img", "b", "script", "i", "u"):
        assert page.locator(f"#output {tag}, #messages {tag}").count() == 0, tag
    assert page.evaluate("window.__pwned") is None
    assert "2 tokens" in page.text_content("#stats")


def test_the_servers_error_message_is_shown(page):
    page.click("#tab-completion")
    page.fill("#prompt", "To be")
    page.fill("#temperature", "-1")  # the server refuses it, naming the field
    page.click("#generate")
    page.wait_for_selector("#error", state="visible")
    message = page.text_content("#error")
    assert message.startswith("Error 400") and "temperature" in message
    assert page.is_enabled("#generate") and page.is_disabled("#stop")


# ---- a classifier ----------------------------------------------------------------------------------

CLASSES = ["negative", "neutral", "positive"]


def write_classifier(folder: Path) -> Path:
    """A random classifier of three classes (its score made large, so that texts differ), no API key."""
    from gpt2_llm.classifier import GPT2Classifier, pad_id_of

    tokenizer = BPE.train("To be, or not to be, that is the question: whether 'tis nobler " * 8, vocab_size=300)
    torch.manual_seed(1)  # a seed under which the three texts of the test get three different labels
    gpt = GPT2(GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=64, block_size=64))
    model = GPT2Classifier(gpt, CLASSES, pad_id_of(tokenizer))
    with torch.no_grad():
        model.score.weight.mul_(60)
    path = folder / "sentiment.pt"
    save_checkpoint(path, {"model_config": asdict(gpt.config), **model.checkpoint_entries(model.state_dict()),
                           "tokenizer": {"text": tokenizer.to_text(), "hash": tokenizer.hash}})  # fmt: skip
    return path


@pytest.fixture(scope="module")
def classifier_server(tmp_path_factory):
    with served(write_classifier(tmp_path_factory.mktemp("page_classifier"))) as url:
        yield url


def classify_directly(url: str, text: str) -> dict:
    body = json.dumps({"input": text}).encode()
    request = urllib.request.Request(f"{url}/v1/classify", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["data"][0]


def test_a_classifier_shows_the_label_and_each_class_probability(browser, classifier_server, tmp_path):
    """A classifier's page: a text box and Classify instead of completion and chat; the label and a
    bar per class, the same probabilities as the API gives; the server's error for an empty text."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(error))
    page.goto(classifier_server)
    page.wait_for_selector("#param-count")
    assert page.is_visible("#view-classify") and page.is_visible("#tab-classify")
    for hidden in ("#view-completion", "#view-chat", "#tab-completion", "#tab-chat", "#sampling"):
        assert page.is_hidden(hidden), hidden
    assert "3: negative, neutral, positive" in page.text_content("#facts")
    labels = set()
    for text in ("To be, or not to be, that is the question", "whether 'tis nobler", "T"):
        page.fill("#classify-input", text)
        page.press("#classify-input", "Control+Enter")  # the keyboard's way to Classify
        page.wait_for_function("document.querySelector('#classify-stats').textContent.includes('tokens')")
        page.wait_for_selector("#classify:enabled")
        expected = classify_directly(classifier_server, text)
        rows = page.locator("#classification .class-row")
        assert [rows.nth(i).locator(".class-name").text_content() for i in range(rows.count())] == CLASSES
        shown = {rows.nth(i).locator(".class-name").text_content(): float(rows.nth(i).get_attribute("data-probability"))
                 for i in range(rows.count())}  # fmt: skip
        assert shown == expected["probabilities"] and page.text_content("#class-label") == expected["label"]
        chosen = page.locator("#classification .class-row.chosen .class-name")
        assert chosen.count() == 1 and chosen.text_content() == expected["label"]
        widths = [rows.nth(i).locator(".fill").bounding_box()["width"] for i in range(3)]
        bar = rows.nth(0).locator(".bar").bounding_box()["width"]
        assert all(abs(w - bar * p) <= 1.5 for w, p in zip(widths, expected["probabilities"].values())), widths
        labels.add(expected["label"])
    assert labels == set(CLASSES)  # the page shows what the model says, not one class for all
    page.fill("#classify-input", "To be, or not to be, that is the question")
    page.click("#classify")
    page.wait_for_selector("#classify:enabled")
    page.screenshot(path=tmp_path / "classify.png")
    page.fill("#classify-input", "")
    page.click("#classify")
    page.wait_for_selector("#error", state="visible")
    assert page.text_content("#error").startswith("Error 400") and "input is empty" in page.text_content("#error")
    context.close()
    assert not errors, f"the page threw: {errors}"
