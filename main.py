"""Command-line tool: tokenizer, training, generation and evaluation.

    python main.py tokenize corpus.txt --vocab-size 4096      # writes vocab.txt
    python main.py tokenize books/                            # every .txt file in a folder ('books/*.txt': a glob)
    python main.py encode "Hello world"                       # prints [..ids..]
    python main.py decode "[15496, 995]"                      # prints the text
    python main.py train corpus.txt                           # vocab.txt (made if missing) -> gpt2_model.pt
    python main.py train instructions.jsonl --out chat.pt     # JSON-lines records: the loss on the answers
    python main.py predict "Once upon a time" 50              # streams 50 new tokens
    python main.py predict --chat chat.pt                     # ask, read the answer, ask again
    python main.py eval held_out.txt                          # loss, perplexity, bits per byte
    python main.py plot gpt2_model.metrics.jsonl -o loss.png  # a picture of one run, or several compared
    python main.py predict "Hello" 20 gpt2                    # a transformers folder or a hub name is a model too
    python main.py export gpt2_model.pt exported/             # a folder transformers loads as it is
    python main.py serve gpt2_model.pt --port 8000            # OpenAI's HTTP API and a page, at 127.0.0.1

This file only parses arguments, calls the library and prints. Every error a user can cause
ends with one line on stderr and exit code 1 (2 for a malformed command line).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shlex
import signal
import sys
import threading
import time
import typing
from dataclasses import fields

try:
    import basics
    import bpe
except KeyboardInterrupt:  # Ctrl-C as the tool starts: the same one line as at any later moment
    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None

DEFAULT_VOCAB = "vocab.txt"
DEFAULT_MODEL = "gpt2_model.pt"
MODEL_HELP = ("a model: a checkpoint file, a transformers model folder, or a Hugging Face hub name such as "
              "gpt2 or openai-community/gpt2 (fetched once into the Hugging Face cache)")
TEXT_INPUT_HELP = ("UTF-8 text to %s: a file, a folder (all its .txt files, joined with <|endoftext|> between "
                   "them), or a quoted glob pattern such as 'data/*.txt'")


UserError = basics.UserError  # any error the user can fix: one line, exit code 1 (see main())


# ---- helpers ---------------------------------------------------------------------------------


def text_inputs(spec: str, purpose: str = "learn from") -> list:
    """The files a text argument names (a file, a folder of .txt files, or a quoted glob pattern),
    checked to hold some text (they are streamed later)."""
    files = bpe.text_files(spec)
    if all(os.path.getsize(f) == 0 for f in files):
        raise UserError(f"{spec} is empty: there is no text to {purpose}")
    return files


def load_tokenizer(path: str) -> bpe.BPE:
    if not os.path.exists(path):
        hint = " (make one with: python main.py tokenize <text file>)" if path == DEFAULT_VOCAB else ""
        raise UserError(f"vocab file not found: {path}{hint}")
    return bpe.BPE.load(path)


def read_arg_or_stdin(value: str) -> str:
    """'-' means: read standard input (as UTF-8, whatever the locale)."""
    if value != "-":
        return value
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"standard input is not UTF-8 text: invalid byte at offset {e.start}") from None


def parse_ids(text: str) -> list[int]:
    try:
        ids = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON ids: {e.msg} at character {e.pos}; expected a list like [15496, 995]") from None
    if not isinstance(ids, list) or not all(type(i) is int for i in ids):
        raise UserError("invalid JSON ids: expected a list of integers like [15496, 995]")
    return ids


# ---- subcommands -----------------------------------------------------------------------------


def cmd_tokenize(args: argparse.Namespace) -> None:
    check_tokenize_args(args)
    files = text_inputs(args.file) if args.file else []  # a bad text is reported before a taken output
    if os.path.exists(args.output) and not args.overwrite:
        raise UserError(f"{args.output} already exists: pass --overwrite to replace it, or choose another -o")
    with ctrl_c_remembered() as stop_if_interrupted:
        if args.from_checkpoint:
            tok = tokenizer_of_checkpoint(args.from_checkpoint)
            made = f"the tokenizer of {args.from_checkpoint}"
        else:
            tok, made = learn_vocab(args, files)
        with basics.atomic_write(args.output, "w") as f:
            f.write(tok.to_text())
            stop_if_interrupted()  # raised inside the block, it removes the new file: the old one stays
    print(f"wrote {args.output}: {tok.vocab_size} tokens ({len(tok.merges)} merges), {made}, hash {tok.hash[:16]}")


def check_tokenize_args(args: argparse.Namespace) -> None:
    """Where the tokenizer comes from: a text or a checkpoint, exactly one, with flags that fit it."""
    if (args.file is None) == (args.from_checkpoint is None):
        raise UserError("give a text to learn from or --from-checkpoint MODEL.pt (exactly one of them)")
    training_flags = {"--vocab-size": args.vocab_size, "--pattern": args.pattern, "--workers": args.workers}
    given = [flag for flag, value in training_flags.items() if value is not None]
    if args.from_checkpoint and given:
        raise UserError(f"{given[0]} is for learning from a text: --from-checkpoint writes the tokenizer stored in "
                        f"the checkpoint as it is")


def learn_vocab(args: argparse.Namespace, files: list) -> tuple[bpe.BPE, str]:
    """A tokenizer learned from the text files of `tokenize`, and how it was made (for the last line)."""
    from gpt2_llm.data import is_instruction_input, records_tokenizer

    size = text_bytes(files)
    vocab_size = args.vocab_size or bpe.recommended_vocab_size(size)
    pattern = {"pattern": args.pattern} if args.pattern else {}  # else BPE.train's default
    start = time.perf_counter()
    if is_instruction_input(files):  # records are learned from as the template renders them
        tok = records_tokenizer(files, vocab_size, workers=args.workers, progress=True, **pattern)
    else:
        tok = bpe.BPE.train(files, vocab_size, progress=True, workers=args.workers, **pattern)
    seconds = time.perf_counter() - start
    if tok.vocab_size < vocab_size:
        print(f"note: the text offers only {tok.vocab_size} tokens' worth of merges", file=sys.stderr)
    if args.vocab_size is None:
        print(f"vocab size {vocab_size}: recommended for {size:,} bytes (choose with --vocab-size)")
    return tok, f"trained in {seconds:.1f} s"


def tokenizer_of_checkpoint(path: str) -> bpe.BPE:
    from gpt2_llm.loading import load

    loaded = load(path)
    if loaded.tokenizer is None:
        raise UserError(f"{path} holds model weights only, no tokenizer ({why_no_tokenizer(loaded)})")
    return loaded.tokenizer


def why_no_tokenizer(loaded) -> str:
    """Why a loaded model came without a tokenizer, in a few words."""
    return "it was saved by GPT2.save" if loaded.source == "checkpoint" else "its folder has no tokenizer files"


@contextlib.contextmanager
def ctrl_c_remembered() -> typing.Iterator[typing.Callable[[], None]]:
    """Within the block Ctrl-C raises KeyboardInterrupt as usual, and is also remembered: the
    function the block gets raises it again if one came.

    Python only prints an exception raised in a __del__ or a finalizer ("Exception ignored in ...")
    and goes on, so an interrupt that lands in one (a progress bar's, a worker queue's) would be
    lost, and the work would go on to replace its output and exit 0. Call the function just before
    committing anything.
    """
    came: list[int] = []

    def on_ctrl_c(signum, frame):
        came.append(signum)
        raise KeyboardInterrupt

    def stop_if_interrupted() -> None:
        if came:
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield stop_if_interrupted  # only the main thread may set a handler (and only it gets Ctrl-C)
        return
    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield stop_if_interrupted
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


@contextlib.contextmanager
def ctrl_c_deferred() -> typing.Iterator[None]:
    """Ctrl-C within the block takes effect when the block ends.

    For importing torch: its C++ extension calls back into Python as it loads, and a
    KeyboardInterrupt raised there cannot cross the C++ frames: the process aborts
    ("terminate called after throwing an instance of 'pybind11::error_already_set'", exit -6)
    instead of saying "interrupted" and exiting 130.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # only the main thread may set a handler; a Ctrl-C ignored (nohup, a background job) stays ignored
        return
    came: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if came:
        raise KeyboardInterrupt


def cmd_encode(args: argparse.Namespace) -> None:
    tok = load_tokenizer(args.vocab_file)
    text = read_arg_or_stdin(args.text)
    try:
        ids = tok.encode(text, allowed_special="all" if args.allow_special else ())
    except bpe.SpecialTokenError as e:  # bpe's message names its keyword arguments; say the flag instead
        raise UserError(f"the text contains the special token {e.token!r}; "
                        f"add --allow-special to encode it as one token") from None
    print(json.dumps(ids))


def cmd_decode(args: argparse.Namespace) -> None:
    tok = load_tokenizer(args.vocab_file)
    ids = parse_ids(read_arg_or_stdin(args.ids))
    if args.pieces:
        print(json.dumps(tok.token_pieces(ids), ensure_ascii=False))
    else:
        print(tok.decode(ids))


def cmd_train(args: argparse.Namespace) -> int:
    """Check everything that is cheap to check, take the output, set up a new or continued run,
    train, and say how it ended."""
    from gpt2_llm import TrainConfig
    from gpt2_llm.checkpoint import check_output_path, output_lock
    from gpt2_llm.distributed import Distributed

    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    # Check every flag now, before any slow work such as training a tokenizer. --muon-lr alone may continue
    # a Muon run (the optimizer is the checkpoint's): the run's own config judges that pair.
    TrainConfig(**{"optimizer": "muon" if "muon_lr" in overrides else "adamw", **overrides})
    args.vocab_given = args.vocab_file is not None  # --init-from checks a vocab file only if one was named
    args.vocab_file = args.vocab_file or DEFAULT_VOCAB
    if args.init_from is not None:
        check_init_from_flags(args)
    files = text_inputs(args.file)
    ranks = Distributed()  # under torchrun: join the other processes; else a world of one
    say = print if ranks.is_main else _silent
    out = check_output_path(args.out or args.checkpoint or DEFAULT_MODEL)
    with output_lock(out) if ranks.is_main else contextlib.nullcontext():  # one run writes one checkpoint
        resume_from = args.checkpoint
        if resume_from is None and args.resume == "auto" and out.exists():
            resume_from = str(out)
        continuing_out = resume_from is not None and os.path.exists(resume_from) and out.exists() \
            and os.path.samefile(out, resume_from)
        if out.exists() and not continuing_out and not args.overwrite:
            raise UserError(f"{out} already exists: continue it with --resume auto, or pass --overwrite to replace "
                            f"it, or choose another --out")
        if resume_from is not None:
            trainer = continued_run(args, resume_from, overrides, say)
        elif args.init_from is not None:
            trainer = pretrained_run(args, overrides, ranks, say)
        else:
            trainer = new_run(args, files, overrides, ranks, say)
        say(trainer.describe(), file=sys.stderr)
        say(trainer.memory_note, file=sys.stderr)
        result = trainer.train(files, save_path=out)
    ranks.close()
    return report_end(result, args, trainer, resume_from, out, ranks, say)


def continued_run(args: argparse.Namespace, resume_from: str, overrides: dict, say):
    """A trainer that continues a checkpoint, after checking the flags given now agree with it."""
    from gpt2_llm import Trainer

    if not os.path.exists(resume_from):
        raise UserError(f"checkpoint not found: {resume_from}")
    trainer = Trainer.from_checkpoint(resume_from, **overrides)
    check_continued_shape(args, trainer.model.config, trainer.bpe, resume_from)
    if os.path.exists(args.vocab_file) and (args.vocab_given or trainer.config.init_from is None):
        check_same_tokenizer(trainer.bpe, load_tokenizer(args.vocab_file), args.vocab_file, resume_from)
    say(f"continuing {resume_from} from step {trainer.step} (its model, tokenizer and settings; "
        f"flags given now override the settings)", file=sys.stderr)
    return trainer


def new_run(args: argparse.Namespace, files: list, overrides: dict, ranks, say):
    """A new model of the preset's shape and its trainer. The memory a step needs is checked before
    a tokenizer is trained; a newly trained tokenizer is saved only once the text has proved long
    enough to train on, so a run that fails at once leaves no vocab file behind."""
    from gpt2_llm import GPT2, TrainConfig, Trainer
    from gpt2_llm.hardware import pick_device, pick_dtype
    from gpt2_llm.trainer import check_step_memory

    train_config = TrainConfig(**overrides)
    found = load_tokenizer(args.vocab_file) if os.path.exists(args.vocab_file) else None
    if found is not None:
        say(found_vocab_note(found, args.vocab_file, files, args.file), file=sys.stderr)
    vocab_size = found.vocab_size if found else args.vocab_size or bpe.recommended_vocab_size(text_bytes(files))
    config = model_config(args, vocab_size)
    device = pick_device(ranks.device_name(train_config.device))
    check_step_memory(config, train_config.batch_size, device, pick_dtype(train_config.dtype, device),
                      train_config.grad_checkpoint, train_config.ema > 0)
    if not ranks.is_main:
        ranks.barrier()  # rank 0 trains the tokenizer if there is none yet; the others then load it
        tokenizer = load_tokenizer(args.vocab_file)
    else:
        tokenizer = found or learn_run_vocab(args, files, vocab_size, train_config, config.block_size, say)
        ranks.barrier()
    torch_seed(train_config.seed)
    return Trainer(GPT2(model_config(args, tokenizer.vocab_size)), tokenizer, train_config)


def pretrained_run(args: argparse.Namespace, overrides: dict, ranks, say):
    """A new run that starts from a trained model (fine-tuning): its weights, its tokenizer, its
    shape (a shorter --context and other dropout rates excepted), and FINETUNE_DEFAULTS where no
    flag says otherwise."""
    from gpt2_llm import TrainConfig, Trainer
    from gpt2_llm.config import FINETUNE_DEFAULTS

    defaults = {name: value for name, value in FINETUNE_DEFAULTS.items() if name not in overrides}
    train_config = TrainConfig(**{**defaults, **overrides})
    if not ranks.is_main:
        ranks.barrier()  # rank 0 fetches a hub model first; the others then find it in the cache
    loaded = load_named(args.init_from, "cpu", args.vocab_file if args.vocab_given else None,
                        "give its vocab file after the text file")
    model, tokenizer = loaded.model, loaded.tokenizer
    if ranks.is_main:
        ranks.barrier()
    model = model.with_changes(dropout=args.dropout, attn_dropout=args.attn_dropout, block_size=args.context)
    shown = " ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in defaults.items())
    say(f"starting from {args.init_from}: {model.num_parameters():,} parameters, context {model.config.block_size}, "
        f"its own tokenizer ({tokenizer.vocab_size:,} tokens)" + (f"; fine-tuning defaults {shown}" if shown else ""),
        file=sys.stderr)
    torch_seed(train_config.seed)  # the batches and dropout; the weights are the pretrained ones
    return Trainer(model.train(), tokenizer, train_config)


def check_init_from_flags(args: argparse.Namespace) -> None:
    """With --init-from the model and its tokenizer are given: flags that would choose others are refused."""
    shape = [(flag, getattr(args, dest)) for dest, (flag, _) in SHAPE_FLAGS.items() if dest not in FINE_TUNING_MAY_CHANGE]
    for flag, value in (("--preset", args.preset), *shape, ("--vocab-size", args.vocab_size)):
        if value is not None:
            raise UserError(f"{flag} does not go with --init-from: the run keeps {args.init_from}'s shape and tokenizer "
                            f"(--context, --dropout and --attn-dropout may change)")
    if args.checkpoint is not None:
        raise UserError(f"give a checkpoint to continue ({args.checkpoint}) or --init-from to start from a trained "
                        f"model, not both")


def model_config(args: argparse.Namespace, vocab_size: int):
    """The model the flags ask for: the preset, with --context, --dropout, ... replacing its fields."""
    from gpt2_llm import GPT2Config

    shape = {name: getattr(args, dest) for dest, (_, name) in SHAPE_FLAGS.items() if getattr(args, dest) is not None}
    return GPT2Config.from_preset(args.preset or DEFAULT_PRESET, vocab_size=vocab_size, **shape)


def report_end(result: dict, args, trainer, resume_from, out, ranks, say) -> int:
    """The last line of a run: why it ended and where its checkpoint is; the exit code."""
    saved = trainer.saved_to or out
    if result["stopped_by"] == "done":
        say(f"nothing left to train: {resume_from} is at step {result['step']}, the end of its schedule "
            f"(give a larger --steps to go on); nothing was written")
        return 0
    if result["stopped_by"] == "signal":
        again = ["--out", str(saved), "--resume", "auto"] if trainer.config.init_from else [args.vocab_file, str(saved)]
        command = shlex.join([*resume_launcher(ranks), "train", args.file, *again])  # quotes a glob
        say(f"stopped at step {result['step']}; saved {saved}. Resume with: {command}", file=sys.stderr)
        return 128 + result["signal"]
    ended = f" (the time budget, --minutes {trainer.config.minutes:g}, ran out)" if result["stopped_by"] == "time" else ""
    test = f"; test loss {result['test_loss']:.4f}, {result['test_bpb']:.4f} bits per byte" if "test_bpb" in result else ""
    if "val_bpb" in result:
        say(f"step {result['step']}: val loss {result['val_loss']:.4f}, {result['val_bpb']:.4f} bits per byte{test}; "
            f"saved {saved}{ended}")
    elif test:
        say(f"step {result['step']}: {test[2:]}; saved {saved}{ended}")
    else:
        say(f"step {result['step']}: saved {saved}{ended}")
    return 0


def resume_launcher(ranks) -> list[str]:
    """How this run was started: `python main.py`, the installed `gpt2-toolkit`, or under torchrun."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "main.py"
    if ranks.world_size > 1:
        return ["torchrun", f"--nproc_per_node={ranks.local_world_size}", "main.py"]
    return ["python", program] if program.endswith(".py") else [program]


# The model-shape flags of `train`: each one's argparse name, and (the flag, the GPT2Config field it sets).
SHAPE_FLAGS = {
    "context": ("--context", "block_size"), "dropout": ("--dropout", "dropout"),
    "attn_dropout": ("--attn-dropout", "attn_dropout"), "rope": ("--rope", "rope"),
    "n_layer": ("--n-layer", "n_layer"), "n_head": ("--n-head", "n_head"), "n_embd": ("--n-embd", "n_embd"),
    "norm": ("--norm", "norm"), "mlp": ("--mlp", "mlp"), "kv_heads": ("--kv-heads", "n_kv_head"),
    "qk_norm": ("--qk-norm", "qk_norm"), "tie_embeddings": ("--untied", "tie_embeddings"), "bias": ("--no-bias", "bias"),
}  # fmt: skip
# What `train --init-from` may set: no new weights needed.
FINE_TUNING_MAY_CHANGE = ("context", "dropout", "attn_dropout")
# A field whose None stands for a derived value is compared by that value (--kv-heads 12 is n_kv_head None).
COMPARED_AS = {"n_kv_head": "kv_heads"}
DEFAULT_PRESET = "small"


def check_continued_shape(args: argparse.Namespace, stored, tokenizer: bpe.BPE, path: str) -> None:
    """A continued run keeps its model: a shape flag given with a checkpoint must agree with it."""
    from gpt2_llm.config import PRESETS

    wanted = []  # (flag as given, field, value it asks for)
    given = {name: getattr(args, dest) for dest, (_, name) in SHAPE_FLAGS.items() if getattr(args, dest) is not None}
    if args.preset is not None:  # the preset's fields that no flag given with it replaces
        wanted += [(f"--preset {args.preset}", name, value) for name, value in PRESETS[args.preset].items()
                   if name != "vocab_size" and name not in given]
    for dest, (flag, name) in SHAPE_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:  # a switch (--rope, --untied) is shown alone, a value after its flag
            wanted.append((flag if isinstance(value, bool) else f"{flag} {value}", name, value))
    for flag, name, value in wanted:
        name = COMPARED_AS.get(name, name)
        if getattr(stored, name) != value:
            raise UserError(f"{flag} does not fit {path}, whose {name} is {getattr(stored, name)}: a continued run "
                            f"keeps its model (leave the flag out, or start afresh with another --out)")
    if args.vocab_size is not None and args.vocab_size != tokenizer.vocab_size:
        raise UserError(f"--vocab-size {args.vocab_size} does not fit {path}, whose tokenizer has "
                        f"{tokenizer.vocab_size} tokens: a continued run keeps its tokenizer")


def _silent(*args, **kwargs) -> None:
    """print() for the ranks other than 0 under torchrun: rank 0 speaks for the run."""


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


def text_bytes(files: list) -> int:
    return sum(os.path.getsize(f) for f in files)


def learn_run_vocab(args, files: list, vocab_size: int, train_config, block_size: int, say) -> bpe.BPE:
    """A tokenizer learned from the training text, saved as the vocab file once the text has proved
    long enough to train on (the token file it makes is the one training reads)."""
    from gpt2_llm import data

    say(f"{args.vocab_file} not found: training a tokenizer of {vocab_size} tokens on {args.file}", file=sys.stderr)
    part = ""  # what of the text it learned from, when not all of it
    if data.is_instruction_input(files):
        data.split_records(data.read_records(files)[1], train_config.val_fraction)  # "too few records": before any work
        tokenizer = data.records_tokenizer(files, vocab_size, workers=args.workers, progress=True)
    else:
        held_out = train_config.val_fraction + train_config.test_fraction
        learn_from = training_part(files, held_out)
        tokenizer = bpe.BPE.train(learn_from, vocab_size, progress=True, workers=args.workers)
        if learn_from is not files:  # it is the run's text all the same: a later run on it finds this vocab
            tokenizer.trained_on = {**tokenizer.trained_on, "sha256": bpe.text_digest(files),
                                    "text": bpe.files_name(files), "held_out": held_out}
            parts = "parts" if train_config.test_fraction else "part"
            part = f" (its first {1 - held_out:.0%}: the held-out {parts} taught it nothing)"
        tokens = data.load_tokens(files, tokenizer, progress=True, workers=train_config.workers)
        # "too short" fails here, before the save
        data.split_tokens(tokens, train_config.val_fraction, block_size, train_config.test_fraction)
    tokenizer.save(args.vocab_file)
    say(f"wrote {args.vocab_file}: {tokenizer.vocab_size} tokens learned from {args.file}{part}", file=sys.stderr)
    return tokenizer


HELD_OUT_CUT_BYTES = 512 * 2**20  # texts up to this size are cut in memory (see training_part)


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


def check_same_tokenizer(stored: bpe.BPE, given: bpe.BPE, vocab_path: str, checkpoint: str) -> None:
    if stored.hash != given.hash:
        raise UserError(f"{vocab_path} (hash {given.hash[:12]}, {given.vocab_size} tokens) is not the tokenizer "
                        f"{checkpoint} was trained with (hash {stored.hash[:12]}, {stored.vocab_size} tokens)")


def torch_seed(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def load_model(name: str, device: str, vocab_file: str | None = None):
    """A model (eval mode, on `device`), its tokenizer and its chat template (None for a model of
    text, or one whose template is not ours), through the one loader (see load_named)."""
    from gpt2_llm.instruct import template_from_checkpoint

    loaded = load_named(name, device, vocab_file, "give its vocab file after it")
    stored = loaded.chat_template
    template = template_from_checkpoint(stored, name) if stored and stored["name"] is not None else None
    return loaded.model, loaded.tokenizer, template


def load_named(name: str, device: str, vocab_file: str | None, how_to_give_vocab: str):
    """A model by name (a checkpoint, a transformers folder or a Hugging Face hub name) through the
    one loader, with a tokenizer. A vocab file given beside it must be the model's own tokenizer;
    it stands in for a missing one (how_to_give_vocab says how to give one, for that error)."""
    import dataclasses

    from gpt2_llm.hardware import pick_device
    from gpt2_llm.loading import load

    if name == DEFAULT_MODEL and not os.path.exists(name):
        raise UserError(f"model not found: {name} (train one with: python main.py train <text file>)")
    loaded = load(name, pick_device(device))
    tokenizer = loaded.tokenizer
    if vocab_file is not None:
        given = load_tokenizer(vocab_file)
        if tokenizer is not None:
            check_same_tokenizer(tokenizer, given, vocab_file, name)
        elif given.vocab_size > loaded.model.config.vocab_size:
            raise UserError(f"{vocab_file} has {given.vocab_size} tokens, more than the {loaded.model.config.vocab_size} "
                            f"rows of {name}'s embedding")
        tokenizer = given
    if tokenizer is None:
        raise UserError(f"{name} holds no tokenizer ({why_no_tokenizer(loaded)}): {how_to_give_vocab}")
    return dataclasses.replace(loaded, tokenizer=tokenizer)


def cmd_predict(args: argparse.Namespace) -> None:
    from gpt2_llm.gpt2 import check_sampling

    check_sampling(args.num_tokens, args.temperature, args.top_k, args.top_p)  # before the slow load
    take_model_from_the_prompt(args)
    model, tokenizer, template = load_model(args.model_file, args.device, args.vocab_file)
    if args.chat:
        return chat(model, tokenizer, template, args)
    prompts = iter(lambda: input("> "), None) if args.interactive else [args.prompt]
    try:
        for prompt in prompts:
            if prompt or not args.interactive:
                generate_text(model, tokenizer, prompt, args)
    except EOFError:
        print(file=sys.stderr)


def take_model_from_the_prompt(args: argparse.Namespace) -> None:
    """`predict --interactive MODEL` and `predict --chat MODEL`: the prompts come from the terminal,
    so a model file where the prompt would go is the model. `--chat "question" [N] [MODEL]` asks
    one question; `--chat` with no question reads them from the terminal."""
    from gpt2_llm.loading import looks_like_hub_name

    one_question = args.chat and not args.interactive and args.prompt
    if one_question and (not os.path.exists(args.prompt) or args.model_file != DEFAULT_MODEL):
        return
    if args.chat:
        args.interactive = True
    if not (args.interactive and args.prompt):
        return
    if not (os.path.exists(args.prompt) or looks_like_hub_name(args.prompt)):
        raise UserError(f"with --interactive the prompts are read from the terminal: {args.prompt!r} is not a "
                        f"model (write: predict --interactive [NUM_TOKENS] MODEL)")
    if args.model_file != DEFAULT_MODEL:
        raise UserError(f"with --interactive give the model once: {args.prompt} or {args.model_file}")
    args.model_file, args.prompt = args.prompt, ""


def generate_text(model, tokenizer: bpe.BPE, prompt: str, args: argparse.Namespace) -> None:
    """Print the prompt, then each new token as soon as it is made."""
    ids = tokenizer.encode(prompt, allowed_special="all")
    if not ids:
        raise UserError("the prompt is empty: give at least one character")
    context = model.config.block_size
    if len(ids) > context:
        print(f"note: the prompt has {len(ids)} tokens; only its last {context} (the context) are used", file=sys.stderr)
    sys.stdout.write(prompt)
    stream_tokens(model, tokenizer, ids, args)


def stream_tokens(model, tokenizer: bpe.BPE, ids: list[int], args: argparse.Namespace) -> str:
    """Print each new token as soon as it is made (whole characters only), up to num_tokens or the
    end of text (<|endoftext|>, which also ends an answer); return the text printed."""
    import codecs

    stop = tokenizer.special_tokens.get(bpe.ENDOFTEXT)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    sys.stdout.flush()
    pieces = []
    stream = model.generate_stream(ids, args.num_tokens, temperature=args.temperature, top_k=args.top_k,
                                   top_p=args.top_p, stop_token=stop, seed=args.seed, greedy=args.greedy)
    for token in stream:
        if token == stop:
            break
        pieces.append(decoder.decode(tokenizer.decode_bytes([token])))
        sys.stdout.write(pieces[-1])
        sys.stdout.flush()
    pieces.append(decoder.decode(b"", final=True))
    sys.stdout.write(pieces[-1] + "\n")
    sys.stdout.flush()
    return "".join(pieces)


def chat(model, tokenizer: bpe.BPE, template, args: argparse.Namespace) -> None:
    """predict --chat: each question in the model's template, the answer printed as it comes and
    ended by the end-of-turn token. The chat template keeps the conversation (its oldest turns
    leave when it outgrows the context); Alpaca's answers each instruction on its own."""
    from gpt2_llm.instruct import fit_conversation

    if template is None:
        raise UserError(f"{args.model_file} was not trained on instruction records, so it has no chat template: "
                        f"use predict without --chat (or train it on a .jsonl file of instructions)")
    history: list[dict] = []
    questions = iter(lambda: input("> "), None) if args.interactive else [args.prompt]
    room = model.config.block_size - min(args.num_tokens, model.config.block_size // 2)  # the rest is the answer's
    try:
        for question in questions:
            if not question.strip():
                if args.interactive:
                    continue
                raise UserError("the question is empty: give at least one character")
            messages, ids, dropped = fit_conversation(template, template.next_prompt(history, question), tokenizer, room)
            if dropped:
                print(f"note: the {dropped} oldest messages no longer fit the context and were left out", file=sys.stderr)
            if len(ids) > room:
                print(f"note: the question has {len(ids)} tokens with its template; only its last "
                      f"{model.config.block_size} (the context) are read", file=sys.stderr)
            answer = stream_tokens(model, tokenizer, ids, args)
            history = [*messages, {"role": "assistant", "content": answer}]
    except EOFError:
        print(file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> None:
    from gpt2_llm.data import is_instruction_input, load_tokens, validation_windows
    from gpt2_llm.hardware import pick_dtype
    from gpt2_llm.trainer import evaluate

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    files = text_inputs(args.file, "evaluate on")
    model, tokenizer, _ = load_model(args.model_file, args.device)
    if is_instruction_input(files):
        windows, num_bytes, what = records_eval_set(files, model, tokenizer)
    else:
        tokens = load_tokens(files, tokenizer)
        if len(tokens) < 2:
            raise UserError(f"{args.file} is too short to evaluate: it encodes to {len(tokens)} token")
        windows, num_bytes = validation_windows(tokens, min(model.config.block_size, len(tokens) - 1), tokenizer)
        what = f"{windows[:, 1:].numel():,} tokens"
    device = next(model.parameters()).device
    r = evaluate(model, windows, num_bytes, args.batch_size, pick_dtype(args.dtype, device))
    print(f"{args.file}: {what}, loss {r['val_loss']:.4f}, perplexity {r['val_ppl']:.2f}, {r['val_bpb']:.4f} bits per byte")


def records_eval_set(files: list, model, tokenizer: bpe.BPE):
    """eval on instruction records: the loss on their responses, each record in its own template."""
    from gpt2_llm.data import encode_examples, instruction_eval_set, read_records
    from gpt2_llm.instruct import IGNORE_INDEX, end_of_turn_id

    template, conversations = read_records(files)
    examples, cut = encode_examples(conversations, template, tokenizer, model.config.block_size)
    (x, y), num_bytes = instruction_eval_set(examples, tokenizer, end_of_turn_id(tokenizer))
    counted = int((y != IGNORE_INDEX).sum())
    cut_note = f", {cut:,} cut to the context" if cut else ""
    return (x, y), num_bytes, f"{len(conversations):,} {template.name} records ({counted:,} response tokens{cut_note})"


def cmd_export(args: argparse.Namespace) -> None:
    """Write a model, with its tokenizer, as a folder transformers loads as it is."""
    from gpt2_llm.export import HF_CLASSES, check_out_dir, export_folder, export_problem, export_type

    check_out_dir(args.out_dir, args.overwrite)  # before the slow load
    loaded = load_named(args.model, "cpu", args.vocab_file, "give its vocab file with --vocab-file")
    problem = export_problem(loaded.model.config)
    if problem:
        raise UserError(f"cannot export {args.model}: {problem}")
    files = export_folder(loaded.model, loaded.tokenizer, args.out_dir, loaded.chat_template, args.overwrite)
    print(f"wrote {args.out_dir}: {', '.join(files)} ({HF_CLASSES[export_type(loaded.model.config)]}, "
          f"{loaded.model.num_parameters():,} parameters, "
          f"{loaded.tokenizer.vocab_size:,} tokens); load it with transformers' "
          f"AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over HTTP until SIGTERM or Ctrl-C (gpt2_llm/serve)."""
    from gpt2_llm.loading import looks_like_hub_name
    from gpt2_llm.serve.server import check_options, serve

    check_options(args.host, args.port, args.max_batch, args.max_queue, args.request_timeout)
    if args.model == DEFAULT_MODEL and not os.path.exists(args.model):
        raise UserError(f"model not found: {args.model} (train one with: python main.py train <text file>)")
    if not os.path.exists(args.model) and not looks_like_hub_name(args.model):
        raise UserError(f"model not found: {args.model} (no such checkpoint file or model folder)")
    api_key = args.api_key if args.api_key is not None else os.environ.get("GPT2_API_KEY") or None
    if api_key is not None and not api_key.strip():
        raise UserError("--api-key is empty")
    say = functools.partial(print, file=sys.stderr, flush=True)
    return serve(lambda: load_named(args.model, args.device, args.vocab_file, "give its vocab file with --vocab-file"),
                 host=args.host, port=args.port, api_key=api_key, cors_origins=tuple(args.cors_origin or ()),
                 max_batch=args.max_batch, max_queue=args.max_queue, request_timeout=args.request_timeout, say=say)


def cmd_plot(args: argparse.Namespace) -> None:
    from gpt2_llm.plot import plot_runs

    plot_runs(args.metrics, args.output, labels=args.label)
    print(f"wrote {args.output}")


# ---- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A GPT-2 toolkit: byte-level BPE tokenizer, training, generation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("tokenize", help="train a BPE tokenizer on a text file", description="Train a byte-level BPE tokenizer on UTF-8 text and write its vocab file, or write the one a checkpoint holds.")
    p.add_argument("file", nargs="?", default=None, help=TEXT_INPUT_HELP % "learn from")
    p.add_argument("--from-checkpoint", metavar="MODEL", default=None, help="write the tokenizer of a model (a checkpoint, a transformers folder or a hub name) instead of learning one (no text then)")
    p.add_argument("--vocab-size", type=int, default=None, help="tokens in all: 256 bytes + merges + special tokens (default: chosen from the file size, see bpe.recommended_vocab_size)")
    # No default here, so that a --pattern given with --from-checkpoint can be refused; BPE.train has it.
    p.add_argument("--pattern", choices=sorted(bpe.PATTERNS), default=None, help="pre-tokenization regex (default: gpt2)")
    p.add_argument("-o", "--output", default=DEFAULT_VOCAB, help=f"vocab file to write (default: {DEFAULT_VOCAB})")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    p.add_argument("--workers", type=int, default=None, help="processes that pre-tokenize the text (default: one per core for texts over 8 MB)")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("encode", help="text -> JSON list of token ids", description="Encode text and print the JSON list of token ids.")
    p.add_argument("text", help="the text, or - to read standard input")
    p.add_argument("vocab_file", nargs="?", default=DEFAULT_VOCAB, help=f"vocab file, or a folder with GPT-2's encoder.json and vocab.bpe (default: {DEFAULT_VOCAB})")
    p.add_argument("--allow-special", action="store_true", help="encode special-token strings such as <|endoftext|> as their own ids (by default such text is refused)")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="JSON list of token ids -> text", description="Decode a JSON list of token ids and print the text.")
    p.add_argument("ids", help="JSON list of ids such as [15496, 995], or - to read standard input")
    p.add_argument("vocab_file", nargs="?", default=DEFAULT_VOCAB, help=f"vocab file, or a folder with GPT-2's encoder.json and vocab.bpe (default: {DEFAULT_VOCAB})")
    p.add_argument("--pieces", action="store_true", help="print each token's text as a JSON list instead of the joined text")
    p.set_defaults(func=cmd_decode)

    add_train_parser(sub)

    p = sub.add_parser("predict", help="generate text from a prompt", description="Continue a prompt with a trained model, printing tokens as they are made.")
    p.add_argument("prompt", nargs="?", default="", help="the text to continue (with --interactive: asked for in a loop)")
    p.add_argument("num_tokens", type=int, nargs="?", default=100, help="how many tokens to generate (default 100)")
    p.add_argument("model_file", nargs="?", default=DEFAULT_MODEL, help=f"{MODEL_HELP} (default: {DEFAULT_MODEL}); it holds its own tokenizer")
    p.add_argument("vocab_file", nargs="?", default=None, help="optional: a vocab file that must match the model's tokenizer (or stands in for a missing one)")
    p.add_argument("--temperature", type=float, default=0.8, help="randomness: 0 is greedy, 1 samples the model's distribution (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="sample only from the k most likely tokens (default 40)")
    p.add_argument("--top-p", type=float, default=None, help="sample only from the smallest set of tokens whose probability reaches p, in (0, 1]")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (same as --temperature 0)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling: the same seed gives the same text")
    p.add_argument("--interactive", action="store_true", help="read prompts from the terminal until end of input")
    p.add_argument("--chat", action="store_true", help="a model trained on instruction records: put each prompt in its template and print the answer alone, up to its end of turn (predict --chat MODEL: a conversation on the terminal)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval", help="loss, perplexity and bits per byte of a model on a text", description="Evaluate a trained model on a text file.")
    p.add_argument("file", help=TEXT_INPUT_HELP % "evaluate on")
    p.add_argument("model_file", nargs="?", default=DEFAULT_MODEL, help=f"{MODEL_HELP} (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (default auto)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per forward pass (default 16)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="write a model as a transformers folder", description=(
        "Write a model and its tokenizer as a folder that transformers loads as it is "
        "(AutoModelForCausalLM, AutoTokenizer): GPT-2's shape as GPT2LMHeadModel, Llama's (--norm rmsnorm "
        "--mlp swiglu --rope --no-bias, any --kv-heads, tied or --untied) as LlamaForCausalLM; config.json, model.safetensors, generation_config.json, "
        "tokenizer.json, tokenizer_config.json, special_tokens_map.json, and vocab.json + merges.txt "
        "for a tokenizer with GPT-2's pattern."))
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("out_dir", help="the folder to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder at out_dir")
    p.add_argument("--vocab-file", default=None, help="the tokenizer of a model that holds none (a checkpoint saved by GPT2.save)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("plot", help="draw the loss curves of training runs", description=(
        "Draw training and validation loss against tokens seen (and the learning rate) from the "
        "metrics logs that train writes beside each checkpoint (NAME.metrics.jsonl); several logs are compared."))
    p.add_argument("metrics", nargs="+", help="metrics logs (NAME.metrics.jsonl)")
    p.add_argument("-o", "--output", default="loss.png", help="PNG file to write (default: loss.png)")
    p.add_argument("--label", action="append", default=None, help="a run's name in the legend, once per log (default: file names)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI's API, and a page)", description=(
        "Serve a model over HTTP: OpenAI's API (/v1/completions, /v1/chat/completions, /v1/models; the "
        "official openai client works as it is), /tokenize, /detokenize, /metrics, /health, and a page at /. "
        "Requests are decoded together in one batch (continuous batching). Stop with Ctrl-C or SIGTERM."))
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"{MODEL_HELP} (default: {DEFAULT_MODEL})")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8000, help="the port (default 8000)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every API route (default: $GPT2_API_KEY if set, else no key)")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN", help="let pages from ORIGIN (such as http://localhost:3000) call the API; repeat for several (default: none)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together at most (default 16)")
    p.add_argument("--max-queue", type=int, default=64, help="sequences waiting for a place in the batch at most; more get 429 (default 64)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds a request may take, queue included; then it ends as if max_tokens were reached (default 600)")
    p.add_argument("--vocab-file", default=None, help="the tokenizer of a model that holds none (a checkpoint saved by GPT2.save)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    p.set_defaults(func=cmd_serve)
    return parser


def add_train_parser(sub) -> None:
    from gpt2_llm.config import MLPS, NORMS, PRESETS, TrainConfig

    p = sub.add_parser("train", help="train a GPT-2 model on a text file", description=(
        "Train a GPT-2 model on UTF-8 text. The vocab file is made from the text if it does not exist; "
        "a checkpoint given as the third argument (or --resume auto) is continued."))
    p.add_argument("file", help=TEXT_INPUT_HELP % "train on")
    p.add_argument("vocab_file", nargs="?", default=None, help=f"vocab file, created from the text if missing (default: {DEFAULT_VOCAB}); with --init-from, if given, it must be that model's tokenizer")
    p.add_argument("checkpoint", nargs="?", default=None, help="a checkpoint to continue (written back unless --out says otherwise)")
    p.add_argument("--out", default=None, help=f"checkpoint to write (default: the continued checkpoint, else {DEFAULT_MODEL}); the best one is kept beside it as NAME.best.pt")
    p.add_argument("--resume", choices=["auto", "never"], default="never", help="auto: continue from --out when a checkpoint is there")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out exists")
    p.add_argument("--preset", default=None, choices=list(PRESETS), help=f"model shape (default: {DEFAULT_PRESET})")
    p.add_argument("--context", type=int, default=None, help="context length in tokens (default: the preset's)")
    p.add_argument("--dropout", type=float, default=None, help="dropout rate (default: the preset's)")
    p.add_argument("--attn-dropout", type=float, default=None, help="dropout on attention weights alone (default: as --dropout)")
    p.add_argument("--rope", action="store_true", default=None, help="rotary position embeddings instead of learned positions")
    p.add_argument("--n-layer", type=int, default=None, help="decoder blocks (default: the preset's)")
    p.add_argument("--n-head", type=int, default=None, help="attention heads per block (default: the preset's)")
    p.add_argument("--n-embd", type=int, default=None, help="width of the residual stream, a multiple of --n-head (default: the preset's)")
    # The architecture options (README, "Architecture options"); left out, the model is GPT-2's.
    p.add_argument("--norm", choices=NORMS, default=None, help="layernorm (GPT-2's, the default) or rmsnorm")
    p.add_argument("--mlp", choices=MLPS, default=None, help="gelu (GPT-2's, the default), swiglu (three matrices, hidden width the multiple of 64 nearest 8/3 x n_embd: GPT-2's parameter count) or relu2")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads, a divisor of the heads: grouped-query attention (1: multi-query; default: one per head, GPT-2's)")
    p.add_argument("--qk-norm", action="store_true", default=None, help="RMS-normalise each head's queries and keys before their product")
    p.add_argument("--untied", dest="tie_embeddings", action="store_false", default=None, help="an output head with its own matrix (GPT-2's is the token embedding)")
    p.add_argument("--no-bias", dest="bias", action="store_false", default=None, help="no biases in the linear and norm layers (GPT-2 has them)")
    p.add_argument("--vocab-size", type=int, default=None, help="size of a tokenizer made from the text (default: recommended for its size)")
    for f in fields(TrainConfig):  # one flag per field: the defaults live in TrainConfig alone
        flag = "--" + f.name.replace("_", "-")
        kind = typing.get_args(f.type)[0] if typing.get_args(f.type) else f.type  # int | None -> int
        if kind is bool:  # a setting that is on by default is turned off with --no-NAME
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            p.add_argument(flag, action=action, default=None, help=f.metadata["help"])
        else:
            text = f.metadata["help"]  # a help that explains its default (or has none) is left as it is
            shown = text if "default" in text or f.default is None else f"{text} (default: {f.default})"
            p.add_argument(flag, type=kind, default=None, help=shown)
    p.set_defaults(func=cmd_train)


def main(argv: list[str] | None = None, *, exiting: bool = False) -> int:
    """Run one command; its exit status. exiting: the process ends when this returns (python
    main.py ...), so Ctrl-C is ignored once the command is over (see the end)."""
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # UTF-8 output whatever the locale
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8", errors="replace")
    try:
        if args.func not in (cmd_encode, cmd_decode, cmd_plot):  # every other command loads torch
            with ctrl_c_deferred():
                import torch  # noqa: F401
        return args.func(args) or 0
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as a killed pipe writer would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except UserError as e:  # bad input (a value, a file, a checkpoint, a diverging run); anything else is a bug
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if exiting:
            # All that is left is the interpreter's teardown, which Python runs with Ctrl-C's default
            # action restored: a Ctrl-C landing there (while it unloads every module, torch too) would kill the
            # finished process with no message and a status of -2 in place of the command's own.
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def run() -> int:
    """The command line: `python main.py ...` and the installed `gpt2-toolkit` script, whose
    process ends when the command does."""
    return main(exiting=True)


if __name__ == "__main__":
    sys.exit(run())
