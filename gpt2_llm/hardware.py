"""The machine under the trainer: which device and precision to use, how to set up the CPU, and how
many FLOP/s the device can do at best (the denominator of MFU, model FLOPs utilisation).

    MFU = model FLOPs per token (GPT2.flops_per_token) x tokens per second / peak FLOP/s

The peak comes from a table of data-sheet figures for known GPUs, or else is measured once with a
short matrix-product probe in the run's precision and cached in the cache folder
($GPT2_TOOLKIT_CACHE or ~/.cache/gpt2-toolkit), keyed by the device's name, dtype and threads.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from basics import UserError, atomic_write

from .config import DEVICE_NAMES, is_device_name

# Dense bf16/fp16 tensor-core peaks from NVIDIA's data sheets (FLOP/s), by a part of the name
# torch.cuda.get_device_name gives; the first match wins, so more specific names come first.
# float32 runs use TF32 on these GPUs, whose peak is half the bf16 one.
GPU_PEAK_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM (the names say "HBM3")
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("RTX 4090", 165e12),
)


def cpu_has_bf16() -> bool:
    """Does this CPU multiply bf16 in hardware (Intel AMX or AVX512-BF16)? Linux only; else False."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def pick_device(name: str) -> torch.device:
    """The device a --device flag names, or a UserError when it names none that is here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not is_device_name(name):
        raise UserError(f"--device must be {DEVICE_NAMES}, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available here (try --device auto)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPUs")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: MPS is not available here (try --device auto)")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 where the hardware has it, float32 elsewhere (auto)."""
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for a forward pass: autocast to dtype, or nothing for float32."""
    from contextlib import nullcontext

    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def setup_device(device: torch.device, local_processes: int = 1) -> list[str]:
    """Make the device fast for training; returns notes on what was set, for the start-up log.

    CUDA: TF32 for float32 matrix products (bf16 runs do not care). CPU: the cores shared among the
    processes of this machine (torchrun already sets OMP_NUM_THREADS=1 unless told otherwise), and
    an allocator that keeps freed memory (see keep_freed_memory).
    """
    notes = []
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu":
        if "OMP_NUM_THREADS" not in os.environ and local_processes > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))
        notes.append(f"{torch.get_num_threads()} threads")
        if keep_freed_memory():
            notes.append("freed memory kept for reuse")
    return notes


def available_memory(device: torch.device) -> int | None:
    """Bytes a run can still take on `device`: free GPU memory, or the memory the system reports
    available on a CPU (MemAvailable: free plus what the page cache would give back). None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory instead of handing it back to the system.

    A training step allocates the same large buffers (activations, logits, gradients) every time.
    By default glibc serves each block over 32 MB with a fresh mmap and unmaps it when freed, so
    every step the kernel zeroes and maps those pages again (BENCHMARKS.md says what that cost). With mmap off the blocks come from the heap, and a large trim threshold keeps the
    heap from shrinking between steps. (Threads with arenas of their own still get large blocks:
    glibc falls back to mmap when their capped heaps cannot grow.) Linux with glibc only.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


# ---- peak FLOP/s ---------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine()
    return device.type


def peak_flops(device: torch.device, dtype: torch.dtype, cache_dir: Path | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one device in this precision, where that figure comes from)."""
    name = device_name(device)
    if device.type == "cuda":
        for part, bf16 in GPU_PEAK_BF16:
            if part in name:
                flops = bf16 / 2 if dtype == torch.float32 else bf16
                return flops, f"the data sheet of the {name}, dense {'TF32' if dtype == torch.float32 else 'bf16'}"
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    key = f"{name} | {str(dtype).removeprefix('torch.')} | {threads} threads"
    if cache_dir is None:
        from .data import default_cache_dir

        cache_dir = default_cache_dir()
    path = Path(cache_dir) / "peak_flops.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = measure_matmul_flops(device, dtype)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, "w") as f:
                json.dump(known, f, indent=1)
        except OSError:
            pass  # an unwritable cache only costs the probe again next time
    return known[key], f"a {str(dtype).removeprefix('torch.')} matrix product measured on {name} with {threads} threads, cached in {path}"


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, budget_s: float = 0.3) -> float:
    """The best FLOP/s of square matrix products of a few sizes: what the device can reach at best.

    Sizes grow while a product stays well inside the budget: the next one is 8 times the work, and
    a precision the device only emulates (float16 on most CPUs) would otherwise take minutes."""
    sizes = (512, 1024, 2048, 4096) if device.type == "cpu" else (4096, 8192)
    best = 0.0
    for n in sizes:
        if best and 2 * n**3 / best > budget_s:
            break
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # first call: kernel choice, memory
        synchronize(device)
        runs, spent = 0, 0.0
        while runs == 0 or spent < budget_s:  # the fastest run: the least disturbed by anything else
            start = time.perf_counter()
            a @ b
            synchronize(device)
            took = time.perf_counter() - start
            best, runs, spent = max(best, 2 * n**3 / took), runs + 1, spent + took
    return best


def synchronize(device: torch.device) -> None:
    """Wait for the device to finish its queued work (a timing's end); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()

