"""Serving throughput and latency: 1, 4, 8 and 16 concurrent clients against `main.py serve`, side by
side with transformers' own server (`transformers serve`, on our exported folder), or, where that
cannot start offline, transformers' `generate` called per request from as many client threads.

    python benchmarks/bench_serve.py                 # both servers, the table for BENCHMARKS.md
    python benchmarks/bench_serve.py --ours-only
    python benchmarks/bench_serve.py --lone          # one client against predict's own speed (issue 30)
    python benchmarks/bench_serve.py --prefix        # a 4-turn chat's time to first token, prefix reuse on/off

--prefix: a chat of 4 turns that ends near the context (an ~85-token system prompt, ~12-token user
turns, 16-token answers), streamed through /v1/chat/completions as the page sends it (the whole
history each turn), against `serve` with --prefix-cache-mb 0 and with the default; the time to the
first token of turns 2-4, medians over --rounds chats with different system prompts.

--lone: GPT2.generate's tokens/s (what `main.py predict` runs), greedy, 160 new tokens; the
engine alone (no HTTP) with 1 and 8 sequences, and one decode_step's time at 1 to 16 rows; then the
server with 1 and with 8 clients (3 requests each of 160 greedy tokens), by default and with
--batch-invariant, in turns, --rounds times; medians, and the ratios the issue asks for (one
client against predict, eight clients' total against one).

The model: the `mini` preset's shape (6 layers, 6 heads, 384 wide, context 256) with random
weights and GPT-2's own tokenizer (../shared/data/gpt2), so the head has GPT-2's 50,257 rows; speed
does not depend on what the weights have learned. Every client sends streaming completions of a
fixed length (max_tokens, min_tokens-free: the model never makes <|endoftext|>, see below), one
after another, and times each token as it arrives: total tokens/s over the run, time to first
token (TTFT) and time between tokens (TBT), p50 and p99. Both servers run on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPT2_FILES = ROOT.parent / "shared" / "data" / "gpt2"


def make_model(folder: Path) -> Path:
    """A mini-shaped checkpoint with GPT-2's tokenizer, random weights, and <|endoftext|> ruled out
    (its logit is held far below the others), so every request runs to max_tokens."""
    import torch

    from bpe import BPE
    from gpt2_llm import GPT2, GPT2Config, save_checkpoint

    tokenizer = BPE.from_gpt2(GPT2_FILES / "encoder.json", GPT2_FILES / "vocab.bpe")
    torch.manual_seed(0)
    model = GPT2(GPT2Config.from_preset("mini", vocab_size=tokenizer.vocab_size, dropout=0.0))
    with torch.no_grad():
        model.ln_f.bias[0] = 10.0
        model.wte.weight[tokenizer.special_tokens["<|endoftext|>"]] = 0.0
        model.wte.weight[tokenizer.special_tokens["<|endoftext|>"], 0] = -10.0
    path = folder / "mini.pt"
    save_checkpoint(path, {"model_config": asdict(model.config), "model": model.state_dict(),
                           "tokenizer": {"text": tokenizer.to_text(), "hash": tokenizer.hash}})  # fmt: skip
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, path: str, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not get ready in time")


def streamed(port: int, path: str, body: dict):
    """POST a streaming request; yield (arrival time, first choice) of each event, the request's
    start time first (with None)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", path, json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    yield start, None
    for line in response:
        if line.startswith(b"data: ") and not line.startswith(b"data: [DONE]"):
            yield time.perf_counter(), (json.loads(line[6:]).get("choices") or [{}])[0]
    conn.close()


def one_request(port: int, model: str, prompt: str, max_tokens: int, seed: int,
                temperature: float = 1.0) -> list[float]:  # fmt: skip
    """Send one streaming completion; return the arrival time of each chunk that carries text
    (the first one is measured from the request's start: index 0 is the start itself)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    return [at for at, choice in streamed(port, "/v1/completions", body) if choice is None or choice.get("text")]


def run_clients(request, clients: int, requests_each: int, max_tokens: int) -> dict:
    """`clients` threads, each sending `requests_each` requests one after another through
    request(prompt, seed) -> the times of its prompt's start and of each streamed chunk."""
    results: list[list[float]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for r in range(requests_each):
            times = request(f"Request {k}.{r}: once upon a time", 1000 * k + r)
            with lock:
                results.append(times)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = [t[1] - t[0] for t in results if len(t) > 1]
    tbt = [b - a for t in results for a, b in zip(t[1:], t[2:])]
    return {"clients": clients, "tokens_per_s": clients * requests_each * max_tokens / wall,
            "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99), "tbt_p50": pct(tbt, 50), "tbt_p99": pct(tbt, 99)}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def bench_server(command: list[str], ready_path: str, port: int, model: str, levels, requests_each, max_tokens,
                 env=None, temperature: float = 1.0) -> list[dict]:  # fmt: skip
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, env=env)
    try:
        wait_ready(port, ready_path, process)
        one_request(port, model, "warm up", 8, 0)
        rows = []
        for clients in levels:
            row = run_clients(lambda prompt, seed: one_request(port, model, prompt, max_tokens, seed, temperature),
                              clients, requests_each, max_tokens)
            print(f"  {clients:2d} clients: {row['tokens_per_s']:7.1f} tokens/s, TTFT p50 {row['ttft_p50'] * 1e3:6.0f} ms "
                  f"p99 {row['ttft_p99'] * 1e3:6.0f} ms, TBT p50 {row['tbt_p50'] * 1e3:5.1f} ms p99 "
                  f"{row['tbt_p99'] * 1e3:6.1f} ms", flush=True)
            rows.append(row)
        return rows
    except RuntimeError:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-3000:])
        raise
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,8,16", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=3, help="requests per client (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default 64)")
    parser.add_argument("--ours-only", action="store_true", help="skip transformers serve")
    parser.add_argument("--lone", action="store_true", help="one client against predict's speed, 8 against one")
    parser.add_argument("--prefix", action="store_true", help="a 4-turn chat's time to first token, prefix reuse on/off")
    parser.add_argument("--rounds", type=int, default=3, help="--lone: measurements of each (default 3)")
    args = parser.parse_args()
    if args.lone:
        return bench_lone(args.rounds)
    if args.prefix:
        return bench_prefix(args.rounds)
    levels = [int(x) for x in args.levels.split(",")]
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"{args.requests} requests x {args.max_tokens} tokens per client", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        checkpoint = make_model(folder)
        port = free_port()
        print(f"main.py serve {checkpoint.name} (mini shape, GPT-2 tokenizer, random weights)", flush=True)
        ours = bench_server([sys.executable, "main.py", "serve", str(checkpoint), "--port", str(port),
                             "--max-batch", "16"], "/health", port, "mini.pt", levels, args.requests,
                            args.max_tokens)  # fmt: skip
        theirs, label = None, None
        if not args.ours_only:
            exported = folder / "exported"
            subprocess.run([sys.executable, "main.py", "export", str(checkpoint), str(exported)], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
            theirs, label = try_transformers_serve(exported, levels, args.requests, args.max_tokens), "transformers serve"
            if theirs is None:
                label = "transformers generate"
                print("transformers generate, called per request, on the exported folder", flush=True)
                theirs = bench_generate(exported, levels, args.requests, args.max_tokens)
        print_table(ours, theirs, label)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


GENERATE = """
import sys, time, torch
sys.path.insert(0, ".")
from gpt2_llm import load
from bpe import BPE
loaded = load(sys.argv[1])
model = loaded.model.eval()
prompt = BPE.from_text(loaded.checkpoint["tokenizer"]["text"]).encode("Request number 0: tell me a story about")
model.generate(prompt, 16, temperature=0)
times = []
for _ in range(3):
    start = time.perf_counter()
    model.generate(prompt, 160, temperature=0)
    times.append(time.perf_counter() - start)
print(160 / sorted(times)[1])
"""


ENGINE_ALONE = """
import queue, sys, threading, time, torch
sys.path.insert(0, ".")
from bpe import BPE
from gpt2_llm import load
from gpt2_llm.serve.engine import Engine, SamplingParams, Sequence
box = {}  # loaded in a thread, as the server loads it: the main thread runs no parallel torch work
threading.Thread(target=lambda: box.update(loaded=load(sys.argv[1]))).start()
while "loaded" not in box:
    time.sleep(0.1)
model = box["loaded"].model.eval()
tokenizer = BPE.from_text(box["loaded"].checkpoint["tokenizer"]["text"])

def engine_rates(out):
    engine = Engine(model, tokenizer, max_batch=16)
    engine.start()
    for clients in (1, 1, 8):  # the first is a warm-up
        boxes = [queue.Queue() for _ in range(clients)]
        seqs = [Sequence(tokenizer.encode(f"Request number {i}: tell me a story about"),
                         SamplingParams(max_tokens=160, temperature=0), b.put) for i, b in enumerate(boxes)]
        start = time.perf_counter()
        engine.submit(seqs)
        for b in boxes:
            while not b.get(timeout=300).finish_reason:
                pass
        out[clients] = clients * 160 / (time.perf_counter() - start)
    engine.stop()

def step_ms(rows):  # one decode_step of `rows` rows, milliseconds
    with torch.inference_mode():
        cache = model.new_cache(16)
        for r in range(rows):
            model.prefill(torch.randint(0, 50000, (1, 12 + r)), cache, rows=[r])
        ids = torch.randint(0, 50000, (rows,))
        times = []
        for _ in range(35):
            start = time.perf_counter()
            model.decode_step(ids, cache)
            times.append(time.perf_counter() - start)
            for r in range(rows):
                cache.lengths[r] -= 1
        return sorted(times[5:])[15] * 1e3

rates, steps = {}, {}
worker = threading.Thread(target=lambda: (engine_rates(rates), steps.update({n: step_ms(n) for n in (1, 2, 4, 8, 16)})))
worker.start()
worker.join()
print(rates[1], rates[8], *steps.values())
"""


def bench_lone(rounds: int) -> None:
    """predict's tokens/s, then the server's with 1 and 8 clients, by default and --batch-invariant."""
    import statistics

    folder = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        checkpoint = make_model(folder)
        results: dict[str, list[float]] = {}
        for _ in range(rounds):
            out = subprocess.run([sys.executable, "-c", GENERATE, str(checkpoint)], cwd=ROOT, check=True,
                                 capture_output=True, text=True)  # fmt: skip
            results.setdefault("predict (generate), 160 greedy tokens", []).append(float(out.stdout.split()[-1]))
            alone = subprocess.run([sys.executable, "-c", ENGINE_ALONE, str(checkpoint)], cwd=ROOT, check=True,
                                   capture_output=True, text=True).stdout.split()  # fmt: skip
            results.setdefault("the engine alone, no HTTP, 1 sequence", []).append(float(alone[0]))
            results.setdefault("the engine alone, no HTTP, 8 sequences", []).append(float(alone[1]))
            for rows, ms in zip((1, 2, 4, 8, 16), alone[2:]):
                results.setdefault(f"one decode_step of {rows} row(s), ms", []).append(float(ms))
            for flags in ([], ["--batch-invariant"]):
                port = free_port()
                command = [sys.executable, "main.py", "serve", str(checkpoint), "--port", str(port), "--max-batch", "16",
                           *flags]  # fmt: skip
                rows = bench_server(command, "/health", port, "mini.pt", [1, 8], 3, 160, temperature=0)
                for row in rows:
                    name = f"serve{' ' + flags[0] if flags else ''}, {row['clients']} client(s)"
                    results.setdefault(name, []).append(row["tokens_per_s"])
        medians = {name: statistics.median(v) for name, v in results.items()}
        predict = medians["predict (generate), 160 greedy tokens"]
        for name, value in medians.items():
            unit = "" if name.endswith("ms") else " tokens/s"
            print(f"{name}: {value:.1f}{unit} (runs: {', '.join(f'{v:.1f}' for v in results[name])})")
        for flags in ("", " --batch-invariant"):
            one, eight = medians[f"serve{flags}, 1 client(s)"], medians[f"serve{flags}, 8 client(s)"]
            print(f"serve{flags}: 1 client / predict {one / predict:.2f} (bar >= 0.8), 8 clients / 1 client "
                  f"{eight / one:.2f} (bar >= 3)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def chat_turn(port: int, messages: list[dict]) -> tuple[float, str]:
    """One streamed chat turn: (seconds to its first content, the answer)."""
    body = {"model": "mini.pt", "messages": messages, "max_tokens": 16, "temperature": 0}
    start, first, answer = None, None, ""
    for at, choice in streamed(port, "/v1/chat/completions", body):
        content = (choice or {}).get("delta", {}).get("content")
        if choice is None:
            start = at
        elif content:
            first = first or at - start
            answer += content
    return first, answer


def bench_prefix(rounds: int) -> None:
    """Time to first token of a chat's turns 2-4, with and without prefix reuse."""
    import statistics

    folder = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    words = "the king of the castle rode out at dawn with his men and his horses to the".split()
    try:
        checkpoint = make_model(folder)
        for megabytes in ("0", "256"):
            port = free_port()
            command = [sys.executable, "main.py", "serve", str(checkpoint), "--port", str(port),
                       "--prefix-cache-mb", megabytes]  # fmt: skip
            log = tempfile.TemporaryFile()
            process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
            try:
                wait_ready(port, "/health", process)
                chat_turn(port, [{"role": "user", "content": "warm up"}])
                ttfts = {2: [], 3: [], 4: []}
                for r in range(rounds):
                    system = " ".join(words[(i * 7 + r) % len(words)] for i in range(80))  # about 85 tokens
                    messages = [{"role": "system", "content": system}]
                    for turn in range(1, 5):
                        question = " ".join(words[(turn * 5 + i + r) % len(words)] for i in range(10))
                        messages.append({"role": "user", "content": question})
                        ttft, answer = chat_turn(port, messages)
                        messages.append({"role": "assistant", "content": answer})
                        if turn > 1:
                            ttfts[turn].append(ttft)
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("POST", "/tokenize", json.dumps({"messages": messages[:-1]}), {"Content-Type": "application/json"})
                last = json.loads(conn.getresponse().read())["count"]
                line = ", ".join(f"turn {t} {statistics.median(v) * 1e3:.0f} ms" for t, v in ttfts.items())
                print(f"--prefix-cache-mb {megabytes}: time to first token {line} ({rounds} chats; the 4th turn's "
                      f"prompt {last} tokens of the context's 256)", flush=True)
            finally:
                process.terminate()
                process.wait(30)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def try_transformers_serve(exported: Path, levels, requests_each: int, max_tokens: int) -> list[dict] | None:
    """transformers' own server on our folder, offline; None when it cannot start here (it needs
    `accelerate`, which this project does not install)."""
    port = free_port()
    cli = shutil.which("transformers") or str(Path(sys.executable).parent / "transformers")
    print(f"transformers serve {exported.name} (offline, continuous batching)", flush=True)
    command = [cli, "serve", str(exported), "--port", str(port), "--host", "127.0.0.1", "--continuous-batching",
               "--device", "cpu", "--dtype", "float32", "--log-level", "warning"]  # fmt: skip
    try:
        return bench_server(command, "/health", port, str(exported), levels, requests_each, max_tokens,
                            {**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    except RuntimeError as e:
        print(f"  transformers serve cannot run here ({e}); measuring generate per request instead", flush=True)
        return None


def bench_generate(exported: Path, levels, requests_each: int, max_tokens: int) -> list[dict]:
    """The same clients, each calling transformers' generate for its own request (threads share
    the model; nothing batches requests together), timing tokens with a streamer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(exported).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)

    class Clock:
        def __init__(self, start):
            self.times, self.prompt_seen = [start], False

        def put(self, value):
            if self.prompt_seen:  # the first call hands over the prompt
                self.times.append(time.perf_counter())
            self.prompt_seen = True

        def end(self):
            pass

    def request(prompt: str, seed: int) -> list[float]:
        clock = Clock(time.perf_counter())
        ids = tokenizer(prompt, return_tensors="pt")
        torch.manual_seed(seed)  # generate samples from the global generator (shared by the threads)
        with torch.inference_mode():
            model.generate(**ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=True, top_k=0,
                           streamer=clock, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        return clock.times

    request("warm up", 0)
    rows = []
    for clients in levels:
        row = run_clients(request, clients, requests_each, max_tokens)
        print(f"  {clients:2d} clients: {row['tokens_per_s']:7.1f} tokens/s", flush=True)
        rows.append(row)
    return rows


def print_table(ours: list[dict], theirs: list[dict] | None, label: str | None) -> None:
    print("\n| clients | server | tokens/s | vs 1 client | TTFT p50 | TTFT p99 | TBT p50 | TBT p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in (("main.py serve", ours), (label, theirs)):
        if rows is None:
            continue
        base = rows[0]["tokens_per_s"]
        for r in rows:
            print(f"| {r['clients']} | {name} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.1f}x | "
                  f"{r['ttft_p50'] * 1e3:.0f} ms | {r['ttft_p99'] * 1e3:.0f} ms | {r['tbt_p50'] * 1e3:.1f} ms | "
                  f"{r['tbt_p99'] * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
