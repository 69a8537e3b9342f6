"""A training run from start to end (`main.py train`): a new model, a continued checkpoint, or a
trained model to fine-tune, with the tokenizer each needs.

    train("corpus.txt", preset="tiny", steps=200)                 # vocab.txt (learned if missing) -> gpt2_model.pt
    train("corpus.txt", "vocab.txt", "gpt2_model.pt", steps=400)  # continue that run to step 400
    train("more.txt", init_from="gpt2", out="tuned.pt")           # fine-tune GPT-2 (its tokenizer, its shape)

Keyword arguments name fields: a GPT2Config field that `train` may set (block_size, n_layer, rope,
...: see config.flag_fields) shapes a new model, and every TrainConfig field is a training setting.
The run says what it does through `say` (print: rank 0 speaks under torchrun) and ends with one line
that says why it stopped and where its checkpoint is.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

import bpe
from basics import UserError

from .checkpoint import check_output_path, output_lock
from .config import (
    DEFAULT_MODEL,
    DEFAULT_VOCAB,
    FINETUNE_DEFAULTS,
    LORA_LR,
    PRESETS,
    GPT2Config,
    TrainConfig,
    flag_fields,
    flag_of,
    muon_missing,
)
from .distributed import Distributed
from .export import export_problem, export_type
from .gpt2 import GPT2
from .hardware import measure_matmul_flops, peak_flops, pick_device, pick_dtype
from .loading import load_with_tokenizer, vocab_problem
from .plan import ARCHITECTURE, DEFAULT_MINUTES, EXPECTED_MFU, PROBE_BATCH, PROBE_SHAPE, Plan, flops_per_token, plan_run
from .trainer import Trainer, best_path, check_step_memory, measure_tokens_per_s
from .vocab import load_vocab, text_bytes, text_inputs

SHAPE_FIELDS = {f.name: f for f in flag_fields(GPT2Config)}  # the model's fields a run may set
SETTINGS = {f.name for f in fields(TrainConfig)}
FINE_TUNING_MAY_CHANGE = ("block_size", "dropout", "attn_dropout")  # what --init-from may set: no new weights
# A field whose None stands for a derived value is compared by that value (--kv-heads 12 is n_kv_head None).
COMPARED_AS = {"n_kv_head": "kv_heads"}
HELD_OUT_CUT_BYTES = 512 * 2**20  # texts up to this size are cut in memory (see training_part)


@dataclass
class Asked:
    """What a run was asked for: its text, its vocab file, and the shape and settings given."""

    text: str  # as given: a file, a folder or a glob (the messages show it)
    files: list
    vocab_file: str
    vocab_given: bool  # named by the caller (--init-from then checks it), not the default
    preset: str | None
    shape: dict  # GPT2Config fields given
    vocab_size: int | None
    settings: dict  # TrainConfig fields given


@dataclass
class Run:
    """How a run ended: Trainer.train's result (stopped_by, step, the last losses), the trainer, and
    the checkpoint it left."""

    result: dict
    trainer: Trainer
    saved: Path


def train(text: str, vocab_file: str | None = None, checkpoint: str | None = None, *, out: str | None = None,
          resume: str = "never", overwrite: bool = False, preset: str | None = None, vocab_size: int | None = None,
          plan_only: bool = False, say: Callable = print, **options) -> Run | Plan:  # fmt: skip
    """Train on `text`: continue `checkpoint` (or `out` with resume="auto"), or fine-tune
    options["init_from"], or start a new model as plan.py plans it (`preset` and the fields given
    replacing their parts); write `out` (default: the continued checkpoint, else gpt2_model.pt).
    Everything cheap is checked before any slow work. plan_only: say the plan of a new run and
    return it, training nothing."""
    started = time.monotonic()  # --minutes is the whole command's time, the tokenizer's included
    asked = ask(text, vocab_file, checkpoint, preset, vocab_size, options)
    if plan_only:
        return only_plan(asked, checkpoint, say)
    ranks = Distributed()  # under torchrun: join the other processes; else a world of one
    say = say if ranks.is_main else _silent
    out = check_output_path(out or checkpoint or DEFAULT_MODEL)
    with output_lock(out) if ranks.is_main else contextlib.nullcontext():  # one run writes one checkpoint
        resume_from = checkpoint
        if resume_from is None and resume == "auto" and out.exists():
            resume_from = str(out)
        continuing_out = resume_from is not None and os.path.exists(resume_from) and out.exists() \
            and os.path.samefile(out, resume_from)
        if out.exists() and not continuing_out and not overwrite:
            raise UserError(f"{out} already exists: continue it with --resume auto, or pass --overwrite to replace "
                            f"it, or choose another --out")
        if resume_from is not None:
            trainer = continued_run(asked, resume_from, say)
        elif asked.settings.get("init_from") is not None:
            trainer = pretrained_run(asked, ranks, say)
        else:
            trainer = new_run(asked, ranks, say, started)
        say(trainer.describe(), file=sys.stderr)
        say(trainer.memory_note, file=sys.stderr)
        result = trainer.train(asked.files, save_path=out)
    ranks.close()
    run = Run(result, trainer, Path(trainer.saved_to or out))
    line, to_stderr = end_report(run, asked, resume_from, ranks)
    say(line, **({"file": sys.stderr} if to_stderr else {}))
    return run


def ask(text: str, vocab_file: str | None, checkpoint: str | None, preset: str | None, vocab_size: int | None,
        options: dict) -> Asked:  # fmt: skip
    """The request, its settings checked now, before any slow work such as training a tokenizer."""
    unknown = sorted(set(options) - SETTINGS - set(SHAPE_FIELDS))
    if unknown:
        raise TypeError(f"train() got unexpected arguments {unknown}")
    given = {name: value for name, value in options.items() if value is not None}
    settings = {name: value for name, value in given.items() if name in SETTINGS}
    # --muon-lr alone may continue a Muon run (the optimizer is the checkpoint's): the run's own config judges that pair.
    TrainConfig(**{"optimizer": "muon" if "muon_lr" in settings else "adamw", **settings})
    shape = {name: value for name, value in given.items() if name in SHAPE_FIELDS}
    asked = Asked(text, [], vocab_file or DEFAULT_VOCAB, vocab_file is not None, preset, shape, vocab_size, settings)
    if settings.get("init_from") is not None:
        check_init_from(asked, checkpoint)
    asked.files = text_inputs(text)
    return asked


def only_plan(asked: Asked, checkpoint: str | None, say: Callable) -> Plan:
    """train --plan-only: the plan of a new run, said; a continued or fine-tuning run has none."""
    if checkpoint is not None or asked.settings.get("init_from") is not None:
        raise UserError("--plan-only plans a new model: a continued run keeps its plan, and --init-from its "
                        "model's shape")
    found = load_vocab(asked.vocab_file) if os.path.exists(asked.vocab_file) else None
    planned = make_plan(asked, found, Distributed())
    for line in plan_lines(planned):
        say(line)
    return planned


def check_init_from(asked: Asked, checkpoint: str | None) -> None:
    """With init_from the model and its tokenizer are given: settings that would choose others are refused."""
    init_from = asked.settings["init_from"]
    shape = [(flag_of(SHAPE_FIELDS[name]), value) for name, value in asked.shape.items()
             if name not in FINE_TUNING_MAY_CHANGE]
    for flag, value in (("--preset", asked.preset), *shape, ("--vocab-size", asked.vocab_size)):
        if value is not None:
            raise UserError(f"{flag} does not go with --init-from: the run keeps {init_from}'s shape and tokenizer "
                            f"(--context, --dropout and --attn-dropout may change)")
    if checkpoint is not None:
        raise UserError(f"give a checkpoint to continue ({checkpoint}) or --init-from to start from a trained "
                        f"model, not both")


def shown_flag(name: str, value) -> str:
    """A shape field as its flag was given: a switch alone (--rope, --no-rope, --untied), a value after its flag."""
    f = SHAPE_FIELDS[name]
    if isinstance(value, bool):  # --rope or --no-rope; a named switch (--untied, --no-bias) sets one value only
        return flag_of(f) if value or "flag" in f.metadata else "--no-" + flag_of(f)[2:]
    return f"{flag_of(f)} {value}"


def continued_run(asked: Asked, resume_from: str, say: Callable) -> Trainer:
    """A trainer that continues a checkpoint, after checking that what is asked now agrees with it."""
    if not os.path.exists(resume_from):
        raise UserError(f"checkpoint not found: {resume_from}")
    trainer = Trainer.from_checkpoint(resume_from, **asked.settings)
    check_continued_shape(asked, trainer.model.config, trainer.bpe, resume_from)
    if os.path.exists(asked.vocab_file) and (asked.vocab_given or trainer.config.init_from is None):
        given = load_vocab(asked.vocab_file)
        problem = vocab_problem(given, asked.vocab_file, trainer.model.config, trainer.bpe, resume_from)
        if problem:
            raise UserError(problem)
    say(f"continuing {resume_from} from step {trainer.step} (its model, tokenizer and settings; "
        f"flags given now override the settings)", file=sys.stderr)
    return trainer


def check_continued_shape(asked: Asked, stored: GPT2Config, tokenizer: bpe.BPE, path: str) -> None:
    """A continued run keeps its model: a shape given with a checkpoint must agree with it."""
    wanted = []  # (flag as given, field, value it asks for)
    if asked.preset is not None:  # the preset's fields that no flag given with it replaces
        wanted += [(f"--preset {asked.preset}", name, value) for name, value in PRESETS[asked.preset].items()
                   if name != "vocab_size" and name not in asked.shape]
    wanted += [(shown_flag(name, value), name, value) for name, value in asked.shape.items()]
    for flag, name, value in wanted:
        name = COMPARED_AS.get(name, name)
        if getattr(stored, name) != value:
            raise UserError(f"{flag} does not fit {path}, whose {name} is {getattr(stored, name)}: a continued run "
                            f"keeps its model (leave the flag out, or start afresh with another --out)")
    if asked.vocab_size is not None and asked.vocab_size != tokenizer.vocab_size:
        raise UserError(f"--vocab-size {asked.vocab_size} does not fit {path}, whose tokenizer has "
                        f"{tokenizer.vocab_size} tokens: a continued run keeps its tokenizer")


def new_run(asked: Asked, ranks: Distributed, say: Callable, started: float) -> Trainer:
    """A new model and its trainer, as the plan (plan.py) sizes them for the text and the time, the
    flags given replacing their parts. The memory a step needs is checked before a tokenizer is
    trained; a newly trained tokenizer is saved only once the text has proved long enough to train
    on, so a run that fails at once leaves no vocab file behind."""
    found = load_vocab(asked.vocab_file) if os.path.exists(asked.vocab_file) else None
    if found is not None:
        say(found_vocab_note(found, asked.vocab_file, asked.files, asked.text), file=sys.stderr)
    planned = make_plan(asked, found, ranks)
    for line in plan_lines(planned):
        say(line, file=sys.stderr)
    train_config = TrainConfig(**planned.settings)
    config = GPT2Config(vocab_size=planned.vocab_size, **planned.shape)
    if not ranks.is_main:
        ranks.barrier()  # rank 0 trains the tokenizer if there is none yet; the others then load it
        tokenizer = load_vocab(asked.vocab_file)
    else:
        tokenizer = found or learn_run_vocab(asked, planned.vocab_size, train_config, config.block_size, say)
        ranks.barrier()
    seed_everything(train_config.seed)
    model = GPT2(replace(config, vocab_size=tokenizer.vocab_size))
    if train_config.classify:
        model = classifier_for(model, asked, train_config, tokenizer, say)
    trainer = Trainer(model, tokenizer, train_config)
    trainer.plan, trainer.budget_start = planned.as_dict(), started
    return trainer


def make_plan(asked: Asked, found: bpe.BPE | None, ranks: Distributed) -> Plan:
    """The plan of a new run (see plan.py): the time budget (--minutes, or DEFAULT_MINUTES when nothing
    sets the schedule's length), the text's size and this device's peak speed; its memory checked."""
    settings = dict(asked.settings)
    if not {"minutes", "steps", "epochs"} & settings.keys():
        settings["minutes"] = DEFAULT_MINUTES
    device = pick_device(ranks.device_name(settings.get("device", "auto")))
    dtype = pick_dtype(settings.get("dtype", "auto"), device)
    seconds = 60 * settings.get("minutes", DEFAULT_MINUTES)
    given = dict(shape=asked.shape, settings=settings, preset=asked.preset, processes=ranks.world_size,
                 vocab_size=found.vocab_size if found else asked.vocab_size)
    flops = training_flops(device, dtype, ranks.world_size)
    planned = plan_run(text_bytes(asked.files), seconds, flops, **given)
    if ranks.world_size == 1:  # the probe: this shape's measured speed replaces the estimate (torchrun's
        # ranks keep the estimate, which every rank computes alike); at the batch the compute asks for
        c, t = GPT2Config(vocab_size=planned.vocab_size, **planned.shape), TrainConfig(**planned.settings)
        t = replace(t, batch_size=planned.expected["batch_by_compute"])
        check_step_memory(c, t.batch_size, device, dtype, t.grad_checkpoint, t.ema > 0)
        speed = measure_tokens_per_s(c, t, device, dtype)
        planned = plan_run(text_bytes(asked.files), seconds, flops, **given, tokens_per_s=speed)
        planned.why.append(f"{speed:,.0f} tokens/s measured for this shape (two steps on random tokens, batch {t.batch_size})")
    c, t = GPT2Config(vocab_size=planned.vocab_size, **planned.shape), TrainConfig(**planned.settings)
    planned.expected["memory"] = check_step_memory(c, t.batch_size, device, dtype, t.grad_checkpoint, t.ema > 0)
    return planned


@functools.cache
def training_flops(device: torch.device, dtype: torch.dtype, processes: int) -> float:
    """The FLOP/s a plan sizes its model by: on a CPU, measured in training steps of the probe's
    shape (a CPU trains at 15 to 40% of its matrix-product peak, by the machine); on a GPU or under
    torchrun (where every rank must plan alike), the measured or data-sheet peak x EXPECTED_MFU."""
    if device.type != "cpu" or processes > 1:
        peak = peak_flops(device, dtype)[0] if device.type == "cpu" else measure_matmul_flops(device, dtype)
        return peak * EXPECTED_MFU.get(device.type, 0.25)
    probe = GPT2Config(**PROBE_SHAPE, **ARCHITECTURE)
    train = TrainConfig(batch_size=PROBE_BATCH, optimizer="muon" if muon_missing() is None else "adamw")
    return measure_tokens_per_s(probe, train, device, dtype) * flops_per_token(probe)


def plan_lines(planned: Plan) -> list[str]:
    """The plan as the run's first lines: the model, why, and what to expect."""
    c, t, e = GPT2Config(vocab_size=planned.vocab_size, **planned.shape), TrainConfig(**planned.settings), planned.expected
    with torch.device("meta"):
        weights = GPT2(c).num_parameters()
    budget = f"--minutes {t.minutes:g}" if t.minutes else f"--steps {t.steps}" if t.steps else f"--epochs {t.epochs:g}"
    lines = [f"plan ({budget}): {c.n_layer} layer{'s' * (c.n_layer > 1)} x {c.n_embd} wide, {c.n_head} heads, context {c.block_size}, "
             f"{weights:,} weights; batch {t.batch_size}; dropout {c.dropout:g}"]
    lines += [f"  because: {why}" for why in planned.why]
    problem = export_problem(c)
    exports = "exports to transformers as " + export_type(c) if problem is None else f"will not export ({problem})"
    lines.append(f"  expect: about {e['tokens_per_s']:,} tokens/s, {e['steps']:,} steps, {e['epochs']:g} passes over "
                 f"{e['train_tokens']:,} training tokens; {e['memory'].removeprefix('memory: ')}; {exports}")
    return lines


def pretrained_run(asked: Asked, ranks: Distributed, say: Callable) -> Trainer:
    """A new run that starts from a trained model (fine-tuning): its weights, its tokenizer, its
    shape (a shorter context and other dropout rates excepted), and FINETUNE_DEFAULTS where no
    setting says otherwise."""
    init_from = asked.settings["init_from"]
    finetune = {**FINETUNE_DEFAULTS, **({"lr": LORA_LR} if asked.settings.get("lora") else {})}
    defaults = {name: value for name, value in finetune.items() if name not in asked.settings}
    train_config = TrainConfig(**{**defaults, **asked.settings})
    if not ranks.is_main:
        ranks.barrier()  # rank 0 fetches a hub model first; the others then find it in the cache
    loaded = load_with_tokenizer(init_from, "cpu", asked.vocab_file if asked.vocab_given else None,
                                 "give its vocab file after the text file")
    if ranks.is_main:
        ranks.barrier()
    from .lora import adapted_layers, merge_lora

    if adapted_layers(loaded.model):  # a model trained with adapters: its merged weights are the start
        merge_lora(loaded.model).requires_grad_(True)
    gpt = loaded.model.gpt if loaded.classes else loaded.model
    model = gpt.with_changes(**{name: asked.shape.get(name) for name in FINE_TUNING_MAY_CHANGE})
    shown = " ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in defaults.items())
    say(f"starting from {init_from}: {model.num_parameters():,} parameters, context {model.config.block_size}, "
        f"its own tokenizer ({loaded.tokenizer.vocab_size:,} tokens)" + (f"; fine-tuning defaults {shown}" if shown else ""),
        file=sys.stderr)
    seed_everything(train_config.seed)  # the batches, dropout and a new head; the rest is the pretrained weights
    if train_config.classify:
        kept = loaded.model if loaded.classes else None  # a classifier goes on with its head when the classes agree
        model = classifier_for(model, asked, train_config, loaded.tokenizer, say, kept)
    elif loaded.classes:
        raise UserError(f"{init_from} is a classifier: fine-tune it with --classify on labelled texts")
    base = None
    if train_config.lora:
        model, base = with_adapters(model, gpt, loaded, train_config, say)
    trainer = Trainer(model.train(), loaded.tokenizer, train_config)
    trainer.lora_base = base
    return trainer


def with_adapters(model, base_gpt: GPT2, loaded, train_config: TrainConfig, say: Callable) -> tuple:
    """The model with LoRA adapters (--lora R), its base frozen; and the base as the checkpoint names
    it: the name given, the file or folder it is (as an absolute path, found again from another
    folder), and the hash of its weights, checked when the adapters are loaded."""
    from .lora import adapted_parts, add_lora, weights_hash

    c = train_config
    path = str(loaded.path.resolve()) if loaded.source != "hub" else None
    base = {"name": loaded.name, "path": path, "hash": weights_hash(base_gpt.state_dict())}  # before the adapters
    add_lora(model, c.lora, c.lora_alpha, c.lora_dropout, c.lora_targets)
    trained = model.num_parameters(trained=True)
    say(f"LoRA rank {c.lora} (alpha {c.lora_alpha or c.lora:g}) on {adapted_parts(model)}: training {trained:,} of "
        f"{model.num_parameters():,} parameters ({trained / model.num_parameters():.2%}); the checkpoint holds "
        f"these and names {loaded.name}", file=sys.stderr)
    return model, base


def classifier_for(gpt: GPT2, asked: Asked, train_config: TrainConfig, tokenizer: bpe.BPE, say: Callable,
                   kept=None):  # fmt: skip
    """A classifier on `gpt` for the classes of the labelled file (a new head, or kept's if it has
    those classes), its blocks frozen but for --train-blocks."""
    from .classifier import GPT2Classifier, pad_id_of
    from .labelled import read_labelled

    if len(asked.files) != 1:
        raise UserError(f"--classify reads one file of labelled texts, not {len(asked.files)} files")
    names = read_labelled(asked.files[0], train_config.text_column, train_config.label_column).names
    model = GPT2Classifier(gpt, names, pad_id_of(tokenizer))
    if kept is not None and kept.names == names:
        model.score.weight.data.copy_(kept.score.weight)
    model.train_last_blocks(train_config.train_blocks)
    blocks = "all blocks" if train_config.train_blocks is None else f"the last {train_config.train_blocks} blocks"
    say(f"classifier of {len(names)} classes ({', '.join(names[:8])}{', ...' * (len(names) > 8)}); training "
        f"{blocks}, the final norm and the head: {model.num_parameters(trained=True):,} of {model.num_parameters():,} "
        f"parameters", file=sys.stderr)
    return model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def found_vocab_note(tokenizer: bpe.BPE, path: str, files: list, spec: str) -> str:
    """Which vocab file a new run uses, and a warning when it was learned from another text."""
    origin, size = tokenizer.trained_on, f"{tokenizer.vocab_size:,} tokens"
    if origin is None:
        return f"using {path}, found here ({size}; what it was learned from is not recorded)"
    if origin.get("sha256") == bpe.text_digest(files):
        return f"using {path}, found here ({size}, learned from this text)"
    return (f"warning: using {path}, found here, which was learned from another text ({origin.get('text')}, "
            f"{origin.get('bytes', 0):,} bytes), not from {spec}; to learn a vocabulary from {spec}, "
            f"give another vocab file name")


def learn_run_vocab(asked: Asked, vocab_size: int, train_config: TrainConfig, block_size: int,
                    say: Callable) -> bpe.BPE:  # fmt: skip
    """A tokenizer learned from the training part of the text, saved as the vocab file once the text
    has proved long enough to train on (the token file it makes is the one training reads)."""
    from . import data

    say(f"{asked.vocab_file} not found: training a tokenizer of {vocab_size} tokens on {asked.text}", file=sys.stderr)
    files, workers, part = asked.files, train_config.workers, ""  # part: what of the text it learned from
    if train_config.classify:  # the training part's texts alone, not their labels
        from .labelled import read_labelled, run_parts

        c = train_config
        train = run_parts(read_labelled(files[0], c.text_column, c.label_column), c.balance, c.val_fraction,
                          c.test_fraction)[1]  # fmt: skip
        tokenizer = bpe.BPE.train("\n".join(train.texts), vocab_size, progress=True, workers=workers)
        tokenizer.trained_on = {**tokenizer.trained_on, "sha256": bpe.text_digest(files), "text": bpe.files_name(files),
                                "held_out": c.val_fraction + c.test_fraction}  # a later run on the file finds it
        part = " (the texts of its training part: the held-out parts taught it nothing)"
    elif data.is_instruction_input(files):
        data.split_records(data.read_records(files)[1], train_config.val_fraction)  # "too few records": before any work
        tokenizer = data.records_tokenizer(files, vocab_size, workers=workers, progress=True)
    else:
        held_out = train_config.val_fraction + train_config.test_fraction
        learn_from = training_part(files, held_out)
        tokenizer = bpe.BPE.train(learn_from, vocab_size, progress=True, workers=workers)
        if learn_from is not files:  # it is the run's text all the same: a later run on it finds this vocab
            tokenizer.trained_on = {**tokenizer.trained_on, "sha256": bpe.text_digest(files),
                                    "text": bpe.files_name(files), "held_out": held_out}
            parts = "parts" if train_config.test_fraction else "part"
            part = f" (its first {1 - held_out:.0%}: the held-out {parts} taught it nothing)"
        tokens = data.load_tokens(files, tokenizer, progress=True, workers=workers)
        # "too short" fails here, before the save
        data.split_tokens(tokens, train_config.val_fraction, block_size, train_config.test_fraction)
    tokenizer.save(asked.vocab_file)
    say(f"wrote {asked.vocab_file}: {tokenizer.vocab_size} tokens learned from {asked.text}{part}", file=sys.stderr)
    return tokenizer


def training_part(files: list, held_out: float) -> str | list:
    """What a run's own tokenizer learns from: the text without its last `held_out` fraction, the parts held
    out for validation and testing, so that no merge is made from text the model is then scored on (a merge
    learned there turns whole held-out words and phrases into single tokens, and the larger the
    vocabulary, the more it flatters the validation loss). Several files are joined as training
    joins them, with <|endoftext|> between. The cut is by characters and the held-out part is the
    last `held_out` of the tokens, so the two meet within a few tokens. A text over
    HELD_OUT_CUT_BYTES is learned from whole (the files, streamed): at that size the held-out part
    is a fair sample of the text's words, not a source of its own merges."""
    if not held_out or text_bytes(files) > HELD_OUT_CUT_BYTES:
        return files
    text = bpe.ENDOFTEXT.join("".join(bpe.iter_text_chunks(f, (bpe.ENDOFTEXT,))) for f in files)
    return text[: int(len(text) * (1 - held_out))]


def end_report(run: Run, asked: Asked, resume_from: str | None, ranks: Distributed) -> tuple[str, bool]:
    """The last line of a run: why it ended and where its checkpoint is; and whether it goes to stderr."""
    result, saved, config = run.result, run.saved, run.trainer.config
    if result["stopped_by"] == "done":
        return (f"nothing left to train: {resume_from} is at step {result['step']}, the end of its schedule "
                f"(give a larger --steps to go on); nothing was written"), False
    if result["stopped_by"] == "signal":
        again = ["--out", str(saved), "--resume", "auto"] if config.init_from else [asked.vocab_file, str(saved)]
        command = shlex.join([*resume_launcher(ranks), "train", asked.text, *again])  # quotes a glob
        return f"stopped at step {result['step']}; saved {saved}. Resume with: {command}", True
    ended = f" (the time budget, --minutes {config.minutes:g}, ran out)" if result["stopped_by"] == "time" else ""
    test = f"test loss {result['test_loss']:.4f}, {result['test_bpb']:.4f} bits per byte" if "test_bpb" in result else ""
    if config.classify:  # accuracy in place of bits per byte
        test = f"test loss {result['test_loss']:.4f}, accuracy {result['test_accuracy']:.2%}" if "test_loss" in result else ""
    if "val_loss" in result:
        val = f"val loss {result['val_loss']:.4f}, " + (f"accuracy {result['val_accuracy']:.2%}" if config.classify
                                                          else f"{result['val_bpb']:.4f} bits per byte")
        line = f"step {result['step']}: {val}{'; ' + test if test else ''}; saved {saved}{ended}"
        return line + better_checkpoint(run.trainer.best_val_loss, result["val_loss"], saved), False
    return f"step {result['step']}: {test + '; ' if test else ''}saved {saved}{ended}", False


def better_checkpoint(best_loss: float, last_loss: float, saved: Path) -> str:
    """What the last line adds when an earlier checkpoint was better on the validation part (the run
    over-fitted at its end): where that one is. A difference under 0.1% is noise, not over-fitting."""
    if last_loss <= best_loss * 1.001:
        return ""
    return (f". An earlier checkpoint was better on the validation part (val loss {best_loss:.4f}): "
            f"use {best_path(saved)}")


def resume_launcher(ranks: Distributed) -> list[str]:
    """How this run was started: `python main.py`, the installed `gpt2-toolkit`, or under torchrun."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "main.py"
    if ranks.world_size > 1:
        return ["torchrun", f"--nproc_per_node={ranks.local_world_size}", "main.py"]
    return ["python", program] if program.endswith(".py") else [program]


def _silent(*args, **kwargs) -> None:
    """print() for the ranks other than 0 under torchrun: rank 0 speaks for the run."""
