"""Our GPT2 against transformers' GPT2LMHeadModel (SDPA attention): same config, same weights, one run.

    python benchmarks/bench_model.py            # the table in BENCHMARKS.md ("## Model")
    python benchmarks/bench_model.py --quick    # a fast smoke run

Training: tokens/s of a whole step (forward, backward, AdamW) at 6 layers, 384 wide, 6 heads,
context 256, batch 8, in float32 and under bf16 autocast. Generation: tokens/s for 200 new
tokens from a 16-token prompt, batch 1, greedy, with each model's KV cache (transformers through
its own generate()). The two models take turns, step by step, so a busy machine slows both alike;
every figure is a median, and the ratio is ours over theirs.
"""

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpt2_llm import GPT2, GPT2Config  # noqa: E402
from gpt2_llm.export import write_model  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=50257, help="GPT-2's vocabulary by default")
    p.add_argument("--small-vocab", type=int, default=4096,
                   help="generation is measured again at this vocabulary, the size of a tokenizer trained here")
    p.add_argument("--steps", type=int, default=6, help="timed training steps per model and dtype")
    p.add_argument("--gen-runs", type=int, default=5, help="timed generations per model")
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="2 steps, 2 generations of 50 tokens")
    return p.parse_args(argv)


def make_models(vocab_size: int):
    """Our model with a fixed seed, and transformers' model loaded from our export of it."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_layer=6, n_head=6, n_embd=384, block_size=256)
    ours = GPT2(config)
    sharpen(ours)
    theirs = to_transformers(ours)
    ids = torch.randint(0, vocab_size, (2, 64))
    with torch.no_grad():
        diff = (ours.eval()(ids)[0] - theirs.eval()(ids).logits).abs().max().item()
    assert diff < 1e-4, f"the two models disagree: logits differ by {diff}"
    return config, ours, theirs


def sharpen(model: GPT2) -> None:
    """Scale the token embedding 10x. GPT-2's small init gives 50257 nearly equal logits, where two
    correct implementations can pick different greedy tokens on a near-tie; larger weights make
    the generated ids comparable."""
    with torch.no_grad():
        model.wte.weight.mul_(10)


def to_transformers(model: GPT2):
    """transformers' GPT2LMHeadModel (SDPA attention) with our model's weights, through save_hf."""
    from transformers import GPT2LMHeadModel

    with tempfile.TemporaryDirectory() as folder:
        write_model(model, folder)
        return GPT2LMHeadModel.from_pretrained(folder, attn_implementation="sdpa")


def train_step_fns(ours, theirs, x, y):
    """One training step for each model; both use the same AdamW settings."""

    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4, betas=(0.9, 0.95))
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4, betas=(0.9, 0.95))

    def step_ours():
        _, loss = ours(x, y)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_theirs():
        # transformers' own training path: labels are the inputs, shifted inside the model.
        loss = theirs(input_ids=x, labels=x).loss
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    return step_ours, step_theirs


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_training(ours, theirs, config, dtype, steps):
    batch, T = 8, config.block_size
    tokens = torch.randint(0, config.vocab_size, (batch, T + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    ours.train()
    theirs.train()
    step_ours, step_theirs = train_step_fns(ours, theirs, x, y)
    times = {"ours": [], "theirs": []}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        for _ in range(2):  # warm-up: first-call allocations and kernel choices
            step_ours(), step_theirs()
        for _ in range(steps):
            times["ours"].append(timed(step_ours))
            times["theirs"].append(timed(step_theirs))
    return {name: batch * T / statistics.median(t) for name, t in times.items()}


def bench_generation(ours, theirs, config, runs, new_tokens):
    ours.eval()
    theirs.eval()
    prompt = torch.randint(0, config.vocab_size, (1, 16))
    outputs = {}

    def gen_ours():
        outputs["ours"] = ours.generate(prompt, new_tokens, temperature=0)

    @torch.inference_mode()
    def gen_theirs():
        outputs["theirs"] = theirs.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
            use_cache=True, pad_token_id=0,
        )  # fmt: skip

    gen_ours(), gen_theirs()  # warm-up
    times = {"ours": [], "theirs": []}
    for _ in range(runs):
        times["ours"].append(timed(gen_ours))
        times["theirs"].append(timed(gen_theirs))
    same = torch.equal(outputs["ours"], outputs["theirs"])
    return {name: new_tokens / statistics.median(t) for name, t in times.items()}, same


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.steps, args.gen_runs, args.new_tokens = 2, 2, 50
    import transformers

    transformers.logging.set_verbosity_error()  # its notes on our config's defaults are not results
    transformers.utils.logging.disable_progress_bar()
    config, ours, theirs = make_models(args.vocab_size)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")  # fmt: skip
    print(f"config: {config.n_layer} layers, {config.n_embd} wide, {config.n_head} heads, context {config.block_size}, "
          f"vocab {config.vocab_size}, {ours.num_parameters():,} parameters")  # fmt: skip
    rows = []
    for dtype in ("fp32", "bf16"):
        tps = bench_training(ours, theirs, config, dtype, args.steps)
        rows.append((f"training step, {dtype}, batch 8 x 256", tps))
    tps, same = bench_generation(ours, theirs, config, args.gen_runs, args.new_tokens)
    rows.append((f"generation, fp32, batch 1, {args.new_tokens} new tokens (same ids: {same})", tps))
    config, ours, theirs = make_models(args.small_vocab)
    tps, same = bench_generation(ours, theirs, config, args.gen_runs, args.new_tokens)
    name = f"generation, vocab {args.small_vocab}, fp32, batch 1, {args.new_tokens} new tokens (same ids: {same})"
    rows.append((name, tps))

    print("\n| measurement | ours (tokens/s) | transformers (tokens/s) | ratio |")
    print("|---|---:|---:|---:|")
    for name, tps in rows:
        print(f"| {name} | {tps['ours']:,.0f} | {tps['theirs']:,.0f} | {tps['ours'] / tps['theirs']:.2f}x |")


if __name__ == "__main__":
    main()
