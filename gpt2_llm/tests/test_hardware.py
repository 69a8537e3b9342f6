"""Tests of gpt2_llm/hardware.py: device and precision choice, autocast, peak FLOP/s for MFU."""

import json

import pytest
import torch

from bpe import UserError
from gpt2_llm import hardware
from gpt2_llm.hardware import autocast, cpu_has_bf16, pick_device, pick_dtype


def test_dtype_choice():
    assert pick_dtype("float32", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    auto = pick_dtype("auto", torch.device("cpu"))
    assert auto == (torch.bfloat16 if cpu_has_bf16() else torch.float32)


@pytest.mark.parametrize("name,message", [
    ("gpu", "--device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("cuda:x", "--device must be"),
])  # fmt: skip
def test_device_names_are_checked_with_one_line(name, message):
    with pytest.raises(UserError, match=message):
        pick_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_on_a_machine_without_it():
    with pytest.raises(UserError, match="no CUDA GPU is available here"):
        pick_device("cuda:0")


def test_autocast_is_off_for_float32_and_on_otherwise():
    x = torch.randn(4, 4)
    with autocast(torch.device("cpu"), torch.float32):
        assert (x @ x).dtype == torch.float32
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype == torch.bfloat16


def test_peak_flops_is_measured_once_and_cached(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda device, dtype: calls.append(dtype) or 1.5e12)
    cpu = torch.device("cpu")
    assert hardware.peak_flops(cpu, torch.bfloat16, tmp_path)[0] == 1.5e12
    assert hardware.peak_flops(cpu, torch.bfloat16, tmp_path)[0] == 1.5e12  # from the cache file
    assert calls == [torch.bfloat16]
    hardware.peak_flops(cpu, torch.float32, tmp_path)  # another dtype is another entry
    assert calls == [torch.bfloat16, torch.float32]
    assert len(json.loads((tmp_path / "peak_flops.json").read_text())) == 2


def test_gpu_peaks_come_from_the_table(monkeypatch):
    monkeypatch.setattr(hardware, "device_name", lambda device: "NVIDIA H100 80GB HBM3")
    flops, source = hardware.peak_flops(torch.device("cuda"), torch.bfloat16)
    assert flops == 989e12 and "data sheet" in source
    assert hardware.peak_flops(torch.device("cuda"), torch.float32)[0] == 989e12 / 2  # TF32
    monkeypatch.setattr(hardware, "device_name", lambda device: "NVIDIA H100 PCIe")
    assert hardware.peak_flops(torch.device("cuda"), torch.bfloat16)[0] == 756e12


def test_measured_matmul_flops_is_plausible():
    flops = hardware.measure_matmul_flops(torch.device("cpu"), torch.float32, 0.05)
    assert 1e9 < flops < 1e14


