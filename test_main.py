"""End-to-end tests of the command line: main.main(argv) run in this process as `python main.py`
would run it (run), and a real process where the process itself is what is tested: its exit on a
signal, a closed pipe, the environment it starts with, the installed command (run_process)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import bpe
import main
from gpt2_llm.tests.conftest import hub_offline, last_logged_step, run_main, some_text

ROOT = Path(__file__).resolve().parent


def run(*args, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python main.py ARGS`, run in this process (see run_main): stdout and stderr as bytes."""
    return run_main(*args, stdin=stdin, cwd=cwd)


def run_process(*args, stdin: bytes | None = None, cwd: Path | None = None, env: dict | None = None) \
        -> subprocess.CompletedProcess:
    """`python main.py ARGS` in a process of its own (standard input empty unless given)."""
    source = {"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], **source, capture_output=True,
                          cwd=cwd or ROOT, env=env, timeout=120)


def one_line_error(result: subprocess.CompletedProcess, code: int = 1) -> str:
    """Assert the user-error contract: exit code, no traceback, and stderr ending with one line
    "error: ...". Only `train` prints progress lines before it (what it was doing when it failed)."""
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error") for line in lines) == 1, err
    if result.args[2] != "train":
        assert len(lines) == 1, err
    return lines[-1]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "vocab.txt"
    path.with_name("text.txt").write_text(some_text(200_000), encoding="utf-8")
    result = run("tokenize", path.with_name("text.txt"), "--vocab-size", 1000, "-o", path)
    assert result.returncode == 0, result.stderr.decode()
    assert b"wrote" in result.stdout
    return path


def test_tokenize_encode_decode_round_trip(vocab):
    text = "To be, or not to be: that is the question.\r\n\tünïcödé 😀"
    enc = run("encode", text, vocab)
    assert enc.returncode == 0, enc.stderr
    ids = json.loads(enc.stdout)
    assert all(isinstance(i, int) for i in ids) and len(ids) < len(text.encode())
    dec = run("decode", json.dumps(ids), vocab)
    assert dec.returncode == 0
    assert dec.stdout.decode("utf-8") == text + "\n"


def test_stdin_and_pieces(vocab):
    text = "First Citizen:\nBefore we proceed"
    ids = json.loads(run("encode", "-", vocab, stdin=text.encode()).stdout)
    pieces = json.loads(run("decode", "--pieces", json.dumps(ids), vocab).stdout)
    assert "".join(pieces) == text and len(pieces) == len(ids)
    again = run("decode", "-", vocab, stdin=json.dumps(ids).encode())
    assert again.stdout.decode() == text + "\n"


def test_default_vocab_file_name(vocab, tmp_path):
    (tmp_path / "vocab.txt").write_bytes(vocab.read_bytes())
    ids = json.loads(run("encode", "hello", cwd=tmp_path).stdout)
    assert run("decode", json.dumps(ids), cwd=tmp_path).stdout == b"hello\n"
    assert main.DEFAULT_VOCAB == "vocab.txt"


def test_tokenize_default_output_and_recommended_size(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(some_text(50_000), encoding="utf-8")
    result = run("tokenize", corpus, cwd=tmp_path)
    assert result.returncode == 0
    assert b"vocab size 512: recommended for 50,000 bytes" in result.stdout
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").startswith("bpe-vocab 1\n")


def test_gpt2_folder_as_vocab(data_dir):
    result = run("encode", "Hello world", data_dir / "gpt2")
    assert json.loads(result.stdout) == [15496, 995]


def test_special_tokens(vocab):
    refused = run("encode", "a<|endoftext|>b", vocab)
    assert "--allow-special" in one_line_error(refused)
    ids = json.loads(run("encode", "--allow-special", "a<|endoftext|>b", vocab).stdout)
    assert 999 in ids  # the special token's id: the last of the 1000


def test_main_can_be_called_directly(vocab, capsys):
    assert main.main(["encode", "hi there", str(vocab)]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert main.main(["decode", json.dumps(ids), str(vocab)]) == 0
    assert capsys.readouterr().out == "hi there\n"


@pytest.mark.parametrize("command", ["tokenize", "encode", "decode"])
def test_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and b"usage:" in result.stdout


# ---- every bad input: one clear line, exit 1 (2 for usage) ----------------------------------------


def test_missing_file(tmp_path):
    assert "file not found" in one_line_error(run("tokenize", tmp_path / "nope.txt"))


def test_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    assert "is empty" in one_line_error(run("tokenize", tmp_path / "empty.txt"))


def test_folders_and_globs_without_text(tmp_path):
    (tmp_path / "notes.md").write_text("no .txt file here")
    assert "is a directory with no .txt files" in one_line_error(run("tokenize", tmp_path))
    assert "no file matches" in one_line_error(run("tokenize", tmp_path / "*.txt"))
    (tmp_path / "a.txt").write_bytes(b"")
    (tmp_path / "b.txt").write_bytes(b"")
    assert "is empty" in one_line_error(run("tokenize", tmp_path))


def test_non_utf8_file_in_a_folder_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("good text " * 100, encoding="utf-8")
    (tmp_path / "b.txt").write_bytes("naïve café".encode("latin-1"))
    line = one_line_error(run("tokenize", tmp_path, "-o", tmp_path / "v.vocab"))
    assert f"{tmp_path / 'b.txt'} is not UTF-8 text: invalid byte 0xef at byte offset 2" in line


def test_tokenize_a_folder_or_a_glob_as_their_joined_text(tmp_path):
    text = some_text(100_000)
    files = {"plays/0.txt": text[:40_000], "plays/act/1.txt": text[40_000:70_000], "plays/act/2.txt": text[70_000:100_000]}
    for name, part in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(part, encoding="utf-8")
    (tmp_path / "joined.txt").write_text("<|endoftext|>".join(files.values()), encoding="utf-8")
    for name, source, *flags in [("joined", "joined.txt"), ("folder", "plays"), ("glob", "plays/**/*.txt", "--workers", 2)]:
        result = run("tokenize", source, "--vocab-size", 400, "-o", f"{name}.vocab", *flags, cwd=tmp_path)
        assert result.returncode == 0, result.stderr.decode()
    joined = bpe.BPE.load(tmp_path / "joined.vocab")
    for name in ("folder", "glob"):  # the same tokens and merges; only the record of the text differs
        made = bpe.BPE.load(tmp_path / f"{name}.vocab")
        assert (made.hash, made.merges) == (joined.hash, joined.merges)
        assert made.trained_on["text"] != joined.trained_on["text"]


def test_a_vocab_file_saved_in_the_text_folder_is_not_read_as_text(tmp_path):
    (tmp_path / "books").mkdir()
    text = some_text(50_000)
    (tmp_path / "books" / "plays.txt").write_text(text[:50_000], encoding="utf-8")
    for name in ["v1.txt", "v2.txt"]:
        result = run("tokenize", "books", "--vocab-size", 400, "-o", f"books/{name}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "books" / "v2.txt").read_bytes() == (tmp_path / "books" / "v1.txt").read_bytes()
    line = one_line_error(run("tokenize", "books/v1.txt", "-o", "v3.txt", cwd=tmp_path))
    assert line == "error: books/v1.txt is a vocab file, not text"


def test_tokenize_replaces_an_existing_vocab_file_only_with_overwrite(tmp_path, corpus):
    (tmp_path / "v.txt").write_bytes(b"my old vocab")
    args = ["tokenize", corpus, "--vocab-size", 300, "-o", tmp_path / "v.txt"]
    line = one_line_error(run(*args))
    assert line == f"error: {tmp_path / 'v.txt'} already exists: pass --overwrite to replace it, or choose another -o"
    assert (tmp_path / "v.txt").read_bytes() == b"my old vocab"
    assert run(*args, "--overwrite").returncode == 0
    assert bpe.BPE.load(tmp_path / "v.txt").vocab_size == 300


def test_tokenize_from_checkpoint_writes_the_stored_tokenizer(trained, tmp_path):
    from gpt2_llm.loading import load

    result = run("tokenize", "--from-checkpoint", trained, "-o", tmp_path / "v.txt")
    assert result.returncode == 0, result.stderr.decode()
    stored = load(trained).tokenizer
    assert bpe.BPE.load(tmp_path / "v.txt").hash == stored.hash
    assert f"the tokenizer of {trained}, hash {stored.hash[:16]}" in result.stdout.decode()


def test_tokenize_from_checkpoint_errors(trained, corpus, tmp_path):
    from gpt2_llm import load, save_model

    save_model(load(trained).model, tmp_path / "weights.pt")
    for args, message in [
        ([], "give a text to learn from or --from-checkpoint MODEL.pt (exactly one of them)"),
        ([corpus, "--from-checkpoint", trained], "give a text to learn from or --from-checkpoint MODEL.pt"),
        (["--from-checkpoint", trained, "--pattern", "gpt4"], "--pattern is for learning from a text"),
        (["--from-checkpoint", tmp_path / "weights.pt"], "weights.pt holds model weights only, no tokenizer"),
        (["--from-checkpoint", tmp_path / "nope.pt"], "model not found: "),
    ]:
        assert message in one_line_error(run("tokenize", *args, "-o", tmp_path / "v.txt"))
    assert not (tmp_path / "v.txt").exists()


# A Ctrl-C that lands in a __del__ (here one of our own; in the wild a progress bar's) is printed by
# Python as "Exception ignored" and would be lost: the tokenizer is then trained and written as if
# nothing had happened.
LOSES_A_CTRL_C = """
import signal, sys
import bpe, main

class LosesACtrlC:
    def __del__(self):
        signal.raise_signal(signal.SIGINT)

train = bpe.BPE.train
def train_and_lose_a_ctrl_c(*args, **kwargs):
    LosesACtrlC()
    return train(*args, **kwargs)

bpe.BPE.train = train_and_lose_a_ctrl_c
sys.exit(main.main(sys.argv[1:]))
"""


def test_a_ctrl_c_lost_in_a_finalizer_still_stops_tokenize(tmp_path, corpus):
    (tmp_path / "v.txt").write_bytes(b"my old vocab")
    args = ["tokenize", corpus, "--vocab-size", 300, "-o", tmp_path / "v.txt", "--overwrite"]
    result = subprocess.run([sys.executable, "-c", LOSES_A_CTRL_C, *map(str, args)], cwd=ROOT, capture_output=True)
    err = result.stderr.decode()
    assert "Exception ignored" in err and "KeyboardInterrupt" in err  # the interrupt was lost where it landed
    assert result.returncode == 130 and err.endswith("interrupted\n"), err
    assert (tmp_path / "v.txt").read_bytes() == b"my old vocab"
    assert os.listdir(tmp_path) == ["v.txt"]  # no temporary file left either


def test_ctrl_c_at_any_moment_of_tokenize_exits_130_and_keeps_the_old_vocab(tmp_path, data_dir):
    with open(data_dir / "gutenberg_en.txt", encoding="utf-8") as f:
        (tmp_path / "text.txt").write_text(f.read(2_500_000), encoding="utf-8")
    command = [sys.executable, str(ROOT / "main.py"), "tokenize", "text.txt", "--vocab-size", "16384", "--workers", "2",
               "-o", "vocab.txt", "--overwrite"]
    start = time.perf_counter()
    assert subprocess.run(command, cwd=tmp_path, capture_output=True).returncode == 0
    whole_run = time.perf_counter() - start
    new, old = (tmp_path / "vocab.txt").read_bytes(), b"my old vocab"
    interrupted = 0
    for fraction in [0.15, 0.25, 0.35, 0.45, 0.55, 0.65]:  # never near the end: a Ctrl-C after the write is too late
        (tmp_path / "vocab.txt").write_bytes(old)
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(fraction * whole_run)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert sorted(os.listdir(tmp_path)) == ["text.txt", "vocab.txt"]
        if process.returncode == 0:  # it ran faster than when timed (the machine is shared): whole, then
            assert (tmp_path / "vocab.txt").read_bytes() == new, fraction
            continue
        assert process.returncode == 130 and err.decode().endswith("interrupted\n"), (fraction, err.decode())
        assert (tmp_path / "vocab.txt").read_bytes() == old, fraction
        interrupted += 1
    assert interrupted >= 4  # most of the six land while it works


SLOW_TEARDOWN = """
import os, sys, time
import main

class SlowToDie:  # dies with main's globals, in the interpreter's teardown
    def __del__(self, write=os.write, sleep=time.sleep):
        write(2, b"tearing down\\n")
        sleep(2)  # time enough for the Ctrl-C the test sends when it reads the line

main.slow = SlowToDie()
sys.exit(main.main(sys.argv[1:], exiting=True))
"""


def test_a_ctrl_c_after_the_command_has_finished_changes_nothing(tmp_path):
    """Python tears the interpreter down with Ctrl-C's default action restored, so a Ctrl-C then
    killed a finished `main.py` (status -2, no message); main() now ignores it once done."""
    command = [sys.executable, "-c", SLOW_TEARDOWN, "decode", "[1]", str(tmp_path / "missing.txt")]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 60
    while b"tearing down" not in seen and time.monotonic() < deadline:
        chunk = process.stderr.read1(4096)  # blocks until some output, or b"" when it has ended
        if not chunk:
            break
        seen += chunk
    assert b"tearing down" in seen, seen
    process.send_signal(signal.SIGINT)
    seen += process.stderr.read()
    assert process.wait(timeout=60) == 1, seen  # decode's own status: its vocab file is missing
    assert seen.decode().startswith("error: ") and "Traceback" not in seen.decode(), seen


def test_ctrl_c_while_torch_loads_takes_effect_after_it():
    """A Ctrl-C that lands inside torch's C++ import code aborts the process (exit -6); main()
    imports torch with Ctrl-C deferred (main.ctrl_c_deferred), so it ends in "interrupted", 130."""
    done, before = [], signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with main.ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs between bytecodes: here, it must not raise
            done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is before  # put back
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup: a Ctrl-C ignored stays ignored
    try:
        with main.ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGINT, before)


def test_workers_must_be_at_least_one(tmp_path, corpus):
    text = corpus
    line = one_line_error(run("tokenize", text, "--workers", 0, "-o", tmp_path / "v.txt"))
    assert line == "error: --workers must be at least 1, got 0"
    assert run("tokenize", text, "--workers", "two").returncode == 2
    line = one_line_error(run("train", text, tmp_path / "v.txt", "--workers", 0, *TRAIN, cwd=tmp_path))
    assert "--workers must be at least 1, got 0" in line
    assert not (tmp_path / "v.txt").exists()  # checked before any tokenizer was trained


def test_non_utf8_file_names_the_offset(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("naïve café".encode("latin-1"))
    assert "invalid byte 0xef at byte offset 2" in one_line_error(run("tokenize", tmp_path / "latin1.txt", cwd=tmp_path))
    assert not (tmp_path / "vocab.txt").exists()


def test_missing_vocab_file(tmp_path):
    line = one_line_error(run("encode", "hello", cwd=tmp_path))
    assert "vocab file not found: vocab.txt" in line and "tokenize" in line


def test_malformed_vocab_file(tmp_path):
    (tmp_path / "vocab.txt").write_text("not a vocab\n", encoding="utf-8")
    assert "not a vocab file" in one_line_error(run("decode", "[1]", cwd=tmp_path))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in one_line_error(run("decode", "[1]", tmp_path / "binary.txt"))


@pytest.mark.parametrize("ids,message", [
    ("[1, 2", "invalid JSON ids"),
    ("hello", "invalid JSON ids"),
    ('{"a": 1}', "list of integers"),
    ("[1.5]", "list of integers"),
    ("[true]", "list of integers"),
    ("[1000]", "token id 1000 is out of range: the vocabulary has ids 0 to 999"),
    ("[-3]", "token id -3 is out of range"),
])
def test_bad_ids(vocab, ids, message):
    assert message in one_line_error(run("decode", ids, vocab))


def test_non_utf8_stdin(vocab):
    assert "standard input is not UTF-8" in one_line_error(run("encode", "-", vocab, stdin=b"ok\xff"))


def test_usage_errors_exit_2():
    for result in (run("encode"), run_process("encode")):  # main()'s status is the process's
        assert result.returncode == 2 and b"usage:" in result.stderr and b"Traceback" not in result.stderr
    assert run("frobnicate").returncode == 2
    assert run("tokenize", "x.txt", "--vocab-size", "many").returncode == 2


def test_vocab_size_too_small(corpus, tmp_path):
    result = run("tokenize", corpus, "--vocab-size", 100, "-o", tmp_path / "v.txt")
    line = one_line_error(result)
    assert "at least 256" in line


# ---- train, predict, eval -------------------------------------------------------------------------

TRAIN = ["--preset", "tiny", "--batch-size", "4", "--context", "32", "--eval-every", "20", "--eval-tokens", "2000",
         "--log-every", "1", "--dtype", "float32", "--device", "cpu", "--vocab-size", "300", "--warmup-steps", "5"]


def step_losses(metrics: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train")
    path = folder / "play.txt"  # a made-up play (see some_text)
    path.write_text(some_text(80_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(corpus) -> Path:
    folder = corpus.parent
    result = run("train", corpus, folder / "vocab.txt", "--out", folder / "model.pt", "--steps", "30", *TRAIN, cwd=folder)
    assert result.returncode == 0, result.stderr.decode()
    assert b"bits per byte" in result.stdout
    return folder / "model.pt"


def test_train_makes_vocab_checkpoint_best_and_metrics(trained):
    folder = trained.parent
    assert (folder / "vocab.txt").exists() and (folder / "model.best.pt").exists()
    records = [json.loads(line) for line in (folder / "model.metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval" in r] == [20, 30]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    assert all({"lr", "tokens", "tokens_per_s", "mfu", "elapsed_s"} <= r.keys() for r in steps)
    assert [r["step"] for r in records if "sample" in r] == [20, 30]
    assert (folder / "model.loss.png").exists()


def test_predict_streams_and_is_seeded(trained):
    a = run("predict", "ROMEO:", 20, trained, "--seed", 7)
    b = run("predict", "ROMEO:", 20, trained, "--seed", 7)
    assert a.returncode == 0, a.stderr.decode()
    assert a.stdout == b.stdout and a.stdout.startswith(b"ROMEO:")
    greedy = run("predict", "ROMEO:", 20, trained, "--greedy")
    assert greedy.stdout == run("predict", "ROMEO:", 20, trained, "--temperature", 0).stdout
    matching = run("predict", "ROMEO:", 5, trained, trained.parent / "vocab.txt")
    assert matching.returncode == 0


def test_predict_interactive(trained):
    result = run("predict", "--interactive", "", 5, trained, "--seed", 1, stdin=b"First\nSecond\n")
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "First" in out and "Second" in out
    # A model file where the prompt would go is the model (the prompts come from the terminal).
    shifted = run("predict", "--interactive", trained, "--seed", 1, stdin=b"First\n", cwd=trained.parent.parent)
    assert shifted.returncode == 0, shifted.stderr.decode()
    assert "is not a model" in one_line_error(run("predict", "--interactive", "Once upon", stdin=b""))


def test_prompt_longer_than_the_context_is_cropped(trained):
    result = run("predict", "word " * 200, 3, trained, "--seed", 1)
    assert result.returncode == 0
    assert b"only its last 32" in result.stderr


def test_eval_reports_loss_perplexity_bpb(trained, corpus):
    result = run("eval", corpus, trained)
    assert result.returncode == 0, result.stderr.decode()
    line = result.stdout.decode()
    loss = float(line.split("loss ")[1].split(",")[0])
    ppl = float(line.split("perplexity ")[1].split(",")[0])
    assert ppl == pytest.approx(2.718281828 ** loss, rel=1e-3)
    assert "bits per byte" in line


# SIGTERM takes the same path as Ctrl-C (and test_distributed sends it through torchrun): slow run only.
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_signal_saves_and_resume_matches_an_uninterrupted_run(corpus, tmp_path, sig, code):
    (tmp_path / "t.txt").write_bytes(corpus.read_bytes())
    steps = ["--steps", "150", *TRAIN]
    straight = run("train", tmp_path / "t.txt", tmp_path / "v.txt", "--out", tmp_path / "a.pt", *steps)
    assert straight.returncode == 0, straight.stderr.decode()

    # The interrupted run in a process of its own: the signal reaches it as it reaches a user's.
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "train", str(tmp_path / "t.txt"),
                             str(tmp_path / "v.txt"), "--out", str(tmp_path / "b.pt"), *steps],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "b.metrics.jsonl"
    deadline = time.monotonic() + 60
    while last_logged_step(metrics) < 30 and time.monotonic() < deadline:  # evals and samples are lines too
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()
    assert b"Resume with" in err and b"Traceback" not in err
    stopped_at = max(s for s, _ in step_losses(metrics))
    assert 30 <= stopped_at < 150, "the run ended before the signal: make it longer"

    resumed = run("train", tmp_path / "t.txt", tmp_path / "v.txt", "--out", tmp_path / "b.pt", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr.decode()
    ours, straight = step_losses(metrics), step_losses(tmp_path / "a.metrics.jsonl")
    assert [step for step, _ in ours] == [step for step, _ in straight]
    # Two processes can differ in the last bit of a float32 sum, which flips the 5th decimal of
    # the logged loss now and then; the API test in test_trainer.py checks bit-identical weights.
    assert [loss for _, loss in ours] == pytest.approx([loss for _, loss in straight], abs=1e-4)


def test_existing_checkpoint_is_not_overwritten(trained, corpus):
    before = trained.read_bytes()
    line = one_line_error(run("train", corpus, trained.parent / "vocab.txt", "--out", trained, *TRAIN))
    assert "already exists" in line and "--resume auto" in line
    assert trained.read_bytes() == before


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"tiny text", "too short"),
    (b"caf\xe9 au lait " * 100, "not UTF-8 text: invalid byte 0xe9 at byte offset 3"),
])
def test_bad_training_text(tmp_path, content, message):
    (tmp_path / "t.txt").write_bytes(content)
    assert message in one_line_error(run("train", tmp_path / "t.txt", *TRAIN, cwd=tmp_path))
    assert not (tmp_path / "gpt2_model.pt").exists()


def test_training_on_a_folder(tmp_path, corpus):
    assert "no .txt files" in one_line_error(run("train", tmp_path, *TRAIN, cwd=tmp_path))
    text = corpus.read_text(encoding="utf-8")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "1.txt").write_text(text[:40_000], encoding="utf-8")
    (tmp_path / "texts" / "2.txt").write_text(text[40_000:], encoding="utf-8")
    result = run("train", "texts", "--steps", 2, *TRAIN, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    [cache] = tmp_path.glob("texts.*.tokens.bin")  # beside the folder, not inside it
    tokenizer = bpe.BPE.load(tmp_path / "vocab.txt")
    expected = tokenizer.encode(text[:40_000] + "<|endoftext|>" + text[40_000:], allowed_special="all")
    assert np.fromfile(cache, dtype=np.uint16).tolist() == expected


def test_vocab_of_another_size_is_refused(trained, tmp_path):
    run("tokenize", trained.parent / "play.txt", "--vocab-size", 290, "-o", tmp_path / "v.txt")
    line = one_line_error(run("predict", "hi", 5, trained, tmp_path / "v.txt"))
    assert "290 tokens" in line and "300 tokens" in line


def with_config(change: dict):
    """A checkpoint maker: the good one with its model_config changed."""
    def make(path, good):
        from gpt2_llm import load_checkpoint, save_checkpoint

        ckpt = load_checkpoint(good)
        save_checkpoint(path, {**ckpt, "model_config": {**ckpt["model_config"], **change}})
    return make


@pytest.mark.parametrize("make,message", [
    (lambda p, good: p.write_text("hello"), "not a readable checkpoint"),
    (with_config({"n_experts": 4}), "fields this version does not know (n_experts)"),
    (with_config({"n_embd": "64"}), "n_embd is '64', not a int"),
    (with_config({"n_layer": 3}), "its weights do not fit its model config: missing decoder.h.2"),
    (with_config({"n_head": 3}), "must be a positive multiple of n_head (3)"),
])  # fmt: skip
def test_broken_checkpoints(trained, tmp_path, make, message):
    path = tmp_path / "m.pt"
    make(path, trained)
    assert message in one_line_error(run("predict", "hi", 5, path))
    assert message in one_line_error(run("eval", trained.parent / "play.txt", path))


# Options earlier versions had (token shift, the copying cache): a checkpoint that used one is refused
# by every command that reads a model, one that stored them switched off loads as it always did.
@pytest.mark.parametrize("used,flag", [({"token_shift": True}, "--token-shift"), ({"copy_weight": 0.1}, "--copy 0.1")])
def test_a_checkpoint_trained_with_a_removed_option_is_refused_in_one_line(trained, corpus, tmp_path, capsys, used, flag):
    path = tmp_path / "old.pt"
    with_config(used)(path, trained)
    cpu = ["--device", "cpu"]
    commands = [["predict", "hi", "5", path, *cpu], ["eval", corpus, path, *cpu], ["export", path, tmp_path / "out"],
                ["train", corpus, "--init-from", path, "--out", tmp_path / "ft.pt", *cpu],
                ["train", corpus, trained.parent / "vocab.txt", path, "--steps", "40", *cpu]]  # fmt: skip
    for argv in commands:
        assert main.main(list(map(str, argv))) == 1, argv
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"error: {path}: the model was trained with {flag} ("), err
        assert err.endswith("an experimental option this version of the toolkit removed; retrain without it"
                            + (", or write the model without the cache, which holds no weights, with an earlier "
                               "version's export --copy 0\n" if "copy" in flag else "\n")), err


def test_a_checkpoint_that_stored_the_removed_options_switched_off_still_predicts(trained, tmp_path, capsys):
    path = tmp_path / "old.pt"
    with_config({"token_shift": False, "copy_weight": 0.0, "copy_sharpness": 10.0})(path, trained)
    outputs = []
    for model in (trained, path):
        assert main.main(["predict", "ROMEO:", "12", str(model), "--greedy", "--device", "cpu"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0].startswith("ROMEO:") and outputs[1] == outputs[0]


def test_missing_model_file(tmp_path):
    line = one_line_error(run("predict", "hi", 5, cwd=tmp_path))
    assert line == "error: model not found: gpt2_model.pt (train one with: python main.py train <text file>)"
    line = one_line_error(run("predict", "hi", 5, tmp_path / "other.pt", cwd=tmp_path))
    assert line == f"error: model not found: {tmp_path / 'other.pt'} (no such checkpoint file or model folder)"


def test_serve_refuses_a_bad_model_or_option_in_one_line(tmp_path):
    line = one_line_error(run("serve", cwd=tmp_path))
    assert line == "error: model not found: gpt2_model.pt (train one with: python main.py train <text file>)"
    line = one_line_error(run("serve", tmp_path / "other.pt", cwd=tmp_path))
    assert line == f"error: model not found: {tmp_path / 'other.pt'} (no such checkpoint file or model folder)"
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with socket.socket() as s:  # a free port for the server that starts, then fails to load the model
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # In a process of its own: the server it starts sets up logging for the whole process.
    line = one_line_error(run_process("serve", tmp_path / "broken.pt", "--port", port, cwd=tmp_path))
    assert line.startswith("error: ") and "broken.pt" in line
    line = one_line_error(run("serve", tmp_path / "broken.pt", "--max-batch", 0, cwd=tmp_path))
    assert line == "error: --max-batch must be at least 1, got 0"


def test_export_then_every_command_takes_the_folder(trained, corpus, tmp_path):
    """export writes a transformers folder; predict, eval, --interactive and tokenize take it as a model
    and give what the checkpoint gives (the folder's own tests are in gpt2_llm/tests/test_export.py)."""
    out = tmp_path / "exported"
    result = run("export", trained, out)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith(f"wrote {out}: config.json, generation_config.json, merges.txt, "
                                             f"model.safetensors, special_tokens_map.json, tokenizer.json, "
                                             f"tokenizer_config.json, vocab.json (")
    for args in (["predict", "ROMEO:", 12, "{}", "--greedy"], ["eval", corpus, "{}", "--dtype", "float32"]):
        by_checkpoint = run(*[trained if a == "{}" else a for a in args])
        by_folder = run(*[out if a == "{}" else a for a in args])
        assert by_folder.returncode == 0, by_folder.stderr.decode()
        assert by_folder.stdout == by_checkpoint.stdout
    interactive = run("predict", "--interactive", out, "--greedy", stdin=b"ROMEO:\n")
    assert interactive.returncode == 0 and b"ROMEO:" in interactive.stdout, interactive.stderr.decode()
    assert run("tokenize", "--from-checkpoint", out, "-o", tmp_path / "v.txt").returncode == 0
    assert bpe.BPE.load(tmp_path / "v.txt").hash == bpe.BPE.load(trained.parent / "vocab.txt").hash
    # An existing folder needs --overwrite; then it is replaced whole.
    assert "already exists and is not empty: pass --overwrite" in one_line_error(run("export", trained, out))
    assert run("export", trained, out, "--overwrite").returncode == 0


def test_a_hub_name_offline_and_not_cached_is_one_line(tmp_path, monkeypatch):
    env = hub_offline(monkeypatch, tmp_path)
    (tmp_path / "t.txt").write_text("some text to evaluate on")
    in_a_process = run_process("predict", "hi", 5, "gpt2", env=env)  # a new process reads the environment
    for result in (in_a_process, run("eval", tmp_path / "t.txt", "gpt2-medium"), run("export", "gpt2", tmp_path / "o"),
                   run("predict", "--interactive", "gpt2")):  # fmt: skip
        line = one_line_error(result)
        assert "is no file or folder here and is not in the Hugging Face cache" in line, line
        assert "the hub cannot be reached (HF_HUB_OFFLINE is set): connect once, or download" in line


@pytest.mark.parametrize("args,flag", [
    (["--top-p", "0"], "--top-p"), (["--top-p", "1.5"], "--top-p"), (["--temperature", "-1"], "--temperature"),
    (["--top-k", "0"], "--top-k"), (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--top-p", "nan"], "--top-p"), (["--device", "gpu"], "--device"),
])
def test_invalid_sampling_options(trained, args, flag):
    assert flag in one_line_error(run("predict", "hi", 5, trained, *args))


def test_negative_num_tokens(trained):
    assert "num_tokens" in one_line_error(run("predict", "hi", "-3", trained))


@pytest.mark.parametrize("command", ["train", "predict", "eval", "export"])
def test_help_of_model_commands(command):
    result = run(command, "--help")
    assert result.returncode == 0 and b"usage:" in result.stdout




def test_eval_on_a_device_that_is_not_there(trained, corpus):
    assert "--device must be" in one_line_error(run("eval", corpus, trained, "--device", "gpu"))


def test_a_bug_keeps_its_traceback(monkeypatch):
    def buggy(args):
        raise ValueError("an internal mistake")  # not a UserError: the traceback must reach the user

    monkeypatch.setattr(main, "cmd_decode", buggy)
    with pytest.raises(ValueError, match="an internal mistake"):
        main.main(["decode", "[1]"])


def test_plot_draws_one_run_or_compares_several(trained, tmp_path):
    metrics = trained.with_suffix(".metrics.jsonl")
    result = run("plot", metrics, metrics, "--label", "a", "--label", "b", "-o", tmp_path / "two.png")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "two.png").read_bytes().startswith(b"\x89PNG")
    assert "no such metrics file" in one_line_error(run("plot", tmp_path / "none.jsonl", "-o", tmp_path / "x.png"))


# ---- continuing a run --------------------------------------------------------------------------


def make_short_run(folder: Path, corpus: Path) -> Path:
    """A finished 4-step run in folder: t.txt, v.txt, m.pt."""
    (folder / "t.txt").write_bytes(corpus.read_bytes())
    result = run("train", folder / "t.txt", folder / "v.txt", "--out", folder / "m.pt", "--steps", 4, *TRAIN)
    assert result.returncode == 0, result.stderr.decode()
    return folder / "m.pt"


@pytest.fixture
def short_run(corpus, tmp_path) -> Path:
    """A finished 4-step run of this test's own, to continue or change."""
    return make_short_run(tmp_path, corpus)


@pytest.fixture(scope="module")
def refused_run(corpus, tmp_path_factory) -> Path:
    """A finished 4-step run shared by the tests of refusals: they must leave it as it is."""
    from gpt2_llm import load_checkpoint

    path = make_short_run(tmp_path_factory.mktemp("refused"), corpus)
    yield path
    assert load_checkpoint(path)["state"]["step"] == 4, "a refused command changed the checkpoint"


@pytest.mark.parametrize("flags,message", [
    (["--context", "64"], "--context 64 does not fit {ckpt}, whose block_size is 32"),
    (["--preset", "mini"], "--preset mini does not fit {ckpt}, whose n_layer is 2"),
    (["--n-embd", "128"], "--n-embd 128 does not fit {ckpt}, whose n_embd is 64"),
    (["--rope"], "--rope does not fit {ckpt}, whose rope is False"),
    (["--dropout", "0.2"], "--dropout 0.2 does not fit {ckpt}, whose dropout is 0.0"),
    (["--mlp", "swiglu"], "--mlp swiglu does not fit {ckpt}, whose mlp is gelu"),
    (["--kv-heads", "1"], "--kv-heads 1 does not fit {ckpt}, whose kv_heads is 2"),
    (["--untied"], "--untied does not fit {ckpt}, whose tie_embeddings is True"),
    (["--no-bias"], "--no-bias does not fit {ckpt}, whose bias is True"),
    (["--n-embd", "32"], "--n-embd 32 does not fit {ckpt}, whose n_embd is 64"),
    (["--optimizer", "adamw"], "--optimizer adamw does not fit {ckpt}, trained with muon"),
    (["--vocab-size", "512"], "--vocab-size 512 does not fit {ckpt}, whose tokenizer has 300 tokens"),
])  # fmt: skip
def test_shape_flags_that_disagree_with_a_continued_checkpoint_are_refused(refused_run, flags, message):
    folder = refused_run.parent
    args = ["train", folder / "t.txt", folder / "v.txt", refused_run, "--steps", 8, "--device", "cpu"]
    assert message.format(ckpt=refused_run) in one_line_error(run(*args, *flags))


def test_shape_flags_that_agree_with_a_continued_checkpoint_are_fine(short_run):
    folder = short_run.parent
    args = ["train", folder / "t.txt", folder / "v.txt", short_run, "--steps", 8, "--device", "cpu"]
    # --kv-heads 2 is the tiny preset's one key/value head per head.
    same = run(*args, "--context", "32", "--preset", "tiny", "--kv-heads", "2", "--norm", "layernorm", "--dtype", "float32")
    assert same.returncode == 0, same.stderr.decode()
    assert b"continuing" in same.stderr and b"step 8:" in same.stdout


def test_continuing_into_another_existing_file_needs_overwrite(short_run):
    folder = short_run.parent
    (folder / "other.pt").write_bytes(b"precious")
    args = ["train", folder / "t.txt", folder / "v.txt", short_run, "--out", folder / "other.pt", "--steps", 6,
            "--device", "cpu", "--dtype", "float32"]
    assert "other.pt already exists" in one_line_error(run(*args))
    assert (folder / "other.pt").read_bytes() == b"precious"
    result = run(*args, "--overwrite")
    assert result.returncode == 0, result.stderr.decode()
    from gpt2_llm import load_checkpoint

    assert load_checkpoint(folder / "other.pt")["state"]["step"] == 6


def test_nothing_left_to_train_says_so(short_run):
    folder = short_run.parent
    before = short_run.read_bytes()
    result = run("train", folder / "t.txt", folder / "v.txt", short_run, "--device", "cpu")
    assert result.returncode == 0, result.stderr.decode()
    assert b"nothing left to train" in result.stdout and b"saved" not in result.stdout
    assert short_run.read_bytes() == before


def test_a_run_logged_to_a_file_is_plain_lines_with_samples_and_a_loss_picture(short_run):
    folder = short_run.parent
    # stderr is not a terminal, as in a file (with nohup)
    result = run("train", folder / "t.txt", folder / "v.txt", "--out", folder / "n.pt", "--steps", "40", *TRAIN,
                 "--log-every", "10")
    assert result.returncode == 0, result.stderr.decode()
    text = result.stderr.decode()
    assert "\r" not in text and len(text) < 4000
    assert [line.split(" |")[0] for line in text.splitlines() if line.startswith("step ") and " | " in line] == [
        "step 1/40", "step 10/40", "step 20/40", "step 30/40", "step 40/40"]
    assert text.count("sample at step ") == 2  # at the evaluations of steps 20 and 40
    samples = [r for r in map(json.loads, (folder / "n.metrics.jsonl").read_text().splitlines()) if "sample" in r]
    assert [r["step"] for r in samples] == [20, 40]
    assert (folder / "n.loss.png").read_bytes().startswith(b"\x89PNG")


def test_kill_9_of_a_run_without_validation_leaves_a_checkpoint_on_the_eval_every_schedule(corpus, tmp_path):
    """SIGKILL `main.py train --val-fraction 0` at random moments while it saves every 2 steps: the
    checkpoint on disk always loads, never goes back in time, and the run resumes from it."""
    import random

    from gpt2_llm import load

    (tmp_path / "t.txt").write_bytes(corpus.read_bytes())
    rng = random.Random(1)
    args = ["train", tmp_path / "t.txt", tmp_path / "v.txt", "--out", tmp_path / "m.pt", "--resume", "auto",
            "--steps", "100000", *TRAIN, "--val-fraction", "0", "--eval-every", "2", "--sample-tokens", "0"]
    last_step = -1
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, args)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (tmp_path / "m.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.3, 1.5))
        proc.kill()
        proc.wait()
        step = load(tmp_path / "m.pt").checkpoint["state"]["step"]
        assert step % 2 == 0 and step >= last_step  # on the schedule, never an older state than before
        last_step = step
    assert last_step > 0


def test_pip_install_makes_the_modules_and_the_command_usable_from_anywhere(tmp_path, vocab):
    """`pip install .` (here into a target folder, without the network): bpe, gpt2_llm, main and
    check_checkpoint import from another folder, and the console command does what main.py does."""
    import shutil

    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pt", "build"))
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(source)], capture_output=True, timeout=300)  # fmt: skip
    assert install.returncode == 0, install.stderr.decode()[-2000:]
    assert not (site / "gpt2_llm" / "tests").exists()  # the tests stay in the repository
    env = {**os.environ, "PYTHONPATH": str(site)}
    imported = subprocess.run([sys.executable, "-c", "import bpe, gpt2_llm, main, check_checkpoint; "
                               "from gpt2_llm import GPT2, Trainer, load; print(gpt2_llm.__file__)"],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == str(site / "gpt2_llm" / "__init__.py")
    command = subprocess.run([str(site / "bin" / "gpt2-toolkit"), "encode", "Hello world", vocab],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert command.returncode == 0, command.stderr
    assert command.stdout == run("encode", "Hello world", vocab).stdout.decode() and len(json.loads(command.stdout)) > 1


def test_a_closed_pipe_ends_quietly(vocab):
    ids = json.dumps(list(range(100, 300)) * 2000).encode()
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "decode", "-", str(vocab)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(ids)
    proc.stdin.close()
    proc.stdout.read(10)
    proc.stdout.close()  # as `| head -c 10` does
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141 and err == b""


def test_a_file_that_is_not_a_checkpoint_says_what_it_is(trained, tmp_path):
    line = one_line_error(run("predict", "hi", 5, trained.parent / "vocab.txt"))
    assert "is a vocab file" in line and "weights_only" not in line
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 10)
    assert "it is not a torch file" in one_line_error(run("predict", "hi", 5, tmp_path / "random.pt"))


def test_eval_of_an_empty_file(trained, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert "no text to evaluate on" in one_line_error(run("eval", tmp_path / "empty.txt", trained))


def test_train_help_shows_each_default_once():
    text = run("train", "--help").stdout.decode()
    assert "(default: None)" not in text and text.count("one per core") == 1
    assert "one epoch" in text


# ---- what a new user trips on --------------------------------------------------------------------


def test_a_failed_run_leaves_no_new_vocab_behind(tmp_path):
    (tmp_path / "one_char.txt").write_text("x" * 300)
    assert "too short" in one_line_error(run("train", tmp_path / "one_char.txt", tmp_path / "v.txt", *TRAIN, cwd=tmp_path))
    assert not (tmp_path / "v.txt").exists() and not (tmp_path / "gpt2_model.pt").exists()


def test_an_absurd_batch_size_is_refused_before_anything_is_done(corpus, tmp_path):
    line = one_line_error(run("train", corpus, tmp_path / "v.txt", "--out", tmp_path / "m.pt", *TRAIN,
                              "--batch-size", 100000))
    assert "--batch-size 100000 needs about" in line and "available" in line
    assert not (tmp_path / "v.txt").exists()  # refused before a tokenizer was trained


def test_out_naming_a_folder_is_refused_before_training(corpus, tmp_path):
    (tmp_path / "outdir").mkdir()
    line = one_line_error(run("train", corpus, tmp_path / "v.txt", "--out", f"{tmp_path / 'outdir'}/", *TRAIN))
    assert "is a folder: give a file name" in line and not (tmp_path / "v.txt").exists()


def test_two_runs_into_one_out_the_second_is_refused(corpus, tmp_path):
    (tmp_path / "t.txt").write_bytes(corpus.read_bytes())
    args = ["train", tmp_path / "t.txt", tmp_path / "v.txt", "--out", tmp_path / "m.pt", "--steps", 100000, *TRAIN]
    first = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *map(str, args)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "m.metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        line = one_line_error(run(*args, "--overwrite"))
        assert f"another run (process {first.pid}) is writing" in line
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    assert not (tmp_path / "m.pt.lock").exists()  # released on exit
    # A lock file left by a killed run is stale: the next run takes it over.
    (tmp_path / "m.pt.lock").write_text("12345\n")
    again = run(*args[:-len(TRAIN) - 2], "--steps", 2, *TRAIN, "--overwrite")
    assert again.returncode == 0, again.stderr.decode()


def test_a_vocab_found_from_another_text_is_named_and_a_new_one_records_its_text(tmp_path, corpus):
    (tmp_path / "code.txt").write_text((ROOT / "bpe.py").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "shakes.txt").write_bytes(corpus.read_bytes())
    first = run("train", "code.txt", "--steps", 2, *TRAIN, cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    assert b"wrote vocab.txt: 300 tokens learned from code.txt" in first.stderr
    assert bpe.BPE.load(tmp_path / "vocab.txt").trained_on["text"] == "code.txt"
    second = run("train", "shakes.txt", "--steps", 2, *TRAIN, "--out", "shakes.pt", cwd=tmp_path)
    assert second.returncode == 0, second.stderr.decode()
    assert b"warning: using vocab.txt, found here, which was learned from another text (code.txt" in second.stderr
    again = run("train", "code.txt", "--steps", 2, *TRAIN, "--out", "code2.pt", cwd=tmp_path)
    assert b"using vocab.txt, found here (300 tokens, learned from this text)" in again.stderr


def test_a_runs_own_tokenizer_learns_nothing_from_the_held_out_text(tmp_path, corpus):
    """A word that only the held-out tail holds, 200 times: learned from the whole text, a
    1000-token vocabulary makes it one or two tokens; learned from the training part, not."""
    text = corpus.read_text(encoding="utf-8") + " Zyxwvutsrq" * 200  # the last 3% of the text
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    result = run("train", "t.txt", "--steps", 1, *TRAIN[:-4], "--vocab-size", 1000, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert b"1000 tokens learned from t.txt (its first 90%: the held-out part taught it nothing)" in result.stderr
    learned = bpe.BPE.load(tmp_path / "vocab.txt")
    assert learned.trained_on["held_out"] == 0.1 and learned.trained_on["text"] == "t.txt"
    assert len(bpe.BPE.train(text, 1000).encode(" Zyxwvutsrq")) <= 2  # what the old way learned
    assert len(learned.encode(" Zyxwvutsrq")) >= 5
    assert learned.hash == bpe.BPE.train(text[: int(len(text) * 0.9)], 1000).hash  # the same merges
    again = run("train", "t.txt", "--steps", 1, *TRAIN[:-4], "--vocab-size", 1000, "--out", "b.pt", cwd=tmp_path)
    assert b"using vocab.txt, found here (1,000 tokens, learned from this text)" in again.stderr


def test_a_test_part_is_held_out_from_the_tokenizer_and_reported_at_the_end(tmp_path, corpus):
    text = corpus.read_text(encoding="utf-8")
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    result = run("train", "t.txt", "--steps", 3, *TRAIN[:-4], "--vocab-size", 400, "--test-fraction", 0.2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert b"400 tokens learned from t.txt (its first 70%: the held-out parts taught it nothing)" in result.stderr
    assert bpe.BPE.load(tmp_path / "vocab.txt").hash == bpe.BPE.train(text[: int(len(text) * 0.7)], 400).hash
    last = result.stdout.decode().strip().splitlines()[-1]
    assert re.fullmatch(r"step 3: val loss \d\.\d{4}, \d\.\d{4} bits per byte; test loss \d\.\d{4}, "
                        r"\d\.\d{4} bits per byte; saved gpt2_model\.pt", last), last
    assert "--test-fraction must be in [0, 1), got 1.5" in one_line_error(run("train", "t.txt", "--test-fraction", 1.5,
                                                                             cwd=tmp_path))


# ---- train --init-from: fine-tuning a trained model ----------------------------------------------

FINETUNE = ["--steps", 2, "--device", "cpu", "--dtype", "float32", "--eval-every", 20, "--eval-tokens", 2000]


@pytest.fixture
def other_text(tmp_path) -> Path:
    path = tmp_path / "other.txt"
    path.write_text(some_text(40_000, seed=1), encoding="utf-8")
    return path


def test_init_from_starts_at_the_models_weights_with_its_tokenizer_and_fine_tuning_defaults(short_run, other_text):
    from gpt2_llm import load_checkpoint
    from gpt2_llm.tests.conftest import assert_close

    folder = other_text.parent
    # A learning rate far too small to move a weight shows where the run started.
    result = run("train", other_text, "--init-from", short_run, "--out", folder / "ft.pt", "--lr", "1e-12",
                 "--dropout", "0.1", *FINETUNE, cwd=folder)
    assert result.returncode == 0, result.stderr.decode()
    err = result.stderr.decode()
    assert f"starting from {short_run}: " in err and "its own tokenizer (300 tokens)" in err
    assert "fine-tuning defaults --warmup-steps 20 --batch-size 8" in err  # --lr was given, so not listed
    pretrained, tuned = load_checkpoint(short_run), load_checkpoint(folder / "ft.pt")
    for name, weight in pretrained["model"].items():
        assert_close(tuned["model"][name], weight, atol=1e-9)
    assert tuned["tokenizer"]["hash"] == pretrained["tokenizer"]["hash"]
    assert tuned["model_config"] == {**pretrained["model_config"], "dropout": 0.1}
    config = tuned["train_config"]
    assert (config["init_from"], config["lr"], config["warmup_steps"], config["batch_size"]) == (str(short_run), 1e-12, 20, 8)
    assert not (folder / "vocab.txt").exists()  # the model's tokenizer is used, no vocab file is made


def test_init_from_with_a_shorter_context_then_resume(short_run, other_text):
    from gpt2_llm import load_checkpoint
    from gpt2_llm.tests.conftest import assert_close

    folder = other_text.parent
    out = folder / "ft.pt"
    args = ["train", other_text, "--init-from", short_run, "--out", out, "--context", 16, "--lr", "1e-12", *FINETUNE]
    result = run(*args, cwd=folder)
    assert result.returncode == 0, result.stderr.decode()
    tuned = load_checkpoint(out)
    assert tuned["model_config"]["block_size"] == 16
    assert_close(tuned["model"]["wpe.weight"], load_checkpoint(short_run)["model"]["wpe.weight"][:16], atol=1e-9)
    again = run(*args[:-len(FINETUNE)], *FINETUNE[2:], "--steps", 4, "--resume", "auto", cwd=folder)
    assert again.returncode == 0, again.stderr.decode()
    assert f"continuing {out} from step 2" in again.stderr.decode()
    assert load_checkpoint(out)["state"]["step"] == 4


@pytest.mark.parametrize("flags,message", [
    (["--preset", "mini"], "--preset does not go with --init-from: the run keeps {model}'s shape and tokenizer"),
    (["--vocab-size", "512"], "--vocab-size does not go with --init-from"),
    (["--rope"], "--rope does not go with --init-from"),
    (["--mlp", "relu2"], "--mlp does not go with --init-from"),
    (["--untied"], "--untied does not go with --init-from"),
    (["--n-layer", "4"], "--n-layer does not go with --init-from"),
    (["--context", "64"], "--context 64 is longer than the model's learned positions (32); give 32 or less"),
    (["--lr", "0"], "--lr must be positive, got 0.0"),
])  # fmt: skip
def test_init_from_refuses_another_shape_or_tokenizer(refused_run, other_text, flags, message):
    folder = other_text.parent
    args = ["train", other_text, "--init-from", refused_run, "--out", folder / "ft.pt", *FINETUNE, *flags]
    assert message.format(model=refused_run) in one_line_error(run(*args, cwd=folder))
    assert not (folder / "ft.pt").exists()


def test_init_from_refuses_a_vocab_file_of_another_tokenizer_and_a_checkpoint_beside_it(refused_run, other_text):
    folder = other_text.parent
    made = run("tokenize", other_text, "--vocab-size", 280, "-o", folder / "v280.txt")
    assert made.returncode == 0, made.stderr.decode()
    args = ["train", other_text, folder / "v280.txt", "--init-from", refused_run, "--out", folder / "ft.pt", *FINETUNE]
    assert "v280.txt (hash" in one_line_error(run(*args, cwd=folder))
    same = run("train", other_text, refused_run.parent / "v.txt", "--init-from", refused_run, "--out", folder / "ft.pt",
               *FINETUNE, cwd=folder)  # the model's own tokenizer, as a vocab file: fine
    assert same.returncode == 0, same.stderr.decode()
    both = run("train", other_text, refused_run.parent / "v.txt", refused_run, "--init-from", refused_run, *FINETUNE)
    assert "not both" in one_line_error(both)


# ---- architecture options ------------------------------------------------------------------------

ALL_OPTIONS = ["--n-layer", 3, "--n-head", 4, "--n-embd", 64, "--norm", "rmsnorm", "--mlp", "swiglu", "--kv-heads", 2,
               "--qk-norm", "--untied", "--no-bias", "--rope", "--grad-checkpoint", "--optimizer", "muon",
               "--muon-lr", "0.03", "--ema", "0.99"]  # fmt: skip


def test_every_architecture_option_at_once_trains_predicts_and_resumes(corpus, tmp_path):
    from gpt2_llm import load_checkpoint

    (tmp_path / "t.txt").write_bytes(corpus.read_bytes())
    args = ["train", tmp_path / "t.txt", tmp_path / "v.txt", "--out", tmp_path / "m.pt", *TRAIN]
    result = run(*args, "--steps", 4, *ALL_OPTIONS)
    assert result.returncode == 0, result.stderr.decode()
    assert (b"gradient checkpointing, Muon (lr 0.03) beside AdamW, evaluating and saving a moving average of the "
            b"weights (--ema 0.99)") in result.stderr
    ckpt = load_checkpoint(tmp_path / "m.pt")
    stored = {name: ckpt["model_config"][name] for name in
              ("n_layer", "n_head", "n_embd", "norm", "mlp", "n_kv_head", "qk_norm", "tie_embeddings", "bias", "rope")}
    assert stored == {"n_layer": 3, "n_head": 4, "n_embd": 64, "norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2,
                      "qk_norm": True, "tie_embeddings": False, "bias": False, "rope": True}
    assert (ckpt["train_config"]["optimizer"], ckpt["train_config"]["muon_lr"]) == ("muon", 0.03)
    assert ckpt["train_config"]["grad_checkpoint"] and "muon" in ckpt
    assert ckpt["train_config"]["ema"] == 0.99 and ckpt["training_weights"].keys() == ckpt["model"].keys()
    evals = [json.loads(line) for line in (tmp_path / "m.metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals and all(r["ema"] == 0.99 for r in evals)  # what the picture's legend names
    assert ckpt["model"]["decoder.h.0.attn.c_attn.weight"].shape == (64 + 2 * 2 * 16, 64)
    assert ckpt["model"]["decoder.h.2.mlp.c_fc2.weight"].shape == (192, 64)

    a = run("predict", "ROMEO:", 10, tmp_path / "m.pt", "--seed", 3)
    assert a.returncode == 0, a.stderr.decode()
    assert a.stdout.startswith(b"ROMEO:") and a.stdout == run("predict", "ROMEO:", 10, tmp_path / "m.pt", "--seed", 3).stdout

    again = run(*args, "--steps", 6, *ALL_OPTIONS, "--resume", "auto")  # the same command, continued
    assert again.returncode == 0, again.stderr.decode()
    assert f"continuing {tmp_path / 'm.pt'} from step 4".encode() in again.stderr
    assert [step for step, _ in step_losses(tmp_path / "m.metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(tmp_path / "m.pt")["model_config"] == ckpt["model_config"]
    # Continued by its checkpoint alone, with another Muon learning rate (the optimizer is the checkpoint's).
    more = run("train", tmp_path / "t.txt", tmp_path / "v.txt", tmp_path / "m.pt", "--steps", 7, "--muon-lr", "0.01",
               "--device", "cpu", "--dtype", "float32")  # fmt: skip
    assert more.returncode == 0, more.stderr.decode()
    assert load_checkpoint(tmp_path / "m.pt")["train_config"]["muon_lr"] == 0.01


@pytest.mark.parametrize("flags,message", [
    (["--kv-heads", "3"], "n_kv_head (--kv-heads) must divide n_head (2), got 3"),
    (["--n-head", "3"], "n_embd (64) must be a positive multiple of n_head (3) (--n-embd, --n-head)"),
    (["--optimizer", "adamw", "--muon-lr", "0.01"], "--muon-lr is the learning rate of --optimizer muon, not of adamw"),
    (["--optimizer", "sgd"], "--optimizer must be adamw or muon, got 'sgd'"),
])  # fmt: skip
def test_a_bad_architecture_or_optimizer_flag_is_one_line(corpus, tmp_path, flags, message):
    result = run("train", corpus, tmp_path / "v.txt", "--out", tmp_path / "m.pt", *TRAIN, *flags)
    assert message in one_line_error(result)
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "v.txt").exists()


# ---- instruction records: train, predict --chat, eval ----------------------------------------------

RECORDS_TRAIN = ["--preset", "tiny", "--batch-size", "8", "--context", "64", "--eval-every", "30", "--log-every", "10",
                 "--dtype", "float32", "--device", "cpu", "--vocab-size", "300", "--warmup-steps", "5", "--lr", "3e-3",
                 "--optimizer", "adamw", "--dropout", "0"]  # what the memorising test below needs, not the plan's


def write_records(path: Path, count: int) -> Path:
    """Alpaca records whose answer is always "ok": a tiny model learns to say it, then end its turn."""
    words = ["red", "blue", "green", "kite", "ball", "hat", "Mia", "Leo"]
    lines = [json.dumps({"instruction": f"Say ok to {words[k % 8]} and {words[k * 3 % 8]}.", "output": "ok"})
             for k in range(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("instruct")
    data = write_records(folder / "data.jsonl", 200)
    result = run("train", data, folder / "vocab.txt", "--out", folder / "chat.pt", "--steps", 60, *RECORDS_TRAIN)
    assert result.returncode == 0, result.stderr.decode()
    assert b"instructions: 200 alpaca records, 180 to train on (loss on the responses only), 20 held out" in result.stderr
    assert b"bits per byte" in result.stdout
    return folder / "chat.pt"


def test_training_on_records_stores_the_template(chat_model):
    from gpt2_llm import load_checkpoint
    from gpt2_llm.instruct import TEMPLATES

    assert load_checkpoint(chat_model)["chat_template"] == TEMPLATES["alpaca"].to_checkpoint()


def test_predict_chat_answers_and_stops_at_the_end_of_its_turn(chat_model):
    one = run("predict", "--chat", "Say ok to Mia and red.", 20, chat_model, "--greedy")
    assert one.returncode == 0, one.stderr.decode()
    assert one.stdout == b"ok\n"  # the answer alone, not the template, and nothing after <|endoftext|>
    talk = run("predict", "--chat", chat_model, 20, "--greedy", stdin=b"Say ok to Leo.\n\nSay ok to me.\n")
    assert talk.returncode == 0, talk.stderr.decode()
    assert talk.stdout == b"> ok\n> > ok\n> "  # a blank line asks nothing


def test_predict_chat_needs_a_model_trained_on_records(trained):
    assert "was not trained on instruction records" in one_line_error(run("predict", "--chat", "Hi", 5, trained))


def test_a_run_on_records_resumes_and_eval_reads_records(chat_model, tmp_path):
    folder = chat_model.parent
    (tmp_path / "chat.pt").write_bytes(chat_model.read_bytes())
    more = run("train", folder / "data.jsonl", folder / "vocab.txt", "--out", tmp_path / "chat.pt", "--resume", "auto",
               "--steps", 64, "--device", "cpu")
    assert more.returncode == 0, more.stderr.decode()
    assert b"continuing" in more.stderr and b"step 64:" in more.stdout
    evaluated = run("eval", folder / "data.jsonl", tmp_path / "chat.pt")
    assert evaluated.returncode == 0, evaluated.stderr.decode()
    # Each record is longer than the tiny model's 64 tokens: cut from the prompt's side, the answers kept.
    expected = f"{folder / 'data.jsonl'}: 200 alpaca records (400 response tokens, 200 cut to the context), loss "
    assert evaluated.stdout.startswith(expected.encode())


def test_no_mask_prompt_is_recorded_in_the_checkpoint(chat_model, tmp_path):
    from gpt2_llm import load_checkpoint

    data = chat_model.parent / "data.jsonl"
    result = run("train", data, chat_model.parent / "vocab.txt", "--out", tmp_path / "all.pt", "--steps", 2,
                 "--no-mask-prompt", *RECORDS_TRAIN)
    assert result.returncode == 0, result.stderr.decode()
    assert b"(loss on every token (--no-mask-prompt))" in result.stderr
    assert load_checkpoint(tmp_path / "all.pt")["train_config"]["mask_prompt"] is False


@pytest.mark.parametrize("lines,message", [
    (['{"instruction": "a", "output": "b"}', '{"instruction": '], "data.jsonl:2: not a JSON line"),
    (['{"instruction": "a", "output": "b"}', '{"messages": [{"role": "assistant", "content": "x"}]}'],
     "data.jsonl:2: a chat (messages) record, but the records before it are Alpaca"),
    (['{"messages": [{"role": "user", "content": "x"}]}'], "data.jsonl:1: a chat record needs at least one assistant"),
    (['{"messages": [{"role": "narrator", "content": "x"}]}'], "data.jsonl:1: message 1 has the role 'narrator'"),
    (['{"instruction": "a", "output": "b"}'] * 3, "too few records: 3 give 3 for training and 0 for validation"),
])  # fmt: skip
def test_bad_records_are_one_line(tmp_path, lines, message):
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    line = one_line_error(run("train", tmp_path / "data.jsonl", *RECORDS_TRAIN, cwd=tmp_path))
    assert message in line
    assert not (tmp_path / "vocab.txt").exists() and not (tmp_path / "gpt2_model.pt").exists()


def test_init_from_a_model_of_text_on_instruction_records(short_run, tmp_path):
    """Chapter 7's road: a model trained on text, then fine-tuned on instructions with its own tokenizer."""
    from gpt2_llm import load_checkpoint

    data = write_records(tmp_path / "data.jsonl", 60)
    result = run("train", data, "--init-from", short_run, "--out", tmp_path / "chat.pt", *FINETUNE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    tuned, pretrained = load_checkpoint(tmp_path / "chat.pt"), load_checkpoint(short_run)
    assert tuned["chat_template"]["name"] == "alpaca" and tuned["data"]["kind"] == "instructions"
    assert tuned["tokenizer"]["hash"] == pretrained["tokenizer"]["hash"]
    answer = run("predict", "--chat", "Say ok to red and blue.", 5, tmp_path / "chat.pt", "--greedy")
    assert answer.returncode == 0, answer.stderr.decode()


def test_train_flags_are_made_from_the_config_fields():
    """GPT2Config's flags are generated from its fields, as TrainConfig's are: a flag left out is None
    (the preset's or the run's own value), a switch sets the value that is not the field's default."""
    args = main.build_parser().parse_args(["train", "t.txt", "--untied", "--no-bias", "--context", "32",
                                           "--kv-heads", "2", "--norm", "rmsnorm", "--rope", "--lr", "1e-3"])
    assert (args.tie_embeddings, args.bias, args.block_size, args.n_kv_head, args.norm, args.rope, args.lr) == (
        False, False, 32, 2, "rmsnorm", True, 1e-3)
    left_out = main.build_parser().parse_args(["train", "t.txt"])
    assert all(getattr(left_out, name) is None for name in ("tie_embeddings", "bias", "block_size", "rope", "mask_prompt"))
    assert main.build_parser().parse_args(["train", "t.txt", "--no-mask-prompt"]).mask_prompt is False
