"""The default run's plan: the model, the tokenizer and the schedule, chosen from the text and the time.

`python main.py train mytext.txt` with no shape or optimiser flags trains what `plan_run` chooses
here, from three numbers: the size of the text, the time budget (--minutes; 10 when no --minutes,
--steps or --epochs is given) and the device's speed: the FLOP/s of a training step of PROBE_SHAPE,
measured by a probe in runs.py (under torchrun estimated as peak FLOP/s x EXPECTED_MFU). The rule,
in one place:

    compute   C = that FLOP/s x the seconds left for training (the budget less the tokenizer's share)
    passes    of a shape: C / its FLOPs a token / the training tokens
    depth     ANCHOR_LAYERS at ANCHOR_COMPUTE (10 minutes of the Xeon the Gutenberg runs measured
              3 layers best on, a text they saw about once), times (C / ANCHOR_COMPUTE) ** (1/6):
              the weights grow as the square root of the compute (Hoffmann et al. 2022), and with
              the width tied to the depth they grow as its cube. But where that model would see
              the text MIN_PASSES times or more, the text, not the compute, is what is short: the
              depth is then the largest whose weights stay within WEIGHTS_PER_TOKEN x the training
              tokens and that still sees the text MIN_PASSES times (Tiny Shakespeare: 4 layers,
              deeper than a text seen once gets; Pride and Prejudice: 2).
    width     64 x round(1.5 x depth): heads of 64 channels, 1.5 heads a layer (384 at 4 layers)
    context   512 tokens (256 where the text's validation part would hold fewer than 8 windows)
    (the weights a token: the recipe's 4 x 384 blocks, 7.1M weights, learn from 0.32M tokens)
    batch     2048 tokens a step at ANCHOR_COMPUTE, times (C / ANCHOR_COMPUTE) ** (1/3); at most
              SMALL_TEXT_BATCH_TOKENS where the text, not the time, ends the run (more, smaller steps)
    vocab     bpe.recommended_vocab_size: the power of two nearest 2 x sqrt(bytes) (1 MB -> 2048)
    passes    the expected tokens (the planned shape's tokens/s, measured by a two-step probe in
              runs.py; else the FLOP/s over its FLOPs a token) x seconds over the text's tokens;
              more than MAX_EPOCHS and the schedule stops there: a small text is not trained to over-fit
    dropout   0 for one pass or less, 0.2 at four (the recipe's), 0.2 x sqrt((passes - 1) / 3), at most 0.3
    optimiser Muon at 0.012 for the blocks' matrices, AdamW at 2e-3 x sqrt(384 / width) for the rest;
              weight decay 1.0; a moving average of the weights spanning about an eighth of the steps
    shape     ARCHITECTURE: RoPE, RMSNorm, ReLU^2 MLPs, QK-norm, an untied head, no biases: the
              recipe's options (RMSNorm and no biases in place of its LayerNorm, validated as
              good), which transformers holds as Apertus (`export` writes it)

A flag given replaces its own part of the plan, and what depends on it follows: given --n-layer
the width and the learning rate are planned around it; given --preset, the model is that preset
(its size and GPT-2's architecture, with the switches given) and the training settings are still
planned. The README's "The default plan" names the runs that chose the constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import bpe

from .config import PRESETS, GPT2Config, muon_missing

DEFAULT_MINUTES = 10.0  # the budget of a new run given no --minutes, --steps or --epochs
PROBE_SHAPE = dict(n_layer=4, n_head=6, n_embd=384, block_size=512, vocab_size=2048)  # the recipe's, with ARCHITECTURE
PROBE_BATCH = 4
ANCHOR_FLOPS = 0.32e12  # the probe's FLOP/s on the 2-core Xeon of the Gutenberg runs (BENCHMARKS.md)
ANCHOR_COMPUTE = ANCHOR_FLOPS * (0.9 * 600 - 10.3)  # its 10 minutes, as plan_run counts them for 20.6 MB of text
ANCHOR_LAYERS = 3  # the best of 2 to 5 layers there (Gutenberg, 10 minutes, validation: see docs/train.md)
MIN_PASSES = 3  # a model that sees its text this often is short of text, not of compute: the recipe's 4 x 384,
# the best of its search on the EPYC, saw Tiny Shakespeare about 3.7 times in 10 minutes there
HEAD_SIZE = 64
HEADS_PER_LAYER = 1.5
WEIGHTS_PER_TOKEN = 25  # the recipe's 7.1M block weights learn from 0.32M tokens of Tiny Shakespeare (22 a token)
CONTEXT = 512
ANCHOR_BATCH_TOKENS = 2048
EXPECTED_MFU = {"cpu": 0.35, "cuda": 0.35, "mps": 0.2}  # of the peak, where no probe runs (the EPYC's runs: 36-40%)
MAX_EPOCHS = 32  # Pride and Prejudice, validation: 16 passes 1.899, 32 passes 1.845, 64 passes over-fit (see docs/train.md)
SMALL_TEXT_BATCH_TOKENS = 1024  # the batch of a run that MAX_EPOCHS ends (Pride and Prejudice: see docs/train.md)
MUON_LR = 0.012
ADAMW_LR = 2e-3  # at width 384
WEIGHT_DECAY = 1.0
ARCHITECTURE = dict(rope=True, norm="rmsnorm", mlp="relu2", qk_norm=True, tie_embeddings=False, bias=False,
                    attn_dropout=0.0)  # dropout outside attention keeps the fused attention kernel
# The training settings a plan sets (a new run's; --init-from has its FINETUNE_DEFAULTS), and --minutes
# when nothing else sets the schedule's length.
PLANNED = ("batch_size", "optimizer", "lr", "muon_lr", "weight_decay", "ema", "eval_every")
HELD_OUT = 0.1  # --val-fraction's default: the part of the text a plan does not count as training tokens


@dataclass
class Plan:
    """What a new run trains: the tokenizer's size, the model's fields, the training settings, and
    a line for each choice saying why. Stored in the checkpoint (as_dict) so a continued run keeps it."""

    vocab_size: int
    shape: dict  # GPT2Config fields
    settings: dict  # TrainConfig fields
    expected: dict = field(default_factory=dict)  # tokens_per_s, steps, epochs, seconds: the estimate
    why: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"vocab_size": self.vocab_size, "shape": dict(self.shape), "settings": dict(self.settings),
                "expected": dict(self.expected), "why": list(self.why)}


def bytes_per_token(vocab_size: int) -> float:
    """About how many bytes of English text a token of a vocabulary this size holds (2.75 at 2048
    on Tiny Shakespeare; BENCHMARKS.md's tokenizer tables: 3.24 at 4096, 3.68 at 16384)."""
    return 2.75 * (vocab_size / 2048) ** 0.15


def layers_for(compute: float, train_tokens: float, vocab_size: int, block_size: int) -> tuple[int, str]:
    """The depth the compute asks for, or, where that model would see the text MIN_PASSES times or
    more, the depth the text asks for; and which decided."""
    def passes(n_layer: int) -> float:
        config = GPT2Config(vocab_size=vocab_size, n_layer=n_layer, n_embd=width_for(n_layer), block_size=block_size,
                            n_head=heads_for(width_for(n_layer)), **ARCHITECTURE)  # fmt: skip
        return compute / flops_per_token(config) / train_tokens

    by_compute = max(1, round(ANCHOR_LAYERS * (compute / ANCHOR_COMPUTE) ** (1 / 6)))
    seen = passes(by_compute)
    if seen < MIN_PASSES:
        return by_compute, f"the compute ({compute / ANCHOR_COMPUTE:.2g} x 10 minutes of the anchor's CPU)"
    by_data = 1
    while block_weights(by_data + 1) <= WEIGHTS_PER_TOKEN * train_tokens and passes(by_data + 1) >= MIN_PASSES:
        by_data += 1
    return by_data, (f"the text ({train_tokens / 1e3:,.0f}k training tokens): the compute's {by_compute} would see it "
                     f"{seen:.0f} times; the text teaches no more than {WEIGHTS_PER_TOKEN} weights a token to a model "
                     f"that sees it {MIN_PASSES} times or more")


def width_for(n_layer: int) -> int:
    return HEAD_SIZE * max(2, round(HEADS_PER_LAYER * n_layer))


def block_weights(n_layer: int) -> int:
    """The blocks' matrices at the planned width: 4 C^2 for attention, about 8 C^2 for the MLP."""
    return 12 * n_layer * width_for(n_layer) ** 2


def heads_for(n_embd: int) -> int:
    """The most heads of at least HEAD_SIZE / 2 channels, an even head size, dividing the width."""
    for heads in range(max(1, round(n_embd / HEAD_SIZE)), 0, -1):
        if n_embd % heads == 0 and (n_embd // heads) % 2 == 0:
            return heads
    return 1


def plan_run(text_bytes: int, seconds: float, flops: float, *, shape: dict | None = None,
             settings: dict | None = None, preset: str | None = None, vocab_size: int | None = None,
             processes: int = 1, tokens_per_s: float | None = None) -> Plan:  # fmt: skip
    """The plan for `text_bytes` of text and `seconds` of wall time on `processes` devices that
    each train at `flops` FLOP/s (PROBE_SHAPE's; under torchrun the batch is shared among them);
    `shape`, `settings`, `preset` and `vocab_size` are what the user gave, each replacing its part.
    tokens_per_s: the planned model's speed as measured (all processes together); None: from flops."""
    shape, settings = dict(shape or {}), dict(settings or {})
    held_out = settings.get("val_fraction", HELD_OUT) + settings.get("test_fraction", 0.0)
    vocab = vocab_size or bpe.recommended_vocab_size(text_bytes)
    train_tokens = max(1.0, text_bytes * (1 - held_out) / bytes_per_token(vocab))
    train_seconds = max(1.0, 0.9 * seconds - text_bytes / 2e6)  # evaluations, the tokenizer (~2 MB/s with encoding)
    compute = flops * processes * train_seconds
    why = [f"{vocab:,}-token vocabulary" + ("" if vocab_size else f" for {text_bytes / 1e6:.2g} MB of text")]
    model = model_fields(compute, train_tokens, vocab, shape, preset, why)
    config = GPT2Config(vocab_size=vocab, **model)

    run = dict(settings)
    if tokens_per_s is None:
        tokens_per_s = processes * flops / flops_per_token(config)
    by_time = tokens_per_s * train_seconds / train_tokens  # the passes over the text the time gives
    batch = ANCHOR_BATCH_TOKENS * (compute / ANCHOR_COMPUTE) ** (1 / 3)
    by_compute = max(1, round(batch / config.block_size / processes))  # the batch a probe measures at
    if by_time > MAX_EPOCHS and not {"steps", "epochs"} & run.keys():
        batch = min(batch, SMALL_TEXT_BATCH_TOKENS)  # the text, not the time, ends the run: more, smaller steps
    run.setdefault("batch_size", max(1, round(batch / config.block_size / processes)))
    tokens_per_step = run["batch_size"] * run.get("grad_accum", 1) * processes * config.block_size
    epochs = planned_passes(run, by_time, tokens_per_step / train_tokens, why)
    steps = run.get("steps") or max(1, int(epochs * train_tokens / tokens_per_step))
    if "dropout" not in model:
        model["dropout"] = planned_dropout(epochs)
        why.append(f"dropout {model['dropout']:g} for about {epochs:.1f} passes over the text")
    training_settings(run, config, epochs, steps, why)
    expected = {"tokens_per_s": round(tokens_per_s), "steps": steps, "epochs": round(epochs, 2),
                "train_tokens": round(train_tokens), "batch_by_compute": settings.get("batch_size", by_compute)}
    return Plan(vocab, model, run, expected, why)


def planned_passes(run: dict, by_time: float, per_step: float, why: list) -> float:
    """The passes over the training text the run will make: those the time gives (by_time) or fewer
    where --steps or --epochs ends it sooner; a time budget that would give more than MAX_EPOCHS
    ends there instead (run["epochs"] set)."""
    if "minutes" not in run and ("steps" in run or "epochs" in run):
        by_time = math.inf  # the given length alone ends the run
    if "steps" in run:
        return min(by_time, run["steps"] * per_step)
    if "epochs" in run:
        return min(by_time, run["epochs"])
    if by_time > MAX_EPOCHS:
        run["epochs"] = MAX_EPOCHS
        why.append(f"{MAX_EPOCHS} passes over the text at most (the time would give {by_time:.0f}: a small text "
                   f"over-fits), so the run may end before the budget")
        return MAX_EPOCHS
    return by_time


def model_fields(compute: float, train_tokens: float, vocab_size: int, shape: dict, preset: str | None,
                 why: list) -> dict:  # fmt: skip
    """The model's fields: the preset's (GPT-2's architecture) or the plan's, with the given ones on top."""
    if preset is not None:
        why.append(f"the model is --preset {preset}" + (" with the flags given" if shape else ""))
        return {name: value for name, value in PRESETS[preset].items() if name != "vocab_size"} | shape
    model = dict(ARCHITECTURE)
    val_tokens = train_tokens * HELD_OUT / (1 - HELD_OUT)
    model["block_size"] = shape.get("block_size") or (CONTEXT if val_tokens >= 8 * CONTEXT else CONTEXT // 2)
    if "n_layer" in shape:
        model["n_layer"] = shape["n_layer"]
        why.append(f"{shape['n_layer']} layers (--n-layer)")
    else:
        model["n_layer"], reason = layers_for(compute, train_tokens, vocab_size, model["block_size"])
        why.append(f"{model['n_layer']} layer{'s' * (model['n_layer'] > 1)} for {reason}")
    model["n_embd"] = shape.get("n_embd") or width_for(model["n_layer"])
    model["n_head"] = shape.get("n_head") or heads_for(model["n_embd"])
    model |= shape
    why.append(f"{model['n_embd']} wide, {model['n_head']} heads, context {model['block_size']}")
    return model


def training_settings(run: dict, config: GPT2Config, epochs: float, steps: int, why: list) -> None:
    """The optimisers, their learning rates, dropout, weight decay, the moving average and the
    evaluations, for a run of about `steps` steps and `epochs` passes; the given ones kept."""
    if "optimizer" not in run and muon_missing() is None:
        run["optimizer"] = "muon"
    if run.get("optimizer") == "muon":
        run.setdefault("muon_lr", MUON_LR)
    run.setdefault("lr", float(f"{ADAMW_LR * math.sqrt(384 / config.n_embd):.2g}"))
    run.setdefault("weight_decay", WEIGHT_DECAY)
    ema = 0.0 if steps < 100 else min(0.995, round(1 - 8 / steps, 3))
    run.setdefault("ema", ema)
    run.setdefault("eval_every", max(25, 50 * round(steps / 4 / 50)) if steps >= 200 else max(10, steps // 4))
    optimiser = f"Muon at {run['muon_lr']:g} and AdamW at {run['lr']:g}" if run.get("optimizer") == "muon" \
        else f"AdamW at {run['lr']:g}"
    why.append(f"{optimiser}, weight decay {run['weight_decay']:g}, moving average {run['ema']:g}, "
               f"an evaluation every {run['eval_every']} steps")


def planned_dropout(epochs: float) -> float:
    """0 for a run that sees its text once or less, 0.2 at four passes (the recipe's), growing as
    the square root of the passes after the first, at most 0.3; in steps of 0.05."""
    return min(0.3, round(0.2 * math.sqrt(max(0.0, epochs - 1) / 3) * 20) / 20)


def flops_per_token(config: GPT2Config) -> int:
    """GPT2.flops_per_token of a model of this shape, without making its weights."""
    import torch

    from .gpt2 import GPT2

    with torch.device("meta"):
        return GPT2(config).flops_per_token()
