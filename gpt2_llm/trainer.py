"""Training: AdamW (and Muon beside it, as an option), warm-up then cosine decay, gradient
accumulation, mixed precision, evaluation, checkpoints that never lose work, and a view of the run
as it goes.

Trainer.train reads like this:

    prepare the run                 the data (text or instruction records), the batches,  (_prepare)
                                    the validation set
    plan the schedule               its length from steps or epochs, or fitted to minutes (_plan_schedule)
    until a reason to stop          the schedule's end, Ctrl-C / SIGTERM, the time budget  (_reason_to_stop)
        every eval_every steps      evaluate, print a sample, save, draw the loss picture (_evaluate_and_save)
        one optimizer step          lr from get_lr, grad_accum micro-batches, clip, step   (_train_step)
        every log_every steps       the metrics log and the progress display              (_log_step)
    (and once more when stopping: evaluate and save)

A non-finite loss stops the run with an error and keeps the last good checkpoint.

Under torchrun (WORLD_SIZE > 1) the same loop runs in every process with DistributedDataParallel
(see distributed.py): each rank draws its own micro-batches, the gradients are averaged across
ranks on the last micro-step only (no_sync before it), and rank 0 alone writes checkpoints,
metrics and progress. The ranks agree once per step on whether to stop and on the schedule's
length, so they always leave the loop together.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from basics import UserError, atomic_write

from .averaging import WeightAverage
from .checkpoint import CheckpointError, save_checkpoint
from .config import MUON_LR, GPT2Config, TrainConfig, config_from_dict
from .data import (
    Batches,
    DataError,
    InstructionBatches,
    encode_examples,
    input_files,
    instruction_eval_set,
    is_instruction_input,
    load_tokens,
    read_records,
    split_records,
    split_tokens,
    validation_windows,
)
from .distributed import Distributed, wrap_for_ddp
from .gpt2 import GPT2
from .hardware import (
    autocast,
    available_memory,
    peak_flops,
    pick_device,
    pick_dtype,
    setup_device,
    synchronize,
)
from .instruct import IGNORE_INDEX, end_of_turn_id, prompt_ids, template_from_checkpoint

DEFAULT_SAVE_PATH = "gpt2_model.pt"
PLOT_INTERVAL_S = 10.0  # the loss picture is redrawn at most this often (and always at the end)


class TrainingError(UserError):
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


def muon_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The weights Muon updates: the 2-D matrices of the blocks' attention and MLP (the hidden
    layers, as torch's documentation of Muon says). The embeddings, the head, norm gains and biases
    are not hidden matrices, and stay with AdamW."""
    return [(name, p) for name, p in model.named_parameters()
            if p.requires_grad and p.dim() == 2 and name.startswith(("decoder.", "gpt.decoder."))]  # fmt: skip


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2) only: biases and norm gains are not shrunk
    toward zero. With --optimizer muon it leaves out the matrices Muon takes (see make_muon). The
    fused kernel (one pass over each tensor) on CUDA and on the CPU."""
    taken = {id(p) for _, p in muon_parameters(model)} if config.optimizer == "muon" else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused or None)


def make_muon(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer | None:
    """With --optimizer muon, torch.optim.Muon for the hidden matrices (muon_parameters); else None.

    Muon (Jordan et al. 2024) orthogonalises each matrix's momentum (5 Newton-Schulz steps) before
    the update. Its settings are torch's defaults (momentum 0.95, Nesterov) with the "original" shape
    adjustment: the update of a (rows, cols) matrix is scaled by sqrt(max(1, rows / cols)), so its
    learning rate is Muon's own, --muon-lr (0.02 by default, torch's example), not AdamW's --lr;
    the schedule scales both alike. Weight decay is --weight-decay, as on AdamW's matrices."""
    if config.optimizer != "muon":
        return None
    params = [p for _, p in muon_parameters(model)]  # torch before 2.9 has no Muon: TrainConfig refuses it there
    return torch.optim.Muon(params, lr=config.muon_lr or MUON_LR, weight_decay=config.weight_decay,
                            adjust_lr_fn="original")


def step_memory(config: GPT2Config, batch_size: int, dtype: torch.dtype, grad_checkpoint: bool = False,
                averaged: bool = False, trainable: int | None = None) -> int:  # fmt: skip
    """Bytes one training micro-step needs, roughly (an estimate to refuse what cannot fit, not a
    measurement): the weights, their gradients and AdamW's two moments in float32 (16 bytes a
    weight; Muon keeps one moment, so for it this is a little high), and with --ema (averaged) the
    weights' moving average (4 more); of a model partly frozen (--lora, --train-blocks) only the
    `trainable` weights have gradients, moments and averages; the activations kept for the
    backward pass; and the logits with their gradient and a float32 copy. BENCHMARKS.md compares
    it with measured peaks.

    Activations follow Korthikanti et al. 2022 ("Reducing activation recomputation"): per layer and
    token, 34 x width + 5 x heads x context values of 2 bytes for GPT-2 under mixed precision
    (4 bytes in float32), counted here from the layer's real widths so that the options change it:
    the norms' inputs 4C; attention's input 2C, queries 2C, keys and values 4 x their width, the
    projection's input 2C and its dropout mask C; the MLP's input 2C, its activation's inputs and
    c_proj's 4H (6H with SwiGLU's two) and a mask C; QK-norm's inputs.
    The attention scores (the second term) are left out: SDPA's fused kernels never store them
    (but with attention dropout on a CPU, SDPA takes its math path, which keeps several copies of
    them: not counted). With grad_checkpoint a layer keeps only its input (2C), and one layer's
    activations exist at a time."""
    C, L, T, V = config.n_embd, config.n_layer, config.block_size, config.padded_vocab_size
    H, kv = config.mlp_size, config.kv_heads * config.head_size  # the MLP's width; the keys' (and values')
    gated = config.mlp == "swiglu"
    # The matrices and the embeddings (biases and norms are small), an untied head included.
    weights = L * (C * (C + 2 * kv) + C * C + (3 if gated else 2) * C * H) + (V + T) * C
    weights += 0 if config.tie_embeddings else V * C
    width = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    layer = 4 * C + (7 * C + 4 * kv) + (3 * C + (6 if gated else 4) * H)
    layer += 2 * C + 2 * kv if config.qk_norm else 0
    kept = L * 2 * C + layer if grad_checkpoint else L * layer
    activations = batch_size * T * kept * width // 2
    logits = batch_size * T * V * (2 * width + 4)
    trainable = weights if trainable is None else trainable
    return 4 * weights + (16 if averaged else 12) * trainable + activations + logits


def check_step_memory(config: GPT2Config, batch_size: int, device: torch.device, dtype: torch.dtype,
                      grad_checkpoint: bool = False, averaged: bool = False, trainable: int | None = None) -> str:  # fmt: skip
    """Refuse a batch whose step cannot fit the device's memory (one line naming --batch-size), rather
    than let the system kill the run; otherwise return a line for the start-up log."""
    need, have = step_memory(config, batch_size, dtype, grad_checkpoint, averaged, trainable), available_memory(device)
    shape = f"batch {batch_size} x context {config.block_size}"
    if have is not None and need > have:
        recompute = "" if grad_checkpoint else ", or --grad-checkpoint"
        raise UserError(f"--batch-size {batch_size} needs about {_gb(need)} for one step ({shape}), but this "
                        f"{device.type.upper()} has {_gb(have)} available: use a smaller --batch-size "
                        f"(and --grad-accum to keep the batch per step){recompute}")
    where = f" of {_gb(have)} available" if have is not None else ""
    return f"memory: about {_gb(need)} per step ({shape}){where}"


def measure_tokens_per_s(config: GPT2Config, train: TrainConfig, device: torch.device, dtype: torch.dtype,
                         steps: int = 2) -> float:  # fmt: skip
    """Training tokens a second of a model of this shape here: one whole step (forward, backward,
    the optimisers) to warm up, then `steps` timed, on random tokens at the batch given. The plan's
    probe (a few seconds on a CPU): the speed a plan expects, measured rather than assumed."""
    model = GPT2(config).to(device).train()
    optimizers = [make_optimizer(model, train, device), make_muon(model, train)]
    x = torch.randint(config.vocab_size, (train.batch_size, config.block_size), device=device)

    def step() -> None:
        with autocast(device, dtype):
            _, loss = model(x, x, recompute=train.grad_checkpoint)
        loss.backward()
        for optimizer in filter(None, optimizers):
            optimizer.step()
        model.zero_grad(set_to_none=True)

    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * x.numel() / (time.perf_counter() - start)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows, num_bytes: int, batch_size: int = 16,
             dtype: torch.dtype = torch.float32, dist: Distributed | None = None) -> dict:  # fmt: skip
    """Mean loss over the targets of a validation set, its perplexity, and bits per byte of the
    text they stand for.

    windows: the (n, T+1) token windows of a text (data.validation_windows), or an (x, y) pair of
    (n, T) inputs and targets where targets of IGNORE_INDEX do not count: padding and prompts of
    instruction records (data.instruction_eval_set). bits per byte = (total nats over the counted
    targets) / ln 2 / num_bytes, where num_bytes counts the text of those tokens: a number that
    compares models with different tokenizers. The model runs on its own device, under autocast
    when dtype is not float32. Under torchrun each rank evaluates its share and the sums are added up.
    """
    device = next(model.parameters()).device
    ranks, rank = (1, 0) if dist is None else (dist.world_size, dist.rank)
    x, y = (windows[:, :-1], windows[:, 1:]) if isinstance(windows, torch.Tensor) else windows
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for xb, yb in zip(x[rank::ranks].split(batch_size), y[rank::ranks].split(batch_size)):
        counted = yb != IGNORE_INDEX
        n = int(counted.sum())
        if n == 0:
            continue
        # Attention is causal: the columns after the last counted target change no counted loss.
        width = int(counted.any(dim=0).nonzero().max()) + 1
        with autocast(device, dtype):
            _, loss = model(xb[:, :width].to(device), yb[:, :width].to(device))  # the mean over counted targets
        total += loss.float().item() * n
        count += n
    model.train(was_training)
    if dist is not None:
        total, count = dist.sum([total, count])
    loss = total / max(1, count)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_bpb": total / math.log(2) / max(1, num_bytes)}


# ---- the trainer -------------------------------------------------------------------------------


@dataclass
class _Data:
    """What a run reads from its input, text or instruction records (the batches go to Trainer.batches)."""

    val: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None  # the validation set (see evaluate); None: none
    val_bytes: int  # the text its counted targets stand for
    val_positions: int  # positions one evaluation computes
    test: torch.Tensor | None  # the test part's windows (--test-fraction), read once, at the run's end
    test_bytes: int
    sample_prompt: list[int]  # token ids; empty: no samples
    sample_stop: int | None  # the token that ends a sample (the end of a response), if any
    epoch: tuple[int, str, int]  # one pass over the training data: (items, their name, items per step)


@dataclass
class _Run:
    """What one call of Trainer.train works with, besides the trainer's own lasting state."""

    save_path: Path
    metrics_path: Path
    model: torch.nn.Module  # what the steps run: compiled and/or wrapped for DDP
    data: _Data
    progress: "Progress"
    start_step: int
    start_tokens: int
    start_time: float
    deadline: float  # clock time when the budget is spent (inf without --minutes)
    step_limit: int | None  # the most steps the fitted schedule may have (--steps, --epochs)
    refit_at: float  # when to fit it once more, with the speed measured so far
    flops_per_token: int  # model FLOPs of one training token
    peak: float  # the device's peak FLOP/s
    timed_from: tuple[float, int, float] = (0.0, 0, 0.0)  # (clock, step, eval_total) where the speed's timing starts
    eval_seconds: float | None = None  # what the last evaluation-and-save took
    eval_total: float = 0.0  # the time of all of them: not the training steps' time
    fitted_with_eval: bool = False  # has the schedule been fitted knowing an evaluation's cost?
    on_floor: bool = False  # has the fitted schedule ended early, the run going on at its lowest rate?
    plotted_at: float = -math.inf
    result: dict = field(default_factory=dict)


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
            raise UserError(f"the model's vocab_size {model.config.vocab_size} is smaller than the tokenizer's "
                            f"{bpe.vocab_size}")
        self.dist = Distributed()
        self.device = pick_device(self.dist.device_name(config.device))
        self.dtype = pick_dtype(config.dtype, self.device)
        self.memory_note = check_step_memory(model.config, config.batch_size, self.device, self.dtype,
                                             config.grad_checkpoint, config.ema > 0, model.num_parameters(trained=True))
        self.device_notes = setup_device(self.device, self.dist.local_world_size)
        self.model = model.to(self.device)
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.muon = make_muon(self.model, config)  # None unless --optimizer muon
        self.average = WeightAverage(self.model, config.ema) if config.ema else None  # --ema
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0  # optimizer steps done
        self.tokens_seen = 0
        self.best_val_loss = float("inf")
        self.total_steps: int | None = None  # the schedule's length, fixed once known
        self.batches: Batches | InstructionBatches | None = None
        self.chat_template: dict | None = None  # {"name", "jinja"} of a run on instruction records
        self._resume_data: dict | None = None  # the data position of a checkpoint, until train()
        self.log = (log or _log_line) if self.dist.is_main else _quiet
        self.clock = time.monotonic  # tests replace it to make time budgets deterministic
        self._signal_received: int | None = None  # set by the handler, on this rank, at any moment
        self._stop_signal: int | None = None  # the signal every rank agreed to stop for (see _agree)
        self._nonfinite: tuple[int, float] | None = None  # (step, loss) of a loss that was not finite
        self._training_model = None
        self._peak: tuple[float, str] | None = None
        self.saved_to: Path | None = None  # where the last checkpoint went (see save)
        self.plan: dict | None = None  # the plan a new run was made from (plan.Plan.as_dict), kept in the checkpoint
        self.budget_start: float | None = None  # clock time --minutes counts from (default: when training starts)
        self.lora_base: dict | None = None  # with --lora: the base model's {"name", "path", "hash"} (see checkpoint)
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
        notes += ", gradient checkpointing" if c.grad_checkpoint else ""
        notes += f", Muon (lr {c.muon_lr or MUON_LR:g}) beside AdamW" if self.muon is not None else ""
        notes += f", evaluating and saving a moving average of the weights (--ema {c.ema:g})" if c.ema else ""
        return (f"device {self.device.type}, {precision}{', compiled' if c.compile else ''}{notes}; "
                f"{self.model.num_parameters():,} parameters{self._trained_part()}; global batch {c.batch_size} x {c.grad_accum} "
                f"accumulation{processes} x {self.model.config.block_size} tokens "
                f"= {self.tokens_per_step:,} tokens per step")

    def _trained_part(self) -> str:
        """", of which N trained" for a model partly frozen (--lora, --train-blocks); else nothing."""
        trained = self.model.num_parameters(trained=True)
        if trained == self.model.num_parameters():
            return ""
        return f", of which {trained:,} trained ({trained / self.model.num_parameters():.2%})"

    @property
    def warmup_steps(self) -> int:
        """--warmup-steps, or by default a tenth of the schedule, at most 100 (GPT-2's 100 steps would
        never reach the peak learning rate in a short run; 100 until a budget's length is known)."""
        if self.config.warmup_steps is not None:
            return self.config.warmup_steps
        return 100 if self.total_steps is None else min(100, self.total_steps // 10)

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step, over all processes."""
        c = self.config
        return c.batch_size * c.grad_accum * self.dist.world_size * self.model.config.block_size

    # ---- the loop ----------------------------------------------------------------------------

    def train(self, text, save_path: str | os.PathLike = DEFAULT_SAVE_PATH, progress: bool = True, **stop) -> dict:
        """Train on a text (a file, folder, glob or a list of them). `stop` may set this run's steps,
        minutes or epochs (num_epochs is the original tool's name for epochs).

        Returns the last evaluation (when there is a validation split) with `step` and `stopped_by`:
        "steps", "time", "signal" (and `signal`, its number), or "done" when the schedule had
        already ended before this call.
        """
        self.config = _replace(self.config, _stop_settings(stop))
        run = self._prepare(text, Path(save_path), progress)
        if self.total_steps is not None and self.step >= self.total_steps:
            self.log(f"nothing left to train: step {self.step} is the end of the schedule ({self.total_steps} steps)")
            return {"stopped_by": "done", "step": self.step}
        with self._signals_caught(), run.progress:
            while True:
                self._fit_schedule_to_budget(run)
                reason = self._reason_to_stop(run)
                if reason or self._checkpoint_due(run):
                    self._evaluate_and_save(run, last=reason is not None)
                if reason:
                    if reason != "signal":
                        self._evaluate_test_part(run)
                    return {**run.result, "stopped_by": reason, "signal": self._stop_signal, "step": self.step}
                self._set_lr(self.step)
                loss = self._train_step(run.model)
                self.step += 1
                self.tokens_seen += self.batches.round_tokens
                self._log_step(run, loss)

    def _prepare(self, text, save_path: Path, progress: bool) -> _Run:
        """Read the data, make the batches and the validation set; plan the schedule."""
        c, files = self.config, input_files(text)
        if c.classify:
            data = self._labelled_data(files)
        elif is_instruction_input(files):
            data = self._instruction_data(files)
        else:
            data = self._text_data(text, progress)
        self._train_token_rows()
        if self._resume_data is not None:  # continue the same stream of batches
            self.batches.load_state_dict(self._resume_data)
            self._resume_data = None
        step_limit = self._plan_schedule(*data.epoch)
        peak, source = self.peak_flops()  # the denominator of MFU (measured once per machine, then cached)
        self.log(f"MFU: model FLOPs over a peak of {peak / 1e12:.1f} TFLOP/s per device, from {source}")

        metrics_path = save_path.with_suffix(".metrics.jsonl")
        if self.dist.is_main:
            _start_metrics_log(metrics_path, self.step)

        now = self.clock()  # after the slow parts: the speed measured from here is the steps'
        budget_start, self.budget_start = (now if self.budget_start is None else self.budget_start), None  # a first call may count from earlier
        return _Run(save_path=save_path, metrics_path=metrics_path, model=self._model_for_training(), data=data,
                   progress=Progress(self.total_steps, self.step, progress and self.dist.is_main),
                   start_step=self.step, start_tokens=self.tokens_seen, start_time=now,
                   deadline=budget_start + 60 * c.minutes if c.minutes else math.inf,
                   step_limit=step_limit, refit_at=now + 6 * c.minutes if c.minutes else math.inf,  # a tenth of the budget in
                   flops_per_token=self.model.flops_per_token(), peak=peak)

    def _train_token_rows(self) -> None:
        """A new --lora run of a language model whose head is not its embedding: the rows of both for the
        tokens the training data holds train too (lora.rows_to_train, add_token_rows), and the optimizer
        takes them."""
        from .lora import ROWS_SHARE, add_token_rows, lora_settings, rows_to_train

        if self.lora_base is None or self.step or self.config.classify or lora_settings(self.model)["tokens"]:
            return
        tokens, held = rows_to_train(self.batches.token_counts(), self.model)
        if add_token_rows(self.model, tokens):
            self.optimizer = make_optimizer(self.model, self.config, self.device)
            self.average = WeightAverage(self.model, self.config.ema) if self.config.ema else None
            rows, trained = self.model.wte.lora_rows, self.model.num_parameters(trained=True)
            which = "every token the training data holds" if len(tokens) == held else \
                f"the most frequent of the {held:,} the training data holds, within {ROWS_SHARE:.0%} of the weights"
            share = trained / self.model.num_parameters()
            self.log(f"LoRA: the embedding's and head's rows of {len(tokens):,} tokens train too ({which}): "
                     f"{2 * rows.numel():,} weights; {trained:,} trained in all ({share:.2%})")

    def _streams(self) -> tuple[int, range]:
        """Each optimizer step takes one micro-batch from each of world_size x grad_accum streams;
        this rank uses its own grad_accum of them (see Batches)."""
        c = self.config
        return self.dist.world_size * c.grad_accum, range(self.dist.rank * c.grad_accum, (self.dist.rank + 1) * c.grad_accum)

    def _text_data(self, text, progress: bool) -> _Data:
        """The token file (encoded on first use), windows of its first part to train on, of its last to validate on."""
        c, block = self.config, self.model.config.block_size
        # One process per machine encodes the text (the others would race to write the same
        # token file); the rest open it once it is there.
        for turn in (True, False):
            if (self.dist.local_rank == 0) == turn:
                tokens = load_tokens(text, self.bpe, progress=progress and self.dist.is_main, workers=c.workers)
            self.dist.barrier()
        train_tokens, val_tokens, test_tokens = split_tokens(tokens, c.val_fraction, block, c.test_fraction)
        self.batches = Batches(train_tokens, c.batch_size, block, c.seed, c.batch_mode, c.stride, *self._streams())
        val, val_bytes = validation_windows(val_tokens, block, self.bpe, c.eval_tokens) if len(val_tokens) else (None, 0)
        test, test_bytes = validation_windows(test_tokens, block, self.bpe) if len(test_tokens) else (None, 0)
        return _Data(val=val, val_bytes=val_bytes, val_positions=0 if val is None else val[:, 1:].numel(),
                     test=test, test_bytes=test_bytes,
                     sample_prompt=self._sample_prompt(val_tokens if len(val_tokens) else train_tokens),
                     sample_stop=None, epoch=(len(train_tokens), "tokens", self.tokens_per_step))

    def _instruction_data(self, files: list[Path]) -> _Data:
        """Instruction records: every k-th held out, each an example of its own, the loss on the
        responses (on every token with --no-mask-prompt; validation always on the responses)."""
        c, block = self.config, self.model.config.block_size
        if c.test_fraction:
            raise DataError("--test-fraction holds out the end of a text; instruction records have --val-fraction only")
        template, conversations = read_records(files)
        stored = template_from_checkpoint(self.chat_template, "the checkpoint")
        if stored is not None and stored.name != template.name:
            raise DataError(f"the checkpoint was trained on {stored.name} records, these are {template.name} records")
        eot = end_of_turn_id(self.bpe)
        train, val = split_records(conversations, c.val_fraction)
        examples, cut = encode_examples(train, template, self.bpe, block, c.mask_prompt)
        streams, mine = self._streams()
        self.batches = InstructionBatches(examples, c.batch_size, c.seed, eot, streams, mine)
        val_set, val_bytes, val_cut = None, 0, 0
        if val:
            val_examples, val_cut = encode_examples(val, template, self.bpe, block, mask_prompt=True)
            val_set, val_bytes = instruction_eval_set(val_examples, self.bpe, eot, c.eval_tokens)
        self.chat_template = template.to_checkpoint()
        trained_on = "the responses only" if c.mask_prompt else "every token (--no-mask-prompt)"
        self.log(f"instructions: {len(conversations):,} {template.name} records, {len(train):,} to train on "
                 f"(loss on {trained_on}), {len(val):,} held out; {cut + val_cut:,} longer than the context of "
                 f"{block} tokens were cut ({cut:,} of those to train on)")
        sample = self._instruction_sample_prompt(template, val or train)
        return _Data(val=val_set, val_bytes=val_bytes, val_positions=0 if val_set is None else val_set[0].numel(),
                     test=None, test_bytes=0,
                     sample_prompt=sample, sample_stop=eot, epoch=(len(train), "records", c.batch_size * streams))

    def _labelled_data(self, files: list[Path]) -> _Data:
        """Labelled texts (--classify): balanced if asked, split into training, validation and test
        parts with a fixed seed (the same parts whatever --seed draws), each text cut to the context."""
        from .classifier import Encoded, LabelledBatches, check_names
        from .labelled import read_labelled, run_parts

        c, block = self.config, self.model.config.block_size
        if len(files) != 1:
            raise DataError(f"--classify reads one file of labelled texts, not {len(files)} files")
        data = read_labelled(files[0], c.text_column, c.label_column)
        check_names(self.model, data.names, str(files[0]))
        about = data.summary()
        data, train, val, test = run_parts(data, c.balance, c.val_fraction, c.test_fraction)
        if not train.texts or (c.val_fraction and not val.texts) or (c.test_fraction and not test.texts):
            raise DataError(f"too few examples: {len(data.texts)} give {len(train.texts)} to train on, "
                            f"{len(val.texts)} to validate and {len(test.texts)} to test on")
        parts = [Encoded(part, self.bpe, block) if part.texts else None for part in (train, val, test)]
        streams, mine = self._streams()
        self.batches = LabelledBatches(parts[0], c.batch_size, c.seed, self.model.pad_id, streams, mine)
        cut = sum(part.cut for part in parts if part is not None)
        self.log(f"labelled texts: {about}{'; balanced to ' + str(len(data.texts)) if c.balance else ''}; "
                 f"{len(train.texts):,} to train on, {len(val.texts):,} to validate, {len(test.texts):,} to test; "
                 f"{cut:,} longer than the context of {block} tokens were cut to their beginning")
        return _Data(val=parts[1], val_bytes=0, val_positions=0 if parts[1] is None else int(parts[1].lengths.sum()),
                     test=parts[2], test_bytes=0, sample_prompt=[], sample_stop=None,
                     epoch=(len(train.texts), "examples", c.batch_size * streams))

    def _plan_schedule(self, size: int, unit: str, per_step: int) -> int | None:
        """The schedule's length: --steps, or else --epochs (one when no limit is given) of `size`
        items (tokens, records), `per_step` a step. With --minutes it is fitted to the time once
        the speed is known, and never longer than those. A continued run keeps its length unless
        --steps says otherwise. Says the rule; returns the limit the time budget may shorten
        (None: the budget alone decides)."""
        c = self.config
        if self.total_steps is None or c.steps is not None:
            steps = c.steps
            if steps is None and (c.epochs is not None or c.minutes is None):
                steps = max(1, math.ceil((c.epochs or 1.0) * size / per_step))
            self.total_steps = steps
        source = ("--steps" if c.steps is not None else f"{c.epochs or 1:g} epochs of {size:,} {unit}"
                  if self.step == 0 else "the continued run's schedule")
        if c.minutes is None:
            self.log(f"schedule: {self.total_steps:,} steps ({source})")
        elif self.total_steps is None:
            self.log(f"schedule: as many steps as fit --minutes {c.minutes:g}, from the speed of the first steps")
        else:
            self.log(f"schedule: {self.total_steps:,} steps ({source}), or fewer to fit --minutes {c.minutes:g}")
        return self.total_steps

    def _fit_schedule_to_budget(self, run: _Run) -> None:
        """With a time budget, fit the schedule to the speed of the first steps (the very first one
        also warms up, so it is not timed), again every tenth of the budget, and once more after
        the first evaluation, whose cost (evaluation, sample, save, picture) is then known. The
        refits keep the schedule's end (its lowest learning rate) at the budget's end when the
        speed drifts: a run that slows stops by time before its decay is done, one that speeds
        up would leave time unused."""
        done = self.step - run.start_step
        if done == 1:
            run.timed_from = (self.clock(), self.step, run.eval_total)
        if self.config.minutes is None or done < 2 or run.on_floor or self._ended_early(run):
            return  # past the schedule's end, a refit would lift the learning rate back up the schedule
        by_speed = done == 10 or self.clock() >= run.refit_at
        by_evaluation = run.eval_seconds is not None and not run.fitted_with_eval
        if by_speed or by_evaluation:
            fitted = self._steps_in_budget(run)
            self.total_steps = fitted if run.step_limit is None else min(fitted, run.step_limit)
            run.progress.total = self.total_steps
            run.fitted_with_eval = run.eval_seconds is not None
            if by_speed and self.clock() >= run.refit_at:
                run.refit_at = self.clock() + 6 * self.config.minutes  # a tenth of the budget later
                run.timed_from = (self.clock(), self.step, run.eval_total)  # the next fit times the steps from here

    def _steps_in_budget(self, run: _Run) -> int:
        """Total steps that fit the time budget, from the speed of the steps since the last fit (a
        tenth of the budget: recent enough to follow a drift, long enough to average out noise) and
        the cost of an evaluation every eval_every steps: as measured once one has run, else
        guessed as its forward passes (a third of a training step's work per token)."""
        since, step, eval_total = run.timed_from
        per_step = (self.clock() - since - (run.eval_total - eval_total)) / max(1, self.step - step)
        if run.eval_seconds is not None:
            per_eval = run.eval_seconds
        else:
            step_tokens = (self.tokens_seen - run.start_tokens) / max(1, self.step - run.start_step)
            per_eval = run.data.val_positions / max(1.0, step_tokens) / 3 * per_step
        remaining = max(0.0, run.deadline - self.clock())
        return self.step + max(1, int(remaining / (per_step + per_eval / self.config.eval_every)))

    def _reason_to_stop(self, run: _Run) -> str | None:
        """"signal", "steps" or "time" when the run must stop before another step; None to go on.
        A non-finite loss raises a TrainingError instead. Every rank decides alike."""
        # Whether an ended schedule goes on at its floor is rank 0's decision (its clock, its
        # schedule); _agree passes it on, and also sets _stop_signal.
        on_floor = run.on_floor or (self.dist.is_main and self._ended_early(run))
        out_of_time, on_floor = self._agree(self.clock() >= run.deadline, on_floor)
        if on_floor and not run.on_floor:
            run.on_floor = True
            run.progress.total = None
            self.log(f"the schedule ended at step {self.step} with {_clock_time(run.deadline - self.clock())} of the "
                     f"budget left (it was fitted while the steps ran slower): training on at the lowest learning "
                     f"rate until the budget ends")
        if self._nonfinite is not None:
            bad_step, bad_loss = self._nonfinite
            kept = f"; the last good checkpoint {run.save_path} is kept" if run.save_path.exists() else ""
            raise TrainingError(f"the loss became {bad_loss} at step {bad_step + 1}: training stopped{kept} "
                                f"(try a lower --lr)")
        if self._stop_signal is not None:
            return "signal"
        if self.total_steps is not None and self.step >= self.total_steps and not run.on_floor:
            return "steps"
        return "time" if out_of_time else None

    def _ended_early(self, run: _Run) -> bool:
        """Has the schedule ended with more than a tenth of the budget left beside the final
        evaluation, though its length was fitted to the budget (no --steps or --epochs cut it
        shorter)? Then a fit made while the steps were slow (another program busy on the machine)
        planned too few and the speed came back before the next refit: the run goes on at the
        lowest learning rate until the budget ends ("on the floor") rather than leave that time
        unused."""
        c = self.config
        if c.minutes is None or self.total_steps is None or self.step < self.total_steps:
            return False
        if self.total_steps == run.step_limit:
            return False
        return run.deadline - self.clock() - (run.eval_seconds or 0.0) > 6 * c.minutes

    def _checkpoint_due(self, run: _Run) -> bool:
        """Every eval_every steps: evaluate (if there is a validation split) and save (always)."""
        return self.step > run.start_step and self.step % self.config.eval_every == 0

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """AdamW, and Muon beside it with --optimizer muon."""
        return [self.optimizer] if self.muon is None else [self.optimizer, self.muon]

    def _set_lr(self, step: int) -> float:
        """Both optimizers follow one schedule, each from its own peak (--lr, --muon-lr)."""
        c = self.config
        for optimizer, peak in zip(self.optimizers, (c.lr, c.muon_lr or MUON_LR)):
            lr = get_lr(step, peak, self.warmup_steps, self.total_steps or 10**9, c.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
        return self.optimizer.param_groups[0]["lr"]

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
                with autocast(self.device, self.dtype):
                    _, loss = model(x, y, label_smoothing=c.label_smoothing, recompute=c.grad_checkpoint)
                loss = loss / c.grad_accum  # the gradients of the micro-batches add up to the mean's
                self.scaler.scale(loss).backward()
            total += loss.detach()
        for optimizer in self.optimizers:
            self.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        for optimizer in self.optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()
        self.model.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update()
        return total

    def _log_step(self, run: _Run, loss: torch.Tensor) -> None:
        """Every log_every steps (and after the first): the metrics log and the progress display.
        Reading the loss is the step's only wait for the device, so other steps skip it (on a CPU
        it costs nothing: there a non-finite loss is caught at once)."""
        if self.step % self.config.log_every and self.step != 1:
            if self.device.type == "cpu":
                self._note_if_nonfinite(loss.item(), self.step - 1)
            run.progress.advance(self.step)
            return
        loss_value = loss.item()
        self._note_if_nonfinite(loss_value, self.step - 1)
        loss_value = self.dist.sum([loss_value])[0] / self.dist.world_size  # the mean over all ranks
        elapsed = max(1e-9, self.clock() - run.start_time)
        steps_per_s = (self.step - run.start_step) / elapsed
        tokens_per_s = (self.tokens_seen - run.start_tokens) / elapsed  # instruction batches vary in length
        record = {"step": self.step, "loss": round(loss_value, 5), "lr": self.optimizer.param_groups[0]["lr"],
                  **({} if self.muon is None else {"muon_lr": self.muon.param_groups[0]["lr"]}),
                  "tokens": self.tokens_seen, "tokens_per_s": round(tokens_per_s),
                  "mfu": round(tokens_per_s * run.flops_per_token / (run.peak * self.dist.world_size), 4),
                  "elapsed_s": round(elapsed, 2)}
        self._append_metrics(run, record)
        run.progress.report(record, steps_per_s)

    def _agree(self, out_of_time: bool, on_floor: bool = False) -> tuple[bool, bool]:
        """Make every rank take the same decisions before the step: rank 0's schedule length and
        whether it goes on past the schedule's end (on_floor, see _ended_early), and stop (or
        fail) if any rank must. Returns (whether time is up, on_floor)."""
        if self.dist.world_size == 1:
            self._stop_signal = self._signal_received
            return out_of_time, on_floor
        # A signal that lands after this reduction is not lost: _signal_received is never cleared,
        # so the next step's reduction carries it, and until then every rank goes on alike.
        total = self.total_steps if self.dist.is_main and self.total_steps is not None else -1
        bad_step = self._nonfinite[0] if self._nonfinite is not None else -1
        total, out_of_time, signum, bad_step, on_floor = self.dist.max(
            [total, float(out_of_time), self._signal_received or 0, bad_step, float(on_floor)])
        self.total_steps = None if total < 0 else int(total)
        self._stop_signal = int(signum) or None
        if bad_step >= 0 and self._nonfinite is None:
            self._nonfinite = (int(bad_step), float("nan"))  # another rank saw it
        return bool(out_of_time), bool(on_floor)

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
                model = wrap_for_ddp(model, self.device)
            self._training_model = model
        return self._training_model

    # ---- evaluation, samples, checkpoints, the loss picture ----------------------------------

    def _evaluate_and_save(self, run: _Run, last: bool) -> None:
        """Evaluate (with a validation split), show a sample, save the checkpoint (and the best
        one), and draw the loss picture; time it all, for fitting the schedule to a budget."""
        start = self.clock()
        self._evaluate_sample_save_draw(run, last)
        run.eval_seconds = self.clock() - start
        run.eval_total += run.eval_seconds

    def _evaluate_sample_save_draw(self, run: _Run, last: bool) -> None:
        """With --ema the evaluation and the sample are the moving average's, which is also what
        the checkpoint's model holds."""
        with self.average.swapped_in() if self.average is not None else nullcontext():
            improved = self._evaluate_and_sample(run)
        self.saved_to = self.save(run.save_path)
        if improved:
            self.save(best_path(run.save_path))
        self._draw_loss_picture(run, last)

    def _evaluate_and_sample(self, run: _Run) -> bool:
        """Evaluate (with a validation split) and show a sample; return whether the loss is the best yet."""
        if run.data.val is None:
            self._show_sample(run)
            return False
        if self.config.classify:
            result = self._evaluate_classifier(run.data.val)
            said = f"accuracy {result['val_accuracy']:.2%}"
        else:
            result = evaluate(self.model, run.data.val, run.data.val_bytes, self.config.batch_size, self.dtype,
                              self.dist)
            said = f"perplexity {result['val_ppl']:.2f}, {result['val_bpb']:.4f} bits per byte"
        run.result = result
        # "ema": the decay of the moving average evaluated in place of the weights (--ema)
        self._append_metrics(run, {"step": self.step, "eval": True, "tokens": self.tokens_seen,
                                   **({"ema": self.config.ema} if self.average is not None else {}),
                                   **{k: round(v, 5) for k, v in result.items()}})
        self.log(f"step {self.step}: val loss {result['val_loss']:.4f}, {said}")
        if not math.isfinite(result["val_loss"]):
            raise TrainingError(f"the validation loss is {result['val_loss']} at step {self.step}: training stopped")
        improved = result["val_loss"] < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, result["val_loss"])
        self._show_sample(run)
        return improved

    def _evaluate_test_part(self, run: _Run) -> None:
        """At the end of a run, the one evaluation of the test part (--test-fraction), with the
        weights the checkpoint holds; its figures join the run's result and the metrics log."""
        if run.data.test is None:
            return
        with self.average.swapped_in() if self.average is not None else nullcontext():
            result = self._evaluate_classifier(run.data.test) if self.config.classify else \
                evaluate(self.model, run.data.test, run.data.test_bytes, self.config.batch_size, self.dtype, self.dist)
        test = {"test_" + name.removeprefix("val_"): value for name, value in result.items()}
        run.result.update(test)
        self._append_metrics(run, {"step": self.step, "test": True, **{k: round(v, 5) for k, v in test.items()}})
        if self.config.classify:
            self.log(f"step {self.step}: test loss {test['test_loss']:.4f}, accuracy {test['test_accuracy']:.2%} (the "
                     f"test part, --test-fraction {self.config.test_fraction:g})")
            return
        self.log(f"step {self.step}: test loss {test['test_loss']:.4f}, perplexity {test['test_ppl']:.2f}, "
                 f"{test['test_bpb']:.4f} bits per byte (the test part, --test-fraction {self.config.test_fraction:g})")

    def _evaluate_classifier(self, examples) -> dict:
        from .classifier import evaluate_classifier

        return evaluate_classifier(self.model, examples, self.config.batch_size, self.dtype, self.dist)

    def _sample_prompt(self, tokens) -> list[int]:
        """The prompt of the samples: --sample-prompt, or 16 tokens of the validation text (of the
        training text without one) from the start of its first whole line."""
        c, block = self.config, self.model.config.block_size
        if c.sample_tokens == 0 or c.sample_prompt == "":
            return []
        if c.sample_prompt is not None:
            return self.bpe.encode(c.sample_prompt, allowed_special="all")[-block:]
        head = [int(t) for t in tokens[:64]]
        line_ends = [i for i, t in enumerate(head[:-16]) if self.bpe.decode_bytes([t]).endswith(b"\n")]
        start = line_ends[0] + 1 if line_ends else 0
        return head[start : start + min(16, block)]

    def _instruction_sample_prompt(self, template, conversations: list) -> list[int]:
        """The prompt of the samples of a run on instructions: --sample-prompt as the user's message,
        or the first held-out record up to its last answer, in the template, ready for the answer."""
        c = self.config
        if c.sample_tokens == 0 or c.sample_prompt == "":
            return []
        if c.sample_prompt is not None:
            messages = template.next_prompt([], c.sample_prompt)
        else:
            first = conversations[0]
            messages = first[: max(k for k, m in enumerate(first) if m["role"] == "assistant")]
        return prompt_ids(template, messages, self.bpe)[-self.model.config.block_size :]

    def _show_sample(self, run: _Run) -> None:
        """A short continuation of the fixed prompt, so the user sees what the model has learned.
        Drawn with a seeded generator of its own, so it never changes the training's random numbers."""
        ids, stop = run.data.sample_prompt, run.data.sample_stop  # an instruction's sample ends with its answer
        if not ids or not self.dist.is_main:
            return
        with autocast(self.device, self.dtype):
            new = self.model.generate(ids, self.config.sample_tokens, seed=self.config.seed, stop_token=stop)[len(ids):]
        prompt, text = self.bpe.decode(ids), self.bpe.decode(new[:-1] if new and new[-1] == stop else new)
        self._append_metrics(run, {"step": self.step, "sample_prompt": prompt, "sample": text})
        self.log(f"sample at step {self.step}: {prompt!r} -> {text!r}")

    def _draw_loss_picture(self, run: _Run, last: bool) -> None:
        """NAME.loss.png beside the checkpoint: losses and learning rate against tokens seen."""
        if not self.dist.is_main or not run.metrics_path.exists():
            return
        if not last and self.clock() - run.plotted_at < PLOT_INTERVAL_S:
            return
        from .plot import plot_runs

        run.plotted_at = self.clock()
        try:
            plot_runs([run.metrics_path], loss_picture_path(run.save_path))
        except ImportError as e:  # matplotlib is missing: the run matters more than its picture
            self.log(f"no loss picture: {e}")

    def _append_metrics(self, run: _Run, record: dict) -> None:
        if self.dist.is_main:
            with open(run.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

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
            **self._model_entries(),
            "optimizer": self.optimizer.state_dict(),
            **({} if self.muon is None else {"muon": self.muon.state_dict()}),
            "train_config": asdict(self.config),
            "state": {"step": self.step, "tokens_seen": self.tokens_seen, "best_val_loss": self.best_val_loss,
                      "total_steps": self.total_steps,
                      "average_updates": 0 if self.average is None else self.average.updates},
            "rng": rng,
            "data": self.batches.state_dict() if self.batches is not None else self._resume_data,
            "tokenizer": {"text": self.bpe.to_text(), "hash": self.bpe.hash},
            **({"chat_template": self.chat_template} if self.chat_template is not None else {}),
            **({"plan": self.plan} if self.plan is not None else {}),
        }

    def _model_entries(self) -> dict:
        """The checkpoint's model: "model", the language model (a classifier's own part beside it as
        "classifier", classifier.py); with --lora "lora" instead, the adapters and their base, named
        with its hash and not stored (lora.py). With --ema these hold the weights' moving average,
        and the weights themselves (what training goes on from) are "training_weights"."""
        kept = self.model.state_dict() if self.average is None else self.average.state_dict(self.model)
        entries = self.model.checkpoint_entries(kept) if hasattr(self.model, "checkpoint_entries") else {"model": kept}
        weights = self.model.state_dict
        if self.lora_base is not None:
            from .lora import adapter_entries, lora_state

            entries = {**adapter_entries(self.model, kept, self.lora_base),
                       **{k: v for k, v in entries.items() if k == "classifier"}}
            weights = functools.partial(lora_state, self.model)
        return entries if self.average is None else {**entries, "training_weights": weights()}

    def save(self, path) -> Path:
        """Write a checkpoint (rank 0 writes; under torchrun every rank must call this) and return
        where it went. A run is never lost to a failed write (a full disk, a folder removed or
        made read-only): the checkpoint then goes to NAME.rescued.pt beside it, or in the current
        or home folder, and the log says where."""
        checkpoint, path = self.checkpoint(), Path(path)
        if not self.dist.is_main:
            return path
        try:
            save_checkpoint(path, checkpoint)
            return path
        except OSError as e:
            failure = e
        for folder in (path.parent, Path.cwd(), Path.home()):
            rescue = folder / f"{path.stem}.rescued{path.suffix}"
            try:
                save_checkpoint(rescue, checkpoint)
            except OSError:
                continue
            self.log(f"could not write {path} ({failure.strerror or failure}): saved the checkpoint of step "
                     f"{self.step} as {rescue} instead")
            return rescue
        raise failure

    @classmethod
    def from_checkpoint(cls, path, log=None, **overrides) -> "Trainer":
        """A trainer that continues exactly where the checkpoint stopped. `overrides` may change
        how the rest of the run goes (steps, minutes, eval_every, ...), not the model's shape."""
        from .loading import load

        loaded = load(path)
        if not loaded.can_resume:
            raise CheckpointError(f"{path} holds a model but no training state: it cannot be continued")
        ckpt = loaded.checkpoint
        stored = dict(ckpt["train_config"])
        trained_with = stored.get("optimizer", "adamw")  # checkpoints from before Muon: AdamW
        if overrides.get("optimizer", trained_with) != trained_with:
            raise CheckpointError(f"--optimizer {overrides['optimizer']} does not fit {path}, trained with "
                                  f"{trained_with}: a continued run keeps its optimizer (and its state)")
        stored.update(_one_length(overrides))  # --steps given now replaces a stored --epochs, and back
        try:
            config = config_from_dict(TrainConfig, {**stored, **overrides}, "training config")
        except UserError as e:
            raise CheckpointError(f"{path}: {e}") from None
        trainer = cls(loaded.model.train(), loaded.tokenizer, config, log=log)  # with --ema: from the average...
        if "lora" in ckpt:
            trainer.lora_base = {k: v for k, v in ckpt["lora"].items() if k not in ("settings", "state")}
        if "training_weights" in ckpt:  # ...while training goes on from the weights (see checkpoint)
            try:
                if "lora" in ckpt:
                    from .lora import load_lora_state

                    load_lora_state(trainer.model, ckpt["training_weights"], f"{path}'s training weights")
                else:
                    trainer.model.load_state_dict(ckpt["training_weights"])
            except RuntimeError:
                raise CheckpointError(f"{path}: its training weights do not fit its model (a damaged file?)") from None
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        if trainer.muon is not None:
            if "muon" not in ckpt:
                raise CheckpointError(f"{path} was trained with Muon but holds no Muon state (a damaged file?)")
            trainer.muon.load_state_dict(ckpt["muon"])
        state = ckpt["state"]
        trainer.step, trainer.tokens_seen = state["step"], state["tokens_seen"]
        trainer.best_val_loss, trainer.total_steps = state["best_val_loss"], state["total_steps"]
        if trainer.average is not None:
            trainer.average.updates = state.get("average_updates", 0)
        trainer._restore_rng(ckpt["rng"])
        trainer._resume_data = ckpt.get("data")
        template_from_checkpoint(ckpt.get("chat_template"), str(path))  # one this version knows, or an error
        trainer.chat_template = ckpt.get("chat_template")
        trainer.plan = ckpt.get("plan")
        return trainer

    def _restore_rng(self, rng: dict) -> None:
        random.setstate(rng["python"])
        rank = self.dist.rank
        same_world = len(rng.get("torch_ranks", [])) == self.dist.world_size > 1
        torch.set_rng_state(rng["torch_ranks"][rank] if same_world else rng["torch"])
        if self.device.type == "cuda" and same_world and "cuda_ranks" in rng:
            torch.cuda.set_rng_state(rng["cuda_ranks"][rank], self.device)
        elif rng["cuda"] and torch.cuda.is_available() and self.dist.world_size == 1:
            torch.cuda.set_rng_state_all(rng["cuda"])

    # ---- signals -----------------------------------------------------------------------------

    @contextmanager
    def _signals_caught(self):
        """First Ctrl-C or SIGTERM: finish the step, save, stop. A second Ctrl-C: stop at once."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only
            return

        def handler(signum, frame):
            if self._signal_received is not None:
                raise KeyboardInterrupt
            self._signal_received = signum
            if self.dist.is_main:
                print(f"\n{signal.Signals(signum).name}: finishing this step and saving (press Ctrl-C again to abort)",
                      file=sys.stderr, flush=True)

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, previous in old.items():
                signal.signal(sig, previous)


class Progress:
    """How a run shows itself on stderr: a redrawn progress bar on a terminal; elsewhere (a file,
    CI, nohup) a plain line per metrics-log line, as nanoGPT prints, instead of bar redraws."""

    def __init__(self, total: int | None, initial: int, enabled: bool, stream=None):
        self.stream = stream or sys.stderr
        self.total, self.initial, self.enabled = total, initial, enabled
        self.bar = None

    def __enter__(self):
        if self.enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.initial, unit="step", dynamic_ncols=True, file=self.stream)
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.update(step - self.bar.n)

    def report(self, record: dict, steps_per_s: float) -> None:
        """A step of the metrics log: shown on the bar, or printed as one line."""
        if not self.enabled:
            return
        speed = f"{record['tokens_per_s']:,} tok/s | mfu {record['mfu']:.1%}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {record['loss']:.3f} lr {record['lr']:.1e} {speed}", refresh=False)
            self.advance(record["step"])
            return
        total = f"/{self.total}" if self.total else ""
        left = ""
        if self.total and steps_per_s > 0:
            left = f", {_clock_time((self.total - record['step']) / steps_per_s)} left"
        print(f"step {record['step']}{total} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | {speed} | "
              f"{_clock_time(record['elapsed_s'])} elapsed{left}", file=self.stream, flush=True)


def _clock_time(seconds: float) -> str:
    """1:02:03 or 2:03."""
    seconds = int(seconds)
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}:{minutes:02d}:{seconds % 60:02d}" if hours else f"{minutes}:{seconds % 60:02d}"


def _start_metrics_log(path: Path, step: int) -> None:
    """A fresh run (step 0) starts a fresh log. A continued run keeps the records up to the step it
    continues from: those after it belong to steps that will be trained again (a run killed after
    its last checkpoint) or to a checkpoint that was never saved (a second Ctrl-C during the save)."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    with atomic_write(path, "w") as f:
        f.writelines(kept)


def best_path(save_path) -> Path:
    """gpt2_model.pt -> gpt2_model.best.pt: the checkpoint with the lowest validation loss."""
    save_path = Path(save_path)
    return save_path.with_name(f"{save_path.stem}.best{save_path.suffix}")


def loss_picture_path(save_path) -> Path:
    """gpt2_model.pt -> gpt2_model.loss.png."""
    return Path(save_path).with_suffix(".loss.png")


# The stop settings of train(), and the original tool's name for one of them.
STOP_SETTINGS = ("steps", "minutes", "epochs")
ORIGINAL_STOP_NAMES = {"num_epochs": "epochs"}


def _stop_settings(stop: dict) -> dict:
    settings = {ORIGINAL_STOP_NAMES.get(name, name): value for name, value in stop.items() if value is not None}
    unknown = sorted(set(settings) - set(STOP_SETTINGS))
    if unknown:
        raise TypeError(f"train() got unexpected arguments {unknown}; it takes {', '.join(STOP_SETTINGS)}")
    return {**_one_length(settings), **settings}


def _one_length(settings: dict) -> dict:
    """Steps and epochs both give the schedule's length: setting one now clears the other."""
    return {other: None for one, other in (("steps", "epochs"), ("epochs", "steps")) if settings.get(one) is not None}


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
