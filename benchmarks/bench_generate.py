"""Generation speed of this checkout, or of this checkout against another one, taking turns.

    python benchmarks/bench_generate.py                          # this checkout
    python benchmarks/bench_generate.py --against ../main        # and another checkout, alternating

Two measurements, each a fresh process per run (so the two checkouts' packages never meet), runs
alternating between the checkouts, medians over the rounds of each run's best:
  - generate: tokens/s of GPT2.generate, batch 1, greedy, 200 new tokens after a 16-token prompt,
    on the recipe's shape (the mini preset with 4 layers, context 512, vocabulary 2048, ReLU²,
    untied head, RoPE, QK-norm), random weights;
  - engine: tokens/s of the server's engine without HTTP, N sequences of 64 greedy tokens
    submitted together (max_batch 16), on the mini preset with GPT-2's tokenizer (the shape
    bench_serve.py serves; <|endoftext|> ruled out, so every sequence runs to 64 tokens).
Each line also prints a checksum of the tokens made: equal checksums, equal tokens.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPT2_FILES = ROOT.parent / "shared" / "data" / "gpt2"

GENERATE = """
import sys, time, zlib, torch
from gpt2_llm import GPT2, GPT2Config
torch.manual_seed(0)
config = GPT2Config.from_preset("mini", n_layer=4, block_size=512, vocab_size=2048, mlp="relu2",
                                tie_embeddings=False, rope=True, qk_norm=True, dropout=0.0)
model = GPT2(config).eval()
prompt = torch.randint(0, 2048, (1, 16), generator=torch.Generator().manual_seed(1))
model.generate(prompt, 20, greedy=True)  # warm-up
times = []
for _ in range(3):
    start = time.perf_counter()
    out = model.generate(prompt, 200, greedy=True)
    times.append(time.perf_counter() - start)
print(200 / min(times), zlib.crc32(str(out.tolist()).encode()))
"""

ENGINE = """
import queue, sys, time, zlib, torch
from bpe import BPE
from gpt2_llm import GPT2, GPT2Config
from gpt2_llm.serve.engine import Engine, SamplingParams, Sequence
clients, files = int(sys.argv[1]), sys.argv[2]
tokenizer = BPE.from_gpt2(files + "/encoder.json", files + "/vocab.bpe")
torch.manual_seed(0)
model = GPT2(GPT2Config.from_preset("mini", vocab_size=tokenizer.vocab_size, dropout=0.0))
with torch.no_grad():
    end = tokenizer.special_tokens["<|endoftext|>"]
    model.wte.weight[end] = 0.0
    model.wte.weight[end, 0] = -10.0
engine = Engine(model, tokenizer, max_batch=16)
engine.start()
prompts = [tokenizer.encode(f"Request number {i}: tell me a story about") for i in range(clients)]
for warm_up in (True, False):
    boxes = [queue.Queue() for _ in prompts]
    seqs = [Sequence(p, SamplingParams(max_tokens=64, temperature=0), box.put) for p, box in zip(prompts, boxes)]
    start = time.perf_counter()
    engine.submit(seqs)
    for box in boxes:
        while not box.get(timeout=300).finish_reason:
            pass
    seconds = time.perf_counter() - start
engine.stop()
print(clients * 64 / seconds, zlib.crc32(str([s.tokens for s in seqs]).encode()))
"""


def run(code: str, checkout: Path, args: list[str]) -> tuple[float, str]:
    """(tokens/s, checksum) of one run of `code` with `checkout` first on the import path, 2 threads."""
    script = f"import sys; sys.path.insert(0, {str(checkout)!r})\nimport torch; torch.set_num_threads(2)\n" + code
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=True, cwd=checkout)
    rate, checksum = out.stdout.split()
    return float(rate), checksum


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", type=Path, help="another checkout of the project, measured in turn with this one")
    p.add_argument("--rounds", type=int, default=5, help="runs of each measurement per checkout (default 5)")
    p.add_argument("--what", default="generate,engine", help="which measurements, comma-separated (default both)")
    p.add_argument("--clients", default="1,16", help="engine measurements: sequences at once, comma-separated")
    args = p.parse_args()
    checkouts = {"this": ROOT} | ({"against": args.against.resolve()} if args.against else {})
    what = args.what.split(",")
    jobs = [("generate, batch 1", GENERATE, [])] if "generate" in what else []
    if "engine" in what:
        jobs += [(f"engine, {n} clients", ENGINE, [n, str(GPT2_FILES)]) for n in args.clients.split(",")]
    for name, code, job_args in jobs:
        rates = {label: [] for label in checkouts}
        sums = {}
        for _ in range(args.rounds):
            for label, checkout in checkouts.items():
                rate, sums[label] = run(code, checkout, job_args)
                rates[label].append(rate)
        line = ", ".join(f"{label} {statistics.median(r):.1f} tokens/s (tokens {sums[label]})" for label, r in rates.items())
        if args.against:
            line += f"; this / against {statistics.median(rates['this']) / statistics.median(rates['against']):.3f}"
        print(f"{name}: {line}", flush=True)


if __name__ == "__main__":
    main()
