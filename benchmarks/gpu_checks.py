"""The CUDA paths, checked on a GPU machine (one short run; see benchmarks/gpu_session.sh).

    python benchmarks/gpu_checks.py             # all of them
    python benchmarks/gpu_checks.py --options   # the architecture options and Muon only

Prints one line per check, "ok" or what differed:
  - attention runs with the flash kernel forced (so SDPA can choose it) in training and generation;
  - bf16 autocast logits on the GPU against float32 logits on the CPU (relative error);
  - the KV-cache generation on the GPU equals greedy decoding by full recomputation;
  - the trainer's step on the GPU: fused AdamW, bf16, torch.compile, the loss going down;
  - the same with every architecture option, gradient checkpointing and Muon (grouped-query
    attention through the flash kernel, KV cache, bf16, the step eager and compiled).
"""

import sys
import time
import types
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gpt2_llm import GPT2, GPT2Config  # noqa: E402
from gpt2_llm.trainer import Trainer  # noqa: E402


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def flash_bf16_error(model: GPT2, ids: torch.Tensor) -> tuple[GPT2, float]:
    """The model moved to the GPU, and the relative error of its bf16 logits with the flash kernel
    forced (an error if SDPA cannot use it) against its float32 logits on the CPU."""
    with torch.no_grad():
        reference = model(ids)[0]
        gpu = model.cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            logits = gpu(ids.cuda())[0]
    return gpu, relative_error(logits.cpu(), reference)


@torch.no_grad()
def greedy_by_recomputation(model: GPT2, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding without a cache: the whole sequence again for every new token."""
    full = prompt
    for _ in range(new):
        full = torch.cat((full, model(full)[0][:, -1].argmax(-1, keepdim=True)), 1)
    return full


def check_options() -> None:
    """Every architecture option at once on the GPU: attention with the flash kernel forced, bf16 logits
    against CPU float32, cached generation against full recomputation, and training steps with
    gradient checkpointing and Muon, eager and compiled."""
    options = dict(norm="rmsnorm", mlp="swiglu", n_kv_head=4, qk_norm=True, tie_embeddings=False, rope=True, bias=False)
    config = GPT2Config(vocab_size=50257, n_layer=4, n_head=12, n_embd=768, block_size=1024, **options)
    torch.manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (4, 512))
    gpu, error = flash_bf16_error(GPT2(config).eval(), ids)
    print(f"options: flash attention forced with 4 key/value heads, bf16 logits vs CPU float32: "
          f"relative error {error:.2e}")
    prompt = ids[:2, :16].cuda()
    cached = gpu.generate(prompt, 24, temperature=0)  # float32: no ties to break differently
    full = greedy_by_recomputation(gpu, prompt, 24)
    print(f"options: KV-cache greedy tokens equal to full recomputation (float32): {(cached == full).float().mean():.0%}, "
          f"cache {tuple(kv_cache_shape(gpu, prompt))} per layer")
    for compile_ in (False, True):
        torch.manual_seed(0)
        model = GPT2(GPT2Config(vocab_size=50257, n_layer=6, n_head=12, n_embd=768, block_size=512, **options))
        trainer = Trainer(model, types.SimpleNamespace(vocab_size=50257), device="cuda", dtype="auto",
                          compile=compile_, batch_size=16, lr=1e-3, grad_checkpoint=True, optimizer="muon",
                          log=lambda line: None)  # fmt: skip
        data = torch.randint(0, 1000, (16, 513))
        trainer.batches = iter(lambda: (data[:, :-1], data[:, 1:]), None)
        trainer.total_steps = 30
        step_model = trainer._model_for_training()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        losses = []
        for step in range(30):
            trainer._set_lr(step)
            losses.append(trainer._train_step(step_model).item())
        seconds = time.perf_counter() - start
        print(f"options trainer step, compile={compile_}: muon + adamw, grad checkpoint, dtype {trainer.dtype}, "
              f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over 30 steps on one batch, {seconds:.1f} s with warm-up, "
              f"peak {torch.cuda.max_memory_allocated() / 1e9:.2f} GB ({trainer.memory_note})")


def kv_cache_shape(model: GPT2, prompt: torch.Tensor) -> torch.Size:
    """The shape of one layer's cached keys after a prompt."""
    cache = model.new_cache(prompt.size(0))
    model.prefill(prompt, cache)
    return cache.k[0].shape


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    if "--options" in sys.argv:
        check_options()
        return
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50257, n_layer=4, n_head=12, n_embd=768, block_size=1024)
    for rope in (False, True):
        ids = torch.randint(0, config.vocab_size, (4, 512))
        gpu, error = flash_bf16_error(GPT2(GPT2Config(**{**config.__dict__, "rope": rope})).eval(), ids)
        print(f"rope={rope}: flash attention forced, bf16 logits vs CPU float32: relative error {error:.2e}")
        prompt = ids[:2, :16].cuda()
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
            cached = gpu.generate(prompt, 24, temperature=0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            full = greedy_by_recomputation(gpu, prompt, 24)
        same = (cached == full).float().mean().item()
        print(f"rope={rope}: KV-cache greedy tokens equal to full recomputation: {same:.0%} (bf16: ties may differ)")

    for compile_ in (False, True):
        torch.manual_seed(0)
        model = GPT2(GPT2Config(vocab_size=50257, n_layer=6, n_head=12, n_embd=768, block_size=512))
        trainer = Trainer(model, types.SimpleNamespace(vocab_size=50257), device="cuda", dtype="auto",
                          compile=compile_, batch_size=16, lr=1e-3, log=lambda line: None)
        data = torch.randint(0, 1000, (16, 513))
        trainer.batches = iter(lambda: (data[:, :-1], data[:, 1:]), None)
        step_model = trainer._model_for_training()
        fused = [g.get("fused") for g in trainer.optimizer.param_groups]
        start = time.perf_counter()
        losses = [trainer._train_step(step_model).item() for _ in range(30)]
        seconds = time.perf_counter() - start
        print(f"trainer step, compile={compile_}: dtype {trainer.dtype}, fused AdamW {fused}, "
              f"loss {losses[0]:.3f} -> {losses[-1]:.3f} over 30 steps on one batch, {seconds:.1f} s with warm-up")
    check_options()


if __name__ == "__main__":
    main()
