"""Training: AdamW, warm-up then cosine decay, gradient accumulation, mixed precision, evaluation,
checkpoints that never lose work, and a progress line.

The loop (Trainer.train) reads top to bottom:

    for step in range(start, total):
        set the learning rate: get_lr(step)
        every eval_every steps (and at the end): evaluate, log, save the checkpoint (and the best)
        grad_accum times: next batch -> forward under autocast -> loss / grad_accum -> backward
        clip the gradient norm to 1.0, optimizer step, zero the gradients
        stop early on Ctrl-C / SIGTERM (after saving), on a non-finite loss, or when time is up
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, fields
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import GPT2Config, TrainConfig
from .data import Batches, eval_windows, load_tokens, split_tokens
from .gpt2 import GPT2


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the message is one line."""


# ---- pure helpers ------------------------------------------------------------------------------


def get_lr(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate at `step` (0-based): linear warm-up to lr, then cosine down to lr * min_lr_ratio.

    >>> [round(get_lr(s, 1.0, 2, 6, 0.1), 4) for s in range(7)]
    [0.5, 1.0, 1.0, 0.8325, 0.55, 0.2675, 0.1]
    """
    min_lr = lr * min_lr_ratio
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def cpu_has_bf16() -> bool:
    """Does this CPU multiply bf16 in hardware (Intel AMX or AVX512-BF16)? Linux only; else False."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available here (try --device auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: MPS is not available here (try --device auto)")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 where the hardware has it, float32 elsewhere (auto)."""
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2) only: biases and LayerNorm gains are not
    shrunk toward zero. Fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused or None)


# ---- the trainer -------------------------------------------------------------------------------


class Trainer:
    """Trains a GPT2 with a BPE tokenizer. Python API (the original tool's, kept):

        trainer = Trainer.create_trainer_from_vocab("vocab.txt", preset="small")
        trainer = Trainer(model=model, bpe=tokenizer, batch_size=8, lr=3e-4)
        trainer.train("corpus.txt", num_epochs=1, save_path="gpt2_model.pt")
    """

    def __init__(self, model: GPT2, bpe, config: TrainConfig | None = None, log=None, **overrides):
        self.config = config = _replace(config or TrainConfig(), overrides)
        self.bpe = bpe
        if model.config.vocab_size < bpe.vocab_size:
            raise ValueError(f"the model's vocab_size {model.config.vocab_size} is smaller than the tokenizer's {bpe.vocab_size}")
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        self.model = model.to(self.device)
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0  # optimizer steps done
        self.tokens_seen = 0
        self.best_val_loss = float("inf")
        self.total_steps: int | None = None  # the schedule's length, fixed once known
        self.batches: Batches | None = None
        self._resume_data: dict | None = None  # the data position of a checkpoint, until train()
        self.log = log or _log_line
        self._stop_signal: int | None = None
        self._compiled = None

    @classmethod
    def create_trainer_from_vocab(cls, vocab_path, preset: str = "small", model_config: dict | None = None, **train_args):
        """A new model of `preset` sized for the tokenizer in `vocab_path`, and its trainer."""
        from bpe import BPE

        tokenizer = BPE.load(vocab_path)
        config = GPT2Config.from_preset(preset, vocab_size=tokenizer.vocab_size, **(model_config or {}))
        torch.manual_seed(train_args.get("seed", TrainConfig.seed))
        return cls(GPT2(config), tokenizer, **train_args)

    def describe(self) -> str:
        c = self.config
        precision = "float32" if self.dtype == torch.float32 else f"{str(self.dtype).removeprefix('torch.')} autocast"
        return (f"device {self.device.type}, {precision}"
                f"{', compiled' if c.compile else ''}; {self.model.num_parameters():,} parameters; "
                f"batch {c.batch_size} x {c.grad_accum} accumulation x {self.model.config.block_size} tokens "
                f"= {self.tokens_per_step:,} tokens per step")

    @property
    def tokens_per_step(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.model.config.block_size

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # ---- training ----------------------------------------------------------------------------

    def train(self, filepath, num_epochs: float | None = None, save_path: str | os.PathLike = "gpt2_model.pt",
              max_steps: int | None = None, max_minutes: float | None = None, progress: bool = True) -> dict:
        """Train on a text file; returns the last evaluation plus `stopped_by` (why it ended)."""
        c = self.config
        steps = max_steps if max_steps is not None else c.steps
        minutes = max_minutes if max_minutes is not None else c.minutes
        epochs = num_epochs if num_epochs is not None else c.epochs
        save_path = Path(save_path)
        block = self.model.config.block_size

        tokens = load_tokens(filepath, self.bpe, progress=progress, workers=c.workers)
        train_tokens, val_tokens = split_tokens(tokens, c.val_fraction, block)
        self.batches = Batches(train_tokens, c.batch_size, block, c.seed, c.batch_mode, c.stride)
        if self._resume_data is not None:  # continue the same stream of batches
            self.batches.load_state_dict(self._resume_data)
            self._resume_data = None
        val = eval_windows(val_tokens, block, c.eval_tokens) if len(val_tokens) else None
        val_bytes = len(self.bpe.decode_bytes(val[:, 1:].flatten().tolist())) if val is not None else 0
        if self.total_steps is None or steps is not None:
            if steps is None and minutes is None:
                epochs = epochs or 1.0
            if steps is None and epochs is not None:
                steps = max(1, math.ceil(epochs * len(train_tokens) / self.tokens_per_step))
            self.total_steps = steps  # None: set from the measured speed once the budget is known
        if self.step >= (self.total_steps or math.inf):
            self.log(f"already trained for {self.step} steps (the schedule's end); nothing to do")
            return {"stopped_by": "done", "step": self.step}

        model = self._compile_if_asked()
        metrics_path = save_path.with_suffix(".metrics.jsonl")
        deadline = time.monotonic() + 60 * minutes if minutes else math.inf
        start_step, start_time = self.step, time.monotonic()
        fit_schedule = self.total_steps is None  # the budget decides the schedule's length
        refit_at = start_time + 6 * minutes if fit_schedule else math.inf  # a tenth of the budget in
        result: dict = {}
        bar = _progress_bar(self.total_steps, self.step, progress)
        self._install_signal_handlers()
        try:
            while True:
                step = self.step
                if step - start_step == 1:
                    first_step_done = time.monotonic()  # the first step also warms up: time the next ones
                # With a time budget, fit the schedule to the speed of the first steps, then once
                # more a tenth of the way in, with a better measurement.
                done = step - start_step
                if fit_schedule and done >= 2 and (done == 10 or time.monotonic() >= refit_at):
                    self.total_steps = self._steps_in_budget(done - 1, first_step_done, deadline, val)
                    bar.total = self.total_steps
                    fit_schedule = done < 10 or time.monotonic() < refit_at
                last = self.total_steps is not None and step >= self.total_steps
                out_of_time = time.monotonic() >= deadline
                stop = last or out_of_time or self._stop_signal is not None
                if val is not None and (stop or (step % c.eval_every == 0 and step > start_step)):
                    result = self._eval_and_save(model, val, val_bytes, save_path, metrics_path, step)
                elif stop and step > start_step:
                    self.save(save_path)
                if stop:
                    result["stopped_by"] = ("signal" if self._stop_signal is not None else
                                            "time" if out_of_time and not last else "steps")
                    result["signal"] = self._stop_signal
                    result["step"] = step
                    return result

                lr = get_lr(step, c.lr, c.warmup_steps, self.total_steps or 10**9, c.min_lr_ratio)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss = self._train_step(model)
                self.step += 1
                self.tokens_seen += self.tokens_per_step
                if self.step % c.log_every == 0 or self.step == 1:
                    loss_value = loss.item()  # the only host sync of the step, at log time
                    self._check_finite(loss_value, step, save_path)
                    elapsed = time.monotonic() - start_time
                    tok_s = (self.step - start_step) * self.tokens_per_step / elapsed
                    _append_jsonl(metrics_path, {"step": self.step, "loss": round(loss_value, 5), "lr": lr,
                                                 "tokens_per_s": round(tok_s), "elapsed_s": round(elapsed, 2)})
                    bar.set_postfix_str(f"loss {loss_value:.3f} lr {lr:.1e} {tok_s:,.0f} tok/s", refresh=False)
                elif self.device.type == "cpu":
                    self._check_finite(loss.item(), step, save_path)  # free on CPU: catch it at once
                bar.update(1)
        finally:
            bar.close()
            self._restore_signal_handlers()

    def _train_step(self, model) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches; returns the mean loss (on device)."""
        c = self.config
        total = torch.zeros((), device=self.device)
        for _ in range(c.grad_accum):
            x, y = next(self.batches)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with self.autocast():
                _, loss = model(x, y)
            loss = loss / c.grad_accum  # the gradients of the micro-batches add up to the mean's
            self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _check_finite(self, loss: float, step: int, save_path: Path) -> None:
        if not math.isfinite(loss):
            kept = f"; the last good checkpoint {save_path} is kept" if save_path.exists() else ""
            raise TrainingError(f"the loss became {loss} at step {step + 1}: training stopped{kept} "
                                f"(try a lower --lr)")

    def _steps_in_budget(self, timed_steps: int, since: float, deadline: float, val) -> int:
        """Total steps that fit the time budget, from the speed of the last `timed_steps` steps
        (evaluations are counted at the cost of their forward passes, a third of a training step)."""
        per_step = (time.monotonic() - since) / timed_steps
        eval_tokens = 0 if val is None else val[:, 1:].numel()
        eval_share = eval_tokens / self.tokens_per_step / self.config.eval_every / 3
        remaining = max(0.0, deadline - time.monotonic())
        return self.step + max(1, int(remaining / (per_step * (1 + eval_share))))

    def _compile_if_asked(self):
        if not self.config.compile:
            return self.model
        if self._compiled is None:
            try:
                self._compiled = torch.compile(self.model)
            except Exception as e:  # no compiler here: train uncompiled rather than fail
                self.log(f"torch.compile is not available ({type(e).__name__}: {e}); training uncompiled")
                self._compiled = self.model
        return self._compiled

    # ---- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, windows: torch.Tensor, num_bytes: int, model=None) -> dict:
        """Mean loss over windows (n, T+1), its perplexity, and bits per byte of the text they cover.

        bits per byte = (total nats over all predicted tokens) / ln 2 / (bytes of those tokens):
        a number that compares models with different tokenizers.
        """
        model = model or self.model
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for batch in windows.split(self.config.batch_size):
            batch = batch.to(self.device)
            with self.autocast():
                _, loss = model(batch[:, :-1], batch[:, 1:])
            total += loss.float().item() * batch[:, 1:].numel()
            count += batch[:, 1:].numel()
        model.train(was_training)
        loss = total / count
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_bpb": total / math.log(2) / max(1, num_bytes)}

    def _eval_and_save(self, model, val, val_bytes, save_path, metrics_path, step) -> dict:
        result = self.evaluate(val, val_bytes, model)
        result["step"] = step
        _append_jsonl(metrics_path, {"step": step, "eval": True, **{k: round(v, 5) for k, v in result.items()}})
        self.log(f"step {step}: val loss {result['val_loss']:.4f}, perplexity {result['val_ppl']:.2f}, "
                 f"{result['val_bpb']:.4f} bits per byte")
        if not math.isfinite(result["val_loss"]):
            raise TrainingError(f"the validation loss is {result['val_loss']} at step {step}: training stopped")
        improved = result["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss = result["val_loss"]
        self.save(save_path)
        if improved:
            self.save(best_path(save_path))
        return result

    # ---- checkpoints -------------------------------------------------------------------------

    def checkpoint(self) -> dict:
        """Everything needed to resume exactly, as plain types and tensors (no pickled objects)."""
        return {
            "model_config": asdict(self.model.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_config": asdict(self.config),
            "state": {"step": self.step, "tokens_seen": self.tokens_seen, "best_val_loss": self.best_val_loss,
                      "total_steps": self.total_steps},
            "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "data": self.batches.state_dict() if self.batches is not None else self._resume_data,
            "tokenizer": {"text": self.bpe.to_text(), "hash": self.bpe.hash},
        }

    def save(self, path) -> None:
        save_checkpoint(path, self.checkpoint())

    @classmethod
    def from_checkpoint(cls, path, log=None, **overrides) -> "Trainer":
        """A trainer that continues exactly where the checkpoint stopped. `overrides` may change
        how the rest of the run goes (steps, minutes, eval_every, ...), not the model's shape."""
        from bpe import BPE

        ckpt = load_checkpoint(path)
        for key in ("optimizer", "train_config", "state", "rng", "tokenizer"):
            if key not in ckpt:
                raise CheckpointError(f"{path} holds a model but no training state ({key}): it cannot be resumed")
        tokenizer = BPE.from_text(ckpt["tokenizer"]["text"], f"{path} (its tokenizer)")
        model = GPT2(GPT2Config(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
        config = TrainConfig(**{**ckpt["train_config"], **overrides})
        trainer = cls(model, tokenizer, config, log=log)
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        trainer.step, trainer.tokens_seen = state["step"], state["tokens_seen"]
        trainer.best_val_loss, trainer.total_steps = state["best_val_loss"], state["total_steps"]
        random.setstate(ckpt["rng"]["python"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        trainer._resume_data = ckpt.get("data")
        return trainer

    # ---- signals -----------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        """First Ctrl-C or SIGTERM: finish the step, save, stop. A second Ctrl-C: stop at once."""
        self._old_handlers = {}
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum
            print(f"\n{signal.Signals(signum).name}: finishing this step and saving (press Ctrl-C again to abort)",
                  file=sys.stderr, flush=True)

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)


def best_path(save_path) -> Path:
    """gpt2_model.pt -> gpt2_model.best.pt: the checkpoint with the lowest validation loss."""
    save_path = Path(save_path)
    return save_path.with_name(f"{save_path.stem}.best{save_path.suffix}")


def _replace(config: TrainConfig, overrides: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown training options {unknown}; known: {sorted(names)}")
    return TrainConfig(**{**asdict(config), **overrides})


def _log_line(text: str) -> None:
    """A line on stderr that does not break the progress bar."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _progress_bar(total, initial, enabled):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not enabled, file=sys.stderr)
