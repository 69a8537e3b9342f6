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
import signal
import sys
import threading
import typing

try:
    import basics
    import bpe
    from gpt2_llm.config import DEFAULT_MODEL, DEFAULT_VOCAB, GPT2Config, TrainConfig, flag_fields, flag_of
except KeyboardInterrupt:  # Ctrl-C as the tool starts: the same one line as at any later moment
    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None

MODEL_HELP = ("a model: a checkpoint file, a transformers model folder, or a Hugging Face hub name such as "
              "gpt2 or openai-community/gpt2 (fetched once into the Hugging Face cache)")
TEXT_INPUT_HELP = ("UTF-8 text to %s: a file, a folder (all its .txt files, joined with <|endoftext|> between "
                   "them), or a quoted glob pattern such as 'data/*.txt'")


UserError = basics.UserError  # any error the user can fix: one line, exit code 1 (see main())
PREDICT_OPTIONS = ("chat", "device", "temperature", "top_k", "top_p", "greedy", "seed", "presence_penalty", "frequency_penalty")


# ---- the commands: each calls the package's function for it and prints --------------------------


def cmd_tokenize(args: argparse.Namespace) -> None:
    from gpt2_llm.vocab import tokenize

    tok, made = tokenize(args.file, output=args.output, from_checkpoint=args.from_checkpoint,
                         vocab_size=args.vocab_size, pattern=args.pattern, workers=args.workers,
                         overwrite=args.overwrite)  # fmt: skip
    print(f"wrote {args.output}: {tok.vocab_size} tokens ({len(tok.merges)} merges), {made}, hash {tok.hash[:16]}")


def cmd_encode(args: argparse.Namespace) -> None:
    from gpt2_llm.vocab import encode, load_vocab

    tokenizer = load_vocab(args.vocab_file)  # a missing vocab is said before standard input is read
    print(json.dumps(encode(read_arg_or_stdin(args.text), tokenizer, args.allow_special)))


def cmd_decode(args: argparse.Namespace) -> None:
    from gpt2_llm.vocab import decode, load_vocab

    tokenizer = load_vocab(args.vocab_file)
    text = decode(parse_ids(read_arg_or_stdin(args.ids)), tokenizer, args.pieces)
    print(json.dumps(text, ensure_ascii=False) if args.pieces else text)


def cmd_train(args: argparse.Namespace) -> int:
    from gpt2_llm.runs import train

    options = {f.name: getattr(args, f.name) for cls in (GPT2Config, TrainConfig) for f in flag_fields(cls)}
    run = train(args.file, args.vocab_file, args.checkpoint, out=args.out, resume=args.resume,
                overwrite=args.overwrite, preset=args.preset, vocab_size=args.vocab_size, plan_only=args.plan_only,
                **options)
    if args.plan_only:
        return 0
    return 128 + run.result["signal"] if run.result["stopped_by"] == "signal" else 0


def cmd_predict(args: argparse.Namespace) -> None:
    from gpt2_llm.predict import file_lines, predict, read_positionals, terminal_lines

    given = [a for a in (args.prompt, args.num_tokens, args.model_file, args.vocab_file) if a is not None]
    at = read_positionals(given, args.chat, args.interactive, args.file is not None)
    prompts = file_lines(args.file) if args.file else terminal_lines() if at.interactive else at.prompt
    predict(prompts, at.num_tokens, at.model, at.vocab_file, **{name: getattr(args, name) for name in PREDICT_OPTIONS},
            logit_bias=dict(args.logit_bias or ()), as_json=args.file is not None)


def token_bias(item: str) -> tuple[int, float]:  # --logit-bias ID=BIAS
    token, _, bias = item.partition("=")
    try:
        return int(token), float(bias)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID=BIAS, such as 50256=-100; got {item!r}") from None


def cmd_eval(args: argparse.Namespace) -> None:
    from gpt2_llm.evaluation import evaluate_text

    r = evaluate_text(args.file, args.model_file, batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    if "accuracy" in r:  # a classifier
        from gpt2_llm.evaluation import classification_report

        return print("\n".join(classification_report(r)))
    print(f"{args.file}: {r['scored']}, loss {r['val_loss']:.4f}, perplexity {r['val_ppl']:.2f}, "
          f"{r['val_bpb']:.4f} bits per byte")


def cmd_export(args: argparse.Namespace) -> None:
    """Write a model, with its tokenizer, as a folder transformers loads as it is."""
    from gpt2_llm.export import check_out_dir, export_folder, hf_class_names
    from gpt2_llm.loading import load_with_tokenizer
    from gpt2_llm.lora import export_with_adapter, merged_copy

    if not args.adapter:
        check_out_dir(args.out_dir, args.overwrite)  # before the slow load
    loaded = load_with_tokenizer(args.model, "cpu", args.vocab_file, "give its vocab file with --vocab-file")
    model, tokenizer = loaded.model if args.adapter else merged_copy(loaded.model), loaded.tokenizer
    write = export_with_adapter if args.adapter else export_folder
    files = write(model, tokenizer, args.out_dir, loaded.chat_template, args.overwrite, name=args.model)
    kind, auto = hf_class_names(model)
    how = f"peft.PeftModel.from_pretrained({auto}.from_pretrained('{args.out_dir}/base'), '{args.out_dir}/adapter')" \
        if args.adapter else f"transformers' {auto}.from_pretrained"
    print(f"wrote {args.out_dir}: {', '.join(files)} ({kind}, {model.num_parameters():,} parameters, {tokenizer.vocab_size:,} "
          f"tokens); load it with {how} and AutoTokenizer.from_pretrained")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a model over HTTP until SIGTERM or Ctrl-C (gpt2_llm/serve)."""
    from gpt2_llm.loading import check_model_name, load_with_tokenizer
    from gpt2_llm.serve.server import api_key_of, check_options, serve

    check_options(args.host, args.port, args.max_batch, args.max_queue, args.request_timeout, args.max_body, args.prefix_cache_mb)
    check_model_name(args.model)  # before the server starts: a name that names nothing is one line
    api_key = api_key_of(args.api_key, args.api_key_file, os.environ.get("GPT2_API_KEY"))
    load = functools.partial(load_with_tokenizer, args.model, args.device, args.vocab_file,
                             "give its vocab file with --vocab-file")
    return serve(load, host=args.host, port=args.port, api_key=api_key, cors_origins=tuple(args.cors_origin or ()),
                 max_batch=args.max_batch, max_queue=args.max_queue, request_timeout=args.request_timeout, max_body=args.max_body,
                 batch_invariant=args.batch_invariant, prefix_cache_mb=args.prefix_cache_mb, say=functools.partial(print, file=sys.stderr, flush=True))


def cmd_plot(args: argparse.Namespace) -> None:
    from gpt2_llm.plot import plot_runs

    plot_runs(args.metrics, args.output, labels=args.label)
    print(f"wrote {args.output}")


# ---- reading the arguments -----------------------------------------------------------------------


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


# ---- Ctrl-C --------------------------------------------------------------------------------------


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
    p.add_argument("prompt", nargs="?", default=None, help="the text to continue, or to classify (none with --interactive or --file)")
    p.add_argument("num_tokens", nargs="?", default=None, help="how many tokens to generate (default 100); a name here that is not a number is the model")
    p.add_argument("model_file", nargs="?", default=None, help=f"{MODEL_HELP} (default: {DEFAULT_MODEL}); it holds its own tokenizer")
    p.add_argument("vocab_file", nargs="?", default=None, help="optional: a vocab file that must match the model's tokenizer (or stands in for a missing one)")
    p.add_argument("--temperature", type=float, default=0.8, help="randomness: 0 is greedy, 1 samples the model's distribution (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="sample only from the k most likely tokens (default 40)")
    p.add_argument("--top-p", type=float, default=None, help="sample only from the smallest set of tokens whose probability reaches p, in (0, 1]")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (same as --temperature 0)")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampling: the same seed gives the same text")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="in [-2, 2]: subtracted once from the logit of each token already made (OpenAI's)")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="in [-2, 2]: subtracted from a token's logit once per time it was made (OpenAI's)")
    p.add_argument("--logit-bias", action="append", type=token_bias, metavar="ID=BIAS", help="add BIAS (-100 to 100) to token ID's logit; repeat for several")
    p.add_argument("--interactive", action="store_true", help="read prompts from the terminal until end of input")
    p.add_argument("--file", default=None, metavar="PATH", help="one prompt (or text to classify) per line of PATH (- for standard input); one JSON line out per line in")
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
        "(AutoModelForCausalLM, AutoModelForSequenceClassification for a classifier, AutoTokenizer): GPT-2's shape as GPT2LMHeadModel; with --norm rmsnorm --rope "
        "--no-bias (any --kv-heads, tied or --untied), --mlp swiglu as LlamaForCausalLM, --mlp swiglu --qk-norm as "
        "Qwen3ForCausalLM, --mlp relu2 --qk-norm as ApertusForCausalLM; config.json, model.safetensors, generation_config.json, "
        "tokenizer.json, tokenizer_config.json, special_tokens_map.json, and vocab.json + merges.txt "
        "for a tokenizer with GPT-2's pattern."))
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("out_dir", help="the folder to write (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder at out_dir")
    p.add_argument("--vocab-file", default=None, help="the tokenizer of a model that holds none (a checkpoint saved by GPT2.save)")
    p.add_argument("--adapter", action="store_true", help="a model trained with --lora: the base in OUT_DIR/base and the adapters in PEFT's format in OUT_DIR/adapter (default: merged into one model)")
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
    p.add_argument("--api-key-file", default=None, metavar="PATH", help="require 'Authorization: Bearer KEY' on every API route, KEY read from PATH (default: $GPT2_API_KEY if set, else no key)")
    p.add_argument("--api-key", default=None, help="the key itself (visible to every user of the machine in ps: prefer --api-key-file or $GPT2_API_KEY)")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN", help="let pages from ORIGIN (such as http://localhost:3000) call the API; repeat for several (default: none)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together at most (default 16)")
    p.add_argument("--batch-invariant", action="store_true", help="every step multiplies the whole batch, so that greedy text does not depend on the other requests (slower for few clients)")
    p.add_argument("--max-body", type=int, default=4 * 2**20, metavar="BYTES", help="largest request body, refused with 413 before it is read (default 4 MiB)")
    p.add_argument("--prefix-cache-mb", type=float, default=256, help="memory for the keys of earlier prompts, reused by requests that begin alike, such as a chat's next turn (default 256; 0: off)")
    p.add_argument("--max-queue", type=int, default=64, help="sequences waiting for a place in the batch at most; more get 429 (default 64)")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds a request may take, queue included; then it ends as if max_tokens were reached (default 600)")
    p.add_argument("--vocab-file", default=None, help="the tokenizer of a model that holds none (a checkpoint saved by GPT2.save)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    p.set_defaults(func=cmd_serve)
    return parser


def add_train_parser(sub) -> None:
    from gpt2_llm.config import PRESETS
    from gpt2_llm.plan import PLANNED

    p = sub.add_parser("train", help="train a GPT-2 model on a text file", description=(
        "Train a GPT-2 model on UTF-8 text. The vocab file is made from the text if it does not exist; "
        "a checkpoint given as the third argument (or --resume auto) is continued."))
    p.add_argument("file", help=TEXT_INPUT_HELP % "train on")
    p.add_argument("vocab_file", nargs="?", default=None, help=f"vocab file, created from the text if missing (default: {DEFAULT_VOCAB}); with --init-from, if given, it must be that model's tokenizer")
    p.add_argument("checkpoint", nargs="?", default=None, help="a checkpoint to continue (written back unless --out says otherwise)")
    p.add_argument("--out", default=None, help=f"checkpoint to write (default: the continued checkpoint, else {DEFAULT_MODEL}); the best one is kept beside it as NAME.best.pt")
    p.add_argument("--resume", choices=["auto", "never"], default="never", help="auto: continue from --out when a checkpoint is there")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --out exists")
    p.add_argument("--plan-only", action="store_true", help="print the plan of a new run (the model, the schedule, why) and stop")
    p.add_argument("--preset", default=None, choices=list(PRESETS), help="a named model (GPT-2's architecture at the preset's size) in place of the planned one")
    # The model's shape and architecture options: left out, the plan's (gpt2_llm/plan.py), or the preset's.
    add_config_flags(p, GPT2Config, lambda f: "planned")
    p.add_argument("--vocab-size", type=int, default=None, help="size of a tokenizer made from the text (default: recommended for its size)")
    add_config_flags(p, TrainConfig, lambda f: "planned" if f.name in PLANNED else f.default)
    p.set_defaults(func=cmd_train)


def add_config_flags(p: argparse.ArgumentParser, cls, shown_default: typing.Callable) -> None:
    """One flag per field of a config dataclass that has a help text (config._opt): its name, type,
    choices and help come from the field, so the defaults live in the dataclass alone. Each flag's
    own default is None, so that a flag left out is told from one given."""
    for f in flag_fields(cls):
        kind = typing.get_args(f.type)[0] if typing.get_args(f.type) else f.type  # int | None -> int
        text = f.metadata["help"]
        if kind is bool:  # a switch turns on or off (--rope, --no-rope); a named flag sets the value that is not the default
            both_ways = "flag" not in f.metadata
            action = argparse.BooleanOptionalAction if both_ways else "store_false" if f.default else "store_true"
            p.add_argument(flag_of(f), dest=f.name, action=action, default=None, help=text)
        else:  # a help that explains its default (or has none) is left as it is
            shown = text if "default" in text or shown_default(f) is None else f"{text} (default: {shown_default(f)})"
            choices = f.metadata.get("choices")  # shown as {a,b}; else the flag's name stands for its value
            metavar = None if choices else flag_of(f)[2:].upper().replace("-", "_")
            p.add_argument(flag_of(f), dest=f.name, type=kind, choices=choices, metavar=metavar, default=None, help=shown)


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
