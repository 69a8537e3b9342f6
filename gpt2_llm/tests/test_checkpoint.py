import os
import pickle
import random
import signal
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from gpt2_llm import CheckpointError, load, load_checkpoint, save_checkpoint, save_model
from bpe import UserError
from gpt2_llm.checkpoint import FORMAT_VERSION

def test_model_save_and_load_round_trip(tiny_model, tmp_path):
    path = tmp_path / "model.pt"
    save_model(tiny_model, path)
    checkpoint = load_checkpoint(path)
    assert checkpoint["format_version"] == FORMAT_VERSION
    assert checkpoint["model_config"] == asdict(tiny_model.config)
    loaded = load(path).model  # a new model, built from the stored config
    assert loaded.config == tiny_model.config
    ids = torch.randint(0, 97, (1, 12))
    assert torch.equal(loaded.eval()(ids)[0], tiny_model(ids)[0])
    assert loaded.lm_head.weight is loaded.wte.weight  # still tied after loading


def test_compiled_module_keys_are_stored_plain(tiny_model, tmp_path):
    state = {"_orig_mod." + k: v for k, v in tiny_model.state_dict().items()}
    save_checkpoint(tmp_path / "c.pt", {"model_config": asdict(tiny_model.config), "model": state})
    assert set(load_checkpoint(tmp_path / "c.pt")["model"]) == set(tiny_model.state_dict())
    load(tmp_path / "c.pt").model


def test_save_replaces_atomically_and_leaves_no_temporary_file(tiny_model, tmp_path):
    path = tmp_path / "model.pt"
    save_model(tiny_model, path)
    before = path.read_bytes()
    # A save that fails half way (an object torch.save cannot pickle) keeps the old file.
    with pytest.raises(Exception):
        save_checkpoint(path, {"model_config": {}, "model": {}, "bad": lambda: None})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="checkpoint is not a file"):
        load_checkpoint(tmp_path)


def test_truncated_checkpoint(tiny_model, tmp_path):
    path = tmp_path / "model.pt"
    save_model(tiny_model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="is not a readable checkpoint") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(text)
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    with pytest.raises(CheckpointError, match="is not a gpt2_llm checkpoint"):
        load_checkpoint(other)


def test_other_format_version(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format_version": 0, "model_config": {}, "model": {}}, path)
    expected = f"format version 0, but this version of gpt2_llm reads version {FORMAT_VERSION}"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)
    torch.save({"format_version": FORMAT_VERSION, "model": {}}, path)
    with pytest.raises(CheckpointError, match="is missing model_config"):
        load_checkpoint(path)


class RunsCode:
    """A pickle that would call os.system when unpickled without weights_only."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "model_config": {}, "model": RunsCode()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(path)
    with open(tmp_path / "plain.pkl", "wb") as f:  # a bare pickle, not even a torch file
        pickle.dump(RunsCode(), f)
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        load_checkpoint(tmp_path / "plain.pkl")
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_error_is_a_user_error():
    assert issubclass(CheckpointError, UserError)


def save_until_killed(path: Path, saved_fd: int) -> None:
    """In a forked child: save a checkpoint again and again, writing a byte to saved_fd after each."""
    import gc

    import numpy as np

    gc.disable()  # leave the objects inherited from the test process alone
    k = 0
    while True:
        k += 1
        # Made by numpy: no torch kernel runs in the fork (its thread pool belongs to the parent).
        save_checkpoint(path, {"model_config": {}, "model": {"w": torch.from_numpy(np.full(400_000, k, np.float32))}})
        os.write(saved_fd, b".")


def test_kill_during_save_never_corrupts(tmp_path):
    """SIGKILL a process that saves in a loop, at random moments: the file always loads, whole. The
    process is a fork of this one, which has imported torch already."""
    path = tmp_path / "ckpt.pt"
    rng = random.Random(0)
    for _ in range(8):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                save_until_killed(path, write_fd)
            finally:
                os._exit(1)  # never back into pytest
        os.close(write_fd)
        assert os.read(read_fd, 1) == b"."  # at least one save is complete
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)
        value = load_checkpoint(path)["model"]["w"]
        assert torch.all(value == value[0]) and value[0] >= 1  # one save's data, never a mix
        for leftover in tmp_path.glob(".*.tmp"):  # a killed writer may leave its temporary file; never the checkpoint
            leftover.unlink()
