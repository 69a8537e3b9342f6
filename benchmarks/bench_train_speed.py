"""Training and generation speed at the limit of the hardware: ours against transformers'
GPT2LMHeadModel (SDPA attention), same config, same weights, same data, one run.

    python benchmarks/bench_train_speed.py            # the tables in BENCHMARKS.md
    python benchmarks/bench_train_speed.py --quick    # a fast smoke run (eager only, few steps)

Config: on a CPU the small one (6 layers, 384 wide, 6 heads, context 256, GPT-2's vocabulary of
50257) at batch 8; on a GPU, GPT-2 124M at context 1024 and the largest batch that fits.

Training rows: one optimizer step (forward, backward, clipping, AdamW) per timed step, float32
and bf16 autocast, eager and torch.compile'd. Ours runs through the trainer's own step
(Trainer._train_step: fused AdamW, its allocator and thread settings); transformers runs the
loop its Trainer would (labels=input_ids, the fused AdamW that is its default, clipping at 1.0).
On a CPU transformers is measured twice: as it comes, and with the same glibc allocator setting
as ours (hardware.keep_freed_memory), so that the model code itself can be compared.
MFU = model FLOPs per token (GPT2.flops_per_token, the same for both) x tokens/s / the device's
peak in that precision (hardware.peak_flops: measured once and cached on a CPU, data sheet on a GPU).

Generation rows: 200 new tokens after a 16-token prompt, greedy, batch 1 and 16, each model with
its KV cache (transformers through generate()), float32.

Every row runs in a fresh process, so its peak memory is its own and nothing (allocator state,
compiled kernels) carries over from one row to the next; times are medians.
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench_model import sharpen, to_transformers  # noqa: E402 (this script's folder)
from gpt2_llm import GPT2, GPT2Config, hardware  # noqa: E402

GPU_BATCHES = (64, 48, 32, 24, 16, 12, 8, 4, 2, 1)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="eager rows only, 3 timed steps, 1 generation of 50 tokens")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per row (default 8 on CPU, 20 on GPU)")
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled rows")
    p.add_argument("--dtype", choices=("fp32", "bf16"), action="append",
                   help="only these training precisions (repeatable; default both)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one row, as JSON: run by this script itself
    return p.parse_args(argv)


def model_config(device: str) -> GPT2Config:
    if device == "cuda":
        return GPT2Config.from_preset("gpt2")
    return GPT2Config(vocab_size=50257, n_layer=6, n_head=6, n_embd=384, block_size=256)


def make_model(config: GPT2Config, impl: str, sharpened: bool = False):
    """Ours from a fixed seed; transformers' loaded from our export of the same weights.
    sharpened: the token embedding scaled 10x, so greedy ids can be compared (bench_model.sharpen)."""
    from transformers.utils import logging

    torch.manual_seed(0)
    ours = GPT2(config)
    if sharpened:
        sharpen(ours)
    if impl == "ours":
        return ours
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return to_transformers(ours)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, runs: int, device: torch.device) -> tuple[float, object]:
    """The median seconds of `runs` calls of fn (waiting for the GPU each time), and its last result."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# ---- one row, in its own process -------------------------------------------------------------------


def train_row(spec: dict) -> dict:
    from gpt2_llm.trainer import Trainer

    device = torch.device(spec["device"])
    dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    config = model_config(device.type)
    if spec.get("allocator"):
        hardware.keep_freed_memory()
    model = make_model(config, spec["impl"])
    flops_per_token = GPT2(config).flops_per_token() if spec["impl"] != "ours" else model.flops_per_token()
    tokens = torch.randint(0, config.vocab_size, (max(GPU_BATCHES), config.block_size + 1),
                           generator=torch.Generator().manual_seed(1))  # fmt: skip

    if spec["impl"] == "ours":
        trainer = Trainer(model, types.SimpleNamespace(vocab_size=config.vocab_size), device=str(device),
                          dtype="bfloat16" if dtype == torch.bfloat16 else "float32", compile=spec["compile"],
                          log=lambda line: None)  # fmt: skip
        train_model = trainer._model_for_training()

        def make_step(batch):
            trainer.config.batch_size = batch
            trainer.batches = iter(lambda: (tokens[:batch, :-1], tokens[:batch, 1:]), None)
            return lambda: trainer._train_step(train_model)
    else:
        model.to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        train_model = torch.compile(model) if spec["compile"] else model

        def make_step(batch):
            x = tokens[:batch, :-1]

            def step():
                ids = x.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    loss = train_model(input_ids=ids, labels=ids).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                return loss.detach()

            return step

    batches = [spec["batch"]] if spec.get("batch") else GPU_BATCHES if device.type == "cuda" else [8]
    for batch in batches:  # the largest that fits
        try:
            step = make_step(batch)
            for _ in range(spec["warmup"]):
                step()
            sync(device)
            break
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
    else:
        return {"error": "out of memory at every batch size"}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, loss = median_time(step, spec["steps"], device)
    tok_s = batch * config.block_size / seconds
    peak, source = hardware.peak_flops(device, dtype)
    memory = (torch.cuda.max_memory_allocated() if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # fmt: skip
    return {"tokens_per_s": tok_s, "ms_per_step": 1000 * seconds, "mfu": tok_s * flops_per_token / peak,
            "peak_memory": memory, "batch": batch, "loss": float(loss), "peak_source": source}  # fmt: skip


def generate_row(spec: dict) -> dict:
    device = torch.device(spec["device"])
    config = model_config(device.type)
    model = make_model(config, spec["impl"], sharpened=True).to(device).eval()
    prompt = torch.randint(0, config.vocab_size, (spec["batch"], 16), generator=torch.Generator().manual_seed(2))
    prompt = prompt.to(device)
    new = spec["new_tokens"]

    @torch.inference_mode()
    def run():
        if spec["impl"] == "ours":
            return model.generate(prompt, new, temperature=0)
        return model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
                              pad_token_id=0, attention_mask=torch.ones_like(prompt))  # fmt: skip

    run()  # warm-up
    seconds, out = median_time(run, spec["runs"], device)
    return {"tokens_per_s": spec["batch"] * new / seconds, "ids": out[:, 16:].tolist()}


# ---- the table --------------------------------------------------------------------------------------


def run_child(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        result = train_row(spec) if spec["kind"] == "train" else generate_row(spec)
        print(json.dumps(result))
        return
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = model_config(device)
    steps = args.steps or (3 if args.quick else 20 if device == "cuda" else 8)
    modes = [False] if args.quick or args.no_compile else [False, True]
    impls = ["ours", "transformers"] + (["transformers+alloc"] if device == "cpu" else [])
    name = hardware.device_name(torch.device(device))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {name}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}")
    print(f"config: {config.n_layer} layers, {config.n_embd} wide, {config.n_head} heads, context {config.block_size}, "
          f"vocab {config.vocab_size}, {GPT2(config).num_parameters():,} parameters, "
          f"{GPT2(config).flops_per_token() / 1e6:.1f} MFLOP per token")  # fmt: skip

    rows = []
    for dtype in args.dtype or ("fp32", "bf16"):
        for compiled in modes:
            batch = None
            for impl in impls:
                spec = {"kind": "train", "impl": impl.split("+")[0], "allocator": impl.endswith("+alloc"),
                        "dtype": dtype, "compile": compiled, "device": device, "steps": steps,
                        "warmup": 3 if compiled else 2, "batch": batch}  # fmt: skip
                result = run_child(spec)
                batch = batch or result.get("batch")  # transformers at the batch that fits ours
                rows.append((impl, dtype, "compiled" if compiled else "eager", result))
                print(f"  {impl} {dtype} {'compiled' if compiled else 'eager'}: {result}", file=sys.stderr)

    print("\n| model | dtype | mode | batch | tokens/s | ms/step | MFU | peak memory | vs transformers |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for impl, dtype, mode, r in rows:
        if "error" in r:
            print(f"| {impl} | {dtype} | {mode} | | error: {r['error']} | | | | |")
            continue
        base = next((b for i, d, m, b in rows if i == "transformers" and d == dtype and m == mode), {})
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base.get("tokens_per_s") else ""
        print(f"| {impl} | {dtype} | {mode} | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['ms_per_step']:,.0f} | "
              f"{r['mfu']:.1%} | {r['peak_memory'] / 2**30:.2f} GiB | {ratio} |")
    ours = {(d, m): r for i, d, m, r in rows if i == "ours" and "error" not in r}
    for mode in ("eager", "compiled"):
        if ("fp32", mode) in ours and ("bf16", mode) in ours:
            print(f"\nours, {mode}: bf16 / fp32 = {ours['bf16', mode]['tokens_per_s'] / ours['fp32', mode]['tokens_per_s']:.2f}x")
    sources = {r["peak_source"] for *_, r in rows if "peak_source" in r}
    print("peaks: " + "; ".join(sorted(sources)))

    new_tokens, runs = (50, 1) if args.quick else (200, 3)
    print(f"\n| generation, {new_tokens} new tokens, fp32 | ours (tokens/s) | transformers (tokens/s) | ratio | same ids |")
    print("|---|---:|---:|---:|---|")
    for batch in (1, 16):
        results = {impl: run_child({"kind": "generate", "impl": impl, "device": device, "batch": batch,
                                    "new_tokens": new_tokens, "runs": runs}) for impl in ("ours", "transformers")}
        if any("error" in r for r in results.values()):
            print(f"| batch {batch} | {results['ours']} | {results['transformers']} | | |")
            continue
        a, b = results["ours"], results["transformers"]
        print(f"| batch {batch} | {a['tokens_per_s']:,.0f} | {b['tokens_per_s']:,.0f} | "
              f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x | {a['ids'] == b['ids']} |")


if __name__ == "__main__":
    main()
