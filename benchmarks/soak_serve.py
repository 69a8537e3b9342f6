"""A soak of `main.py serve`: 8 clients for some minutes with a mix of requests; nothing may be lost.

    python benchmarks/soak_serve.py                     # 10 minutes, on a tiny random model made here
    python benchmarks/soak_serve.py MODEL --minutes 2   # a checkpoint, a transformers folder or a hub name

The server runs as `python main.py serve MODEL` on a free port of 127.0.0.1. Each client sends, one
after another: completions and chat completions, streamed and not; streams it hangs up on after
the first chunk; multi-turn chats (each answer goes into the next turn; one that outgrows the
context is refused, 400 or 413, as a client would be); and bad requests (a body that is not JSON,
fields of the wrong type, a prompt longer than the context, a model the server does not serve).
Every request ends answered (2xx) or refused with a status (4xx, 429, 503); one with no answer (a
connection error, a timeout, a 5xx, a stream without its [DONE] or with an error event) is lost.
The server's resident memory (VmRSS, from /proc) is sampled every few seconds.

It prints the requests by kind and outcome, the lost ones, the RSS after the first minute and at
the end, and the time to first token (p50, p99) of the streamed requests. Exit code 1 when a
request was lost, or the RSS grew more than 5% after the first minute.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench_serve import free_port  # noqa: E402  (beside this script)

CLIENTS = 8
MAX_REQUESTS = 100_000  # per client, whatever the duration
REQUEST_TIMEOUT = 120.0  # seconds a request may take before it counts as lost
MAX_LINES = 20_000  # lines read from one stream at most
SAMPLE_EVERY = 3.0  # seconds between RSS samples
BASELINE_AT = 60.0  # seconds: the RSS the end is compared with (or half the run, when shorter)
MAX_GROWTH = 5.0  # percent
READY_WITHIN = 300.0  # seconds the server may take to load its model
KINDS = {"completion": 3, "completion_stream": 3, "chat": 2, "chat_stream": 3, "multi_turn": 2, "hang_up": 2,
         "bad_json": 1, "wrong_type": 1, "too_long": 1, "unknown_model": 1}  # kind: weight  # fmt: skip


# ---- the model and the server ------------------------------------------------------------------


def made_up_text(rng: random.Random, words: int) -> str:
    syllables = ["ka", "lo", "mi", "ther", "an", "st", "re", "ou", "ing", "ve", "wh", "ar", "el", "sh", "on"]
    lexicon = ["the", "and", "I", "to", "of", "you"] + ["".join(rng.choices(syllables, k=rng.randint(1, 3)))
                                                         for _ in range(400)]  # fmt: skip
    return " ".join(rng.choice(lexicon) + ("." if rng.random() < 0.1 else "") for _ in range(words))


def make_model(folder: Path) -> Path:
    """A tiny random checkpoint (2 layers, 128 wide, context 256) with a tokenizer learnt from made-up text."""
    import torch

    from bpe import BPE
    from gpt2_llm import GPT2, GPT2Config, save_checkpoint

    tokenizer = BPE.train(made_up_text(random.Random(0), 8000), vocab_size=512, workers=1)
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=128, block_size=256))
    path = folder / "soak.pt"
    save_checkpoint(path, {"model_config": asdict(model.config), "model": model.state_dict(),
                           "tokenizer": {"text": tokenizer.to_text(), "hash": tokenizer.hash}})  # fmt: skip
    return path


def rss_mb(pid: int) -> float | None:
    """The process's resident memory in MB (VmRSS), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def wait_ready(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            if call(port, "GET", "/health", None, timeout=5)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready within {READY_WITHIN:.0f} s")


# ---- one request -------------------------------------------------------------------------------


def call(port: int, method: str, path: str, body: bytes | None, timeout: float = REQUEST_TIMEOUT):
    """(status, parsed JSON or None) of one whole request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(payload)
    except ValueError:
        return response.status, None


def stream(port: int, path: str, body: dict, hang_up: bool) -> tuple[int, float | None, str]:
    """Send a streamed request: (status, seconds to the first token or None, "" or why it is lost).
    hang_up: close the connection after the first chunk that carries text."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        data = json.dumps({**body, "stream": True})
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            response.read()
            return response.status, None, ""
        first = None
        for _ in range(MAX_LINES):
            line = response.readline()
            if not line:
                return 200, first, "the stream ended without [DONE]"
            if not line.startswith(b"data: "):
                continue
            if line.startswith(b"data: [DONE]"):
                return 200, first, ""
            event = json.loads(line[6:])
            if "error" in event:
                return 200, first, f"an error event: {event['error'].get('message')}"
            choice = (event.get("choices") or [{}])[0]
            if first is None and (choice.get("text") or (choice.get("delta") or {}).get("content")):
                first = time.perf_counter() - start
                if hang_up:
                    return 200, first, ""
        return 200, first, f"more than {MAX_LINES} lines"
    finally:
        conn.close()


# ---- the clients -------------------------------------------------------------------------------


@dataclass
class Tally:
    """What every client saw, under one lock."""

    outcomes: Counter = field(default_factory=Counter)  # (kind, "200" | "400" | ... | "lost") -> count
    lost: list = field(default_factory=list)  # (kind, why), the first 20
    ttft: list = field(default_factory=list)  # seconds, streamed requests
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, status: int | None, why: str = "", ttft: float | None = None) -> None:
        if not why and (status is None or status >= 500):
            why = f"status {status}"
        with self.lock:
            self.outcomes[(kind, "lost" if why else str(status))] += 1
            if why and len(self.lost) < 20:
                self.lost.append((kind, why))
            if ttft is not None:
                self.ttft.append(ttft)


def one_request(kind: str, port: int, rng: random.Random, context: int, tally: Tally) -> None:
    """Send one request of this kind (a multi-turn chat sends one per turn) and record its outcome."""
    prompt = made_up_text(rng, rng.randint(1, 30))
    sampling = {"max_tokens": rng.randint(1, 32), "temperature": rng.choice([0.0, 0.7, 1.0]),
                "seed": rng.randint(0, 999)}  # fmt: skip
    chat = {"messages": [{"role": "user", "content": prompt}], **sampling}
    try:
        if kind in ("completion_stream", "chat_stream", "hang_up"):
            path = "/v1/chat/completions" if kind == "chat_stream" else "/v1/completions"
            status, ttft, why = stream(port, path, chat if kind == "chat_stream" else {"prompt": prompt, **sampling},
                                       hang_up=kind == "hang_up")  # fmt: skip
            tally.record(kind, status, why, ttft)
        elif kind == "multi_turn":
            multi_turn(port, rng, chat, tally)
        else:
            path, body = plain_body(kind, rng, prompt, sampling, chat, context)
            tally.record(kind, call(port, "POST", path, body)[0])
    except (OSError, http.client.HTTPException, ValueError) as e:
        tally.record(kind, None, f"{type(e).__name__}: {e}")


def plain_body(kind: str, rng: random.Random, prompt: str, sampling: dict, chat: dict, context: int):
    """(path, body bytes) of a request answered in one piece: a good one or a bad one."""
    if kind == "completion":
        return "/v1/completions", json.dumps({"prompt": prompt, **sampling}).encode()
    if kind == "chat":
        return "/v1/chat/completions", json.dumps(chat).encode()
    if kind == "bad_json":
        return "/v1/completions", b'{"prompt": "' + prompt.encode() + b'", "max_tokens": '
    if kind == "wrong_type":
        bad = rng.choice([{"prompt": 5}, {"prompt": prompt, "max_tokens": "ten"}, {"messages": "hello"}])
        return ("/v1/chat/completions" if "messages" in bad else "/v1/completions"), json.dumps(bad).encode()
    if kind == "too_long":
        return "/v1/completions", json.dumps({"prompt": made_up_text(rng, 2 * context), "max_tokens": 4}).encode()
    if kind == "unknown_model":
        return "/v1/completions", json.dumps({"prompt": prompt, "model": "no-such-model", **sampling}).encode()
    raise ValueError(f"unknown kind {kind}")


def multi_turn(port: int, rng: random.Random, chat: dict, tally: Tally) -> None:
    """2 to 4 turns: each answer and a new question go into the next request."""
    messages = [{"role": "system", "content": "You answer briefly."}, *chat["messages"]]
    for _ in range(rng.randint(2, 4)):
        status, body = call(port, "POST", "/v1/chat/completions", json.dumps({**chat, "messages": messages}).encode())
        tally.record("multi_turn", status)
        if status != 200:
            return
        messages += [{"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                     {"role": "user", "content": made_up_text(rng, rng.randint(1, 12))}]  # fmt: skip


def client(index: int, port: int, context: int, deadline: float, tally: Tally) -> None:
    rng = random.Random(index)
    kinds, weights = list(KINDS), list(KINDS.values())
    for _ in range(MAX_REQUESTS):
        if time.monotonic() >= deadline:
            return
        one_request(rng.choices(kinds, weights)[0], port, rng, context, tally)


def sample_rss(pid: int, start: float, deadline: float, samples: list) -> None:
    """(seconds since the start, MB) every SAMPLE_EVERY seconds until the deadline."""
    for _ in range(int((deadline - start) / SAMPLE_EVERY) + 2):
        now = time.monotonic()
        mb = rss_mb(pid)
        if mb is not None:
            samples.append((now - start, mb))
        if now >= deadline:
            return
        time.sleep(min(SAMPLE_EVERY, max(0.0, deadline - now)))


# ---- the run and its report --------------------------------------------------------------------


def soak(model: str, minutes: float, log_file) -> tuple[Tally, list, int]:
    """Serve `model`, run the clients for `minutes`; (tally, RSS samples, the server's exit code)."""
    port = free_port()
    command = [sys.executable, "main.py", "serve", model, "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=log_file)
    try:
        wait_ready(port, process)
        context = call(port, "GET", "/v1/models", None)[1]["data"][0]["max_model_len"]
        call(port, "POST", "/v1/completions", json.dumps({"prompt": "warm up", "max_tokens": 4}).encode())
        print(f"serving {model} on 127.0.0.1:{port} (context {context}); {CLIENTS} clients for {minutes:g} min",
              flush=True)  # fmt: skip
        tally, samples = Tally(), []
        start = time.monotonic()
        deadline = start + minutes * 60
        threads = [threading.Thread(target=client, args=(i, port, context, deadline, tally)) for i in range(CLIENTS)]
        threads.append(threading.Thread(target=sample_rss, args=(process.pid, start, deadline, samples)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(minutes * 60 + REQUEST_TIMEOUT * 5)
        samples.append((time.monotonic() - start, rss_mb(process.pid) or float("nan")))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(10)
    return tally, samples, code


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def report(tally: Tally, samples: list, minutes: float, code: int, log_text: str) -> list[str]:
    """Print the tables; return the reasons to fail (empty: passed)."""
    statuses = sorted({o for _, o in tally.outcomes if o != "lost"}) + ["lost"]
    total = sum(tally.outcomes.values())
    print(f"\n{total} requests in {minutes:g} min ({total / (minutes * 60):.1f}/s)")
    print(f"  {'kind':18s}" + "".join(f"{s:>7s}" for s in statuses))
    for kind in KINDS:
        print(f"  {kind:18s}" + "".join(f"{tally.outcomes[(kind, s)]:7d}" for s in statuses))
    lost = sum(n for (_, o), n in tally.outcomes.items() if o == "lost")
    print(f"lost: {lost}" + "".join(f"\n  {kind}: {why}" for kind, why in tally.lost))
    baseline_at = min(BASELINE_AT, minutes * 30)
    base = next((mb for t, mb in samples if t >= baseline_at), float("nan"))
    end = samples[-1][1] if samples else float("nan")
    growth = (end - base) / base * 100
    print(f"RSS: {base:.1f} MB after {baseline_at:.0f} s, {end:.1f} MB at the end ({growth:+.1f}%), "
          f"peak {max(mb for _, mb in samples):.1f} MB, {len(samples)} samples")  # fmt: skip
    print(f"time to first token, {len(tally.ttft)} streamed requests: p50 {percentile(tally.ttft, 50) * 1e3:.0f} ms, "
          f"p99 {percentile(tally.ttft, 99) * 1e3:.0f} ms")  # fmt: skip
    tracebacks = log_text.count("Traceback")
    print(f"server: exit code {code} after SIGTERM; {tracebacks} tracebacks in its log")
    failures = [f"{lost} requests lost"] if lost else []
    if not growth <= MAX_GROWTH:
        failures.append(f"RSS grew {growth:+.1f}% after {baseline_at:.0f} s (at most {MAX_GROWTH:g}%)")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None, help="what `main.py serve` serves (default: a tiny random "
                                                              "checkpoint made in a temporary folder)")  # fmt: skip
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the clients run (default 10)")
    args = parser.parse_args()
    if not 0 < args.minutes <= 24 * 60:
        parser.error(f"--minutes must be in (0, 1440], got {args.minutes}")
    with tempfile.TemporaryDirectory(prefix="soak_serve_") as folder, tempfile.TemporaryFile() as log_file:
        model = args.model or str(make_model(Path(folder)))
        try:
            tally, samples, code = soak(model, args.minutes, log_file)
        except RuntimeError as e:
            log_file.seek(0)
            sys.stderr.write(log_file.read().decode(errors="replace")[-3000:])
            print(f"soak_serve: {e}", file=sys.stderr)
            return 1
        log_file.seek(0)
        log_text = log_file.read().decode(errors="replace")
        failures = report(tally, samples, args.minutes, code, log_text)
    print("FAIL: " + "; ".join(failures) if failures else "PASS: nothing lost, RSS within the bound")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
