"""Tests of basics.py: the shared error type and the atomic file writer."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import bpe
from basics import UserError, atomic_write


# ---- atomic_write: the one way files are replaced (vocab files, checkpoints, token caches) -------


def test_atomic_write_replaces_the_file_when_the_block_ends(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new")
        assert path.read_bytes() == b"old"  # nothing shows until the block is done
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_atomic_write_interrupted_keeps_the_old_file(tmp_path, error):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(error):
        with atomic_write(path) as f:
            f.write(b"half")
            raise error()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]  # no temporary file left behind


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the umask is read from /proc (Linux)")
def test_atomic_write_permissions_are_those_of_a_normal_file(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "atomic") as f:
            f.write(b"x")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    modes = [stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in ("atomic", "plain")]
    assert modes == [0o640, 0o640]  # not mkstemp's private 0600


def test_atomic_write_text_mode_is_utf8_with_newlines(tmp_path):
    with atomic_write(tmp_path / "t.txt", "w") as f:
        f.write("ünï 日本\nend\n")
    assert (tmp_path / "t.txt").read_bytes() == "ünï 日本\nend\n".encode("utf-8")
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "t.txt", "a"):
            pass


def test_the_tokenizer_and_the_package_share_the_one_error_type():
    from gpt2_llm.checkpoint import CheckpointError

    assert bpe.UserError is UserError and issubclass(bpe.TokenizerError, UserError)
    assert issubclass(CheckpointError, UserError)


def test_importing_basics_imports_nothing_of_the_project():
    code = "import sys, basics; print(sorted(m for m in sys.modules if m in ('bpe', 'torch') or m.startswith('gpt2_llm')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
