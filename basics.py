"""The shared basics at the bottom of the project: the error type a user can fix, and the one
atomic file writer. The tokenizer (bpe.py) and the model package (gpt2_llm) both import this
module, and it imports nothing of theirs, so the tokenizer works without torch and no layer
reaches up.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator, Literal


class UserError(ValueError):
    """A problem the user can fix (a bad file, flag or value): the command line prints its one-line
    message and exits 1. The whole toolkit raises this type (or a subclass) for such problems, so
    that any other exception is a bug and keeps its traceback."""


# Writing files atomically: the one helper the project uses (vocab files, checkpoints, token caches).


def _umask_from_proc() -> int | None:
    """The umask as Linux shows it, read without changing it; None where /proc does not show it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next((int(line.split()[1], 8) for line in f if line.startswith("Umask:")), None)
    except OSError:
        return None


def _umask_by_setting() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Without /proc the umask can only be read by setting it and putting it back, and a file another
# thread created in between would get the wrong mode; so there it is read once, at import.
_UMASK_AT_IMPORT = None if _umask_from_proc() is not None else _umask_by_setting()


def _umask() -> int:
    mask = _umask_from_proc()
    return _UMASK_AT_IMPORT if mask is None else mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: Literal["wb", "w"] = "wb") -> Iterator[IO]:
    """Write a file so that readers see the old content or the new, never half of it.

        with atomic_write("vocab.txt", "w") as f:
            f.write(text)

    The block writes a temporary file in the same folder (so the final rename stays on one file
    system); when it ends, the file is flushed to disk, given the permissions a newly created file
    would have, and renamed over `path`, and the folder is synced so the rename survives a crash.
    If the block raises anything (Ctrl-C included), the temporary file is removed and `path` is
    left as it was. mode "wb" gives a binary file; "w" a text file, UTF-8 with "\n" line ends
    whatever the platform and locale.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        text = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        # mkstemp makes the file private (0600); the output should be as readable as any other.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
