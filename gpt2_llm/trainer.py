"""Training: AdamW, warm-up then cosine decay, gradient accumulation, mixed precision, evaluation,
checkpoints that never lose work, and a progress line.

The loop (Trainer.train) reads top to bottom:

    for step in range(start, total):
        set the learning rate: get_lr(step)
        every eval_every steps (and at the end): evaluate, log, save the checkpoint (and the best)
        grad_accum times: next batch -> forward under autocast -> loss / grad_accum -> backward
        clip the gradient norm to 1.0, optimizer step, zero the gradients
        stop early on Ctrl-C / SIGTERM (after saving), on a non-finite loss, or when time is up

Under torchrun (WORLD_SIZE > 1) the same loop runs in every process with DistributedDataParallel:
each rank draws its own micro-batches, the gradients are averaged across ranks on the last
micro-step only (no_sync before it), and rank 0 alone writes checkpoints, metrics and progress.
The ranks agree once per step, over a small gloo channel, on whether to stop (signal, time, a
non-finite loss) and on the schedule's length, so they always leave the loop together.
"""

from __future__ import annotations

import inspect
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
import torch.distributed as dist

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import GPT2Config, TrainConfig
from .data import Batches, eval_windows, load_tokens, split_tokens
from .gpt2 import GPT2
from .hardware import peak_flops, pick_device, pick_dtype, setup_device


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


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2) only: biases and LayerNorm gains are not
    shrunk toward zero. The fused kernel (one pass over each tensor) on CUDA and on the CPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused or None)


# ---- several processes (torchrun) ----------------------------------------------------------------


class Distributed:
    """This process's place in a torchrun job; world_size 1 (and no process group) otherwise.

    torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; the process group uses NCCL between GPUs and
    gloo between CPU processes. `control` is a gloo group for the small messages the ranks
    exchange every step, so that agreeing on them never waits for the GPU.
    """

    _control = None  # the gloo group, made once per process (every rank must make it, in step)

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if self.world_size > 1:
            if not dist.is_initialized():
                backend = "nccl" if torch.cuda.is_available() else "gloo"
                if backend == "nccl":
                    torch.cuda.set_device(self.local_rank)
                dist.init_process_group(backend)
            if Distributed._control is None:
                Distributed._control = dist.new_group(backend="gloo")
        self.control = Distributed._control

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_name(self, name: str) -> str:
        """Each rank on its own GPU: "auto" or "cuda" becomes cuda:LOCAL_RANK."""
        if self.world_size > 1 and torch.cuda.is_available() and name in ("auto", "cuda"):
            return f"cuda:{self.local_rank}"
        return name

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(self.control)

    def close(self) -> None:
        """Leave together: wait for every rank, then take the process group down (a rank that
        exits while another still holds a connection can make the other abort)."""
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier(self.control)
            dist.destroy_process_group()
            Distributed._control = None

    def max(self, values: list[float]) -> list[float]:
        """The elementwise maximum over all ranks of a few numbers (one small message)."""
        return self._all_reduce(values, dist.ReduceOp.MAX)

    def sum(self, values: list[float]) -> list[float]:
        """The elementwise sum over all ranks of a few numbers."""
        return self._all_reduce(values, dist.ReduceOp.SUM)

    def _all_reduce(self, values: list[float], op) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=op, group=self.control)
        return t.tolist()

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of a CPU tensor of the same shape, in rank order."""
        if self.world_size == 1:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor, group=self.control)
        return parts


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
        self.dist = Distributed()
        self.device = pick_device(self.dist.device_name(config.device))
        self.dtype = pick_dtype(config.dtype, self.device)
        self.device_notes = setup_device(self.device, self.dist.local_world_size)
        self.model = model.to(self.device)
        if self.device.type != "cpu":
            # The ids come from the tokenizer's own token file, so they are known to fit; checking
            # them would make the CPU wait for the GPU every step.
            self.model.check_ids = False
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0  # optimizer steps done
        self.tokens_seen = 0
        self.best_val_loss = float("inf")
        self.total_steps: int | None = None  # the schedule's length, fixed once known
        self.batches: Batches | None = None
        self._resume_data: dict | None = None  # the data position of a checkpoint, until train()
        self.log = (log or _log_line) if self.dist.is_main else _quiet
        self._stop_signal: int | None = None
        self._nonfinite: tuple[int, float] | None = None  # (step, loss) of a loss that was not finite
        self._training_model = None  # the model the steps run: compiled and/or DDP-wrapped
        self._peak: tuple[float, str] | None = None
        if self.dist.world_size > 1:
            # The model was made from the same seed on every rank (DDP also copies rank 0's
            # weights); from here each rank draws its own dropout masks.
            torch.manual_seed(config.seed + self.dist.rank)

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
        notes = "".join(f", {note}" for note in self.device_notes)
        processes = f" x {self.dist.world_size} processes" if self.dist.world_size > 1 else ""
        return (f"device {self.device.type}, {precision}{', compiled' if c.compile else ''}{notes}; "
                f"{self.model.num_parameters():,} parameters; global batch {c.batch_size} x {c.grad_accum} "
                f"accumulation{processes} x {self.model.config.block_size} tokens "
                f"= {self.tokens_per_step:,} tokens per step")

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step, over all processes."""
        c = self.config
        return c.batch_size * c.grad_accum * self.dist.world_size * self.model.config.block_size

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
        progress = progress and self.dist.is_main

        # One process per machine encodes the text (the others would race to write the same
        # token file); the rest open it once it is there.
        for turn in (True, False):
            if (self.dist.local_rank == 0) == turn:
                tokens = load_tokens(filepath, self.bpe, progress=progress, workers=c.workers)
            self.dist.barrier()
        train_tokens, val_tokens = split_tokens(tokens, c.val_fraction, block)
        # Each optimizer step takes one micro-batch from each of world_size x grad_accum streams;
        # this rank uses its own grad_accum of them (see Batches).
        streams = self.dist.world_size * c.grad_accum
        mine = range(self.dist.rank * c.grad_accum, (self.dist.rank + 1) * c.grad_accum)
        self.batches = Batches(train_tokens, c.batch_size, block, c.seed, c.batch_mode, c.stride, streams, mine)
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

        model = self._model_for_training()
        flops_per_step = self.model.flops_per_token() * self.tokens_per_step
        peak, source = self.peak_flops()
        self.log(f"MFU: model FLOPs over a peak of {peak / 1e12:.1f} TFLOP/s per device, from {source}")
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
                    fit_schedule = done < 10 or time.monotonic() < refit_at
                out_of_time = self._agree(time.monotonic() >= deadline)  # every rank decides alike
                bar.total = self.total_steps
                if self._nonfinite is not None:
                    bad_step, bad_loss = self._nonfinite
                    kept = f"; the last good checkpoint {save_path} is kept" if save_path.exists() else ""
                    raise TrainingError(f"the loss became {bad_loss} at step {bad_step + 1}: training stopped{kept} "
                                        f"(try a lower --lr)")
                last = self.total_steps is not None and step >= self.total_steps
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
                    self._note_if_nonfinite(loss_value, step)
                    loss_value = self.dist.sum([loss_value])[0] / self.dist.world_size  # over all ranks
                    elapsed = time.monotonic() - start_time
                    steps_per_s = (self.step - start_step) / elapsed
                    tok_s = steps_per_s * self.tokens_per_step
                    mfu = steps_per_s * flops_per_step / (peak * self.dist.world_size)
                    if self.dist.is_main:
                        _append_jsonl(metrics_path, {"step": self.step, "loss": round(loss_value, 5), "lr": lr,
                                                     "tokens_per_s": round(tok_s), "mfu": round(mfu, 4),
                                                     "elapsed_s": round(elapsed, 2)})
                    bar.set_postfix_str(f"loss {loss_value:.3f} lr {lr:.1e} {tok_s:,.0f} tok/s mfu {mfu:.1%}",
                                        refresh=False)
                elif self.device.type == "cpu":
                    self._note_if_nonfinite(loss.item(), step)  # free on CPU: catch it at once
                bar.update(1)
        finally:
            bar.close()
            self._restore_signal_handlers()

    def _train_step(self, model) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches; returns the mean loss (on device).

        Under DDP the gradients are averaged across ranks during the backward pass of the last
        micro-step; the ones before it only accumulate locally (no_sync).
        """
        c = self.config
        total = torch.zeros((), device=self.device)
        for micro in range(c.grad_accum):
            x, y = next(self.batches)
            if self.device.type == "cuda":  # page-locked memory: the copy runs while the GPU works
                x, y = x.pin_memory(), y.pin_memory()
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            local_only = micro < c.grad_accum - 1 and hasattr(model, "no_sync")
            with model.no_sync() if local_only else nullcontext():
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

    def _agree(self, out_of_time: bool) -> bool:
        """Make every rank take the same decisions before the step: rank 0's schedule length, and
        stop (or fail) if any rank must. Returns whether time is up."""
        if self.dist.world_size == 1:
            return out_of_time
        total = self.total_steps if self.dist.is_main and self.total_steps is not None else -1
        bad_step = self._nonfinite[0] if self._nonfinite is not None else -1
        total, out_of_time, signum, bad_step = self.dist.max(
            [total, float(out_of_time), self._stop_signal or 0, bad_step])
        self.total_steps = None if total < 0 else int(total)
        self._stop_signal = int(signum) or None
        if bad_step >= 0 and self._nonfinite is None:
            self._nonfinite = (int(bad_step), float("nan"))  # another rank saw it
        return bool(out_of_time)

    def _note_if_nonfinite(self, loss: float, step: int) -> None:
        if not math.isfinite(loss) and self._nonfinite is None:
            self._nonfinite = (step, loss)

    def peak_flops(self) -> tuple[float, str]:
        """The device's peak FLOP/s in this run's precision and where the figure comes from."""
        if self._peak is None:
            self._peak = peak_flops(self.device, self.dtype)
        return self._peak

    def _model_for_training(self):
        """The model the steps run: compiled when asked (falling back to eager if the compiler is
        missing), and wrapped in DistributedDataParallel under torchrun."""
        if self._training_model is None:
            model = self.model
            if self.config.compile:
                try:
                    model = torch.compile(model)
                except Exception as e:  # no compiler here: train uncompiled rather than fail
                    self.log(f"torch.compile is not available ({type(e).__name__}: {e}); training uncompiled")
            if self.dist.world_size > 1:
                from torch.nn.parallel import DistributedDataParallel

                device_ids = [self.device.index] if self.device.type == "cuda" else None
                # The only buffers are RoPE's fixed tables: nothing to send before each forward pass
                # (the option's name changed in torch 2.13).
                no_sync = ({"forward_sync_buffers": False}
                           if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                           else {"broadcast_buffers": False})  # fmt: skip
                model = DistributedDataParallel(model, device_ids=device_ids, **no_sync)
            self._training_model = model
        return self._training_model

    def _steps_in_budget(self, timed_steps: int, since: float, deadline: float, val) -> int:
        """Total steps that fit the time budget, from the speed of the last `timed_steps` steps
        (evaluations are counted at the cost of their forward passes, a third of a training step)."""
        per_step = (time.monotonic() - since) / timed_steps
        eval_tokens = 0 if val is None else val[:, 1:].numel()
        eval_share = eval_tokens / self.tokens_per_step / self.config.eval_every / 3
        remaining = max(0.0, deadline - time.monotonic())
        return self.step + max(1, int(remaining / (per_step * (1 + eval_share))))

    # ---- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, windows: torch.Tensor, num_bytes: int, model=None) -> dict:
        """Mean loss over windows (n, T+1), its perplexity, and bits per byte of the text they cover.

        bits per byte = (total nats over all predicted tokens) / ln 2 / (bytes of those tokens):
        a number that compares models with different tokenizers.
        """
        model = getattr(model, "module", model) or self.model  # DDP's wrapper is for training steps
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        mine = windows[self.dist.rank :: self.dist.world_size]  # each rank evaluates its share
        for batch in mine.split(self.config.batch_size):
            batch = batch.to(self.device)
            with self.autocast():
                _, loss = model(batch[:, :-1], batch[:, 1:])
            total += loss.float().item() * batch[:, 1:].numel()
            count += batch[:, 1:].numel()
        model.train(was_training)
        total, count = self.dist.sum([total, count])
        loss = total / count
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_bpb": total / math.log(2) / max(1, num_bytes)}

    def _eval_and_save(self, model, val, val_bytes, save_path, metrics_path, step) -> dict:
        result = self.evaluate(val, val_bytes, model)
        result["step"] = step
        if self.dist.is_main:
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
        """Everything needed to resume exactly, as plain types and tensors (no pickled objects).
        Under torchrun every rank must call it (the ranks' random states are gathered)."""
        rng = {"python": random.getstate(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        if self.dist.world_size > 1:  # each rank draws its own dropout masks
            rng["torch_ranks"] = self.dist.gather(torch.get_rng_state())
            if self.device.type == "cuda":
                rng["cuda_ranks"] = self.dist.gather(torch.cuda.get_rng_state(self.device))
        return {
            "model_config": asdict(self.model.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "train_config": asdict(self.config),
            "state": {"step": self.step, "tokens_seen": self.tokens_seen, "best_val_loss": self.best_val_loss,
                      "total_steps": self.total_steps},
            "rng": rng,
            "data": self.batches.state_dict() if self.batches is not None else self._resume_data,
            "tokenizer": {"text": self.bpe.to_text(), "hash": self.bpe.hash},
        }

    def save(self, path) -> None:
        """Write a checkpoint (rank 0 writes; under torchrun every rank must call this)."""
        checkpoint = self.checkpoint()
        if self.dist.is_main:
            save_checkpoint(path, checkpoint)

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
        rng, rank = ckpt["rng"], trainer.dist.rank
        random.setstate(rng["python"])
        same_world = len(rng.get("torch_ranks", [])) == trainer.dist.world_size > 1
        torch.set_rng_state(rng["torch_ranks"][rank] if same_world else rng["torch"])
        if trainer.device.type == "cuda" and same_world and "cuda_ranks" in rng:
            torch.cuda.set_rng_state(rng["cuda_ranks"][rank], trainer.device)
        elif rng["cuda"] and torch.cuda.is_available() and trainer.dist.world_size == 1:
            torch.cuda.set_rng_state_all(rng["cuda"])
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
            if self.dist.is_main:
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


def _quiet(text: str) -> None:
    """The log of ranks other than 0."""


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _progress_bar(total, initial, enabled):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not enabled, file=sys.stderr)
