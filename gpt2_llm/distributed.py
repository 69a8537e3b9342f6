"""Several processes under torchrun: which one this is, and the few numbers they exchange.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE in each process it starts. Without
it (WORLD_SIZE unset) this is a world of one process and every method below is a no-op.
"""

from __future__ import annotations

import inspect
import os

import torch
import torch.distributed as dist


class Distributed:
    """This process's place in a torchrun job; world_size 1 (and no process group) otherwise.

    torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; the process group uses NCCL between GPUs and
    gloo between CPU processes. `control` is a gloo group for the small messages the ranks
    exchange every step, so that agreeing on them never waits for the GPU.
    """

    _control = None  # the gloo group, made once per process (every rank must make it, in step)

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if self.world_size > 1:
            if not dist.is_initialized():
                backend = "nccl" if torch.cuda.is_available() else "gloo"
                if backend == "nccl":
                    torch.cuda.set_device(self.local_rank)
                dist.init_process_group(backend)
            if Distributed._control is None:
                Distributed._control = dist.new_group(backend="gloo")
        self.control = Distributed._control

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_name(self, name: str) -> str:
        """Each rank on its own GPU: "auto" or "cuda" becomes cuda:LOCAL_RANK."""
        if self.world_size > 1 and torch.cuda.is_available() and name in ("auto", "cuda"):
            return f"cuda:{self.local_rank}"
        return name

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(self.control)

    def close(self) -> None:
        """Leave together: wait for every rank, then take the process group down (a rank that
        exits while another still holds a connection can make the other abort)."""
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier(self.control)
            dist.destroy_process_group()
            Distributed._control = None

    def max(self, values: list[float]) -> list[float]:
        """The elementwise maximum over all ranks of a few numbers (one small message)."""
        return self._all_reduce(values, dist.ReduceOp.MAX)

    def sum(self, values: list[float]) -> list[float]:
        """The elementwise sum over all ranks of a few numbers."""
        return self._all_reduce(values, dist.ReduceOp.SUM)

    def _all_reduce(self, values: list[float], op) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=op, group=self.control)
        return t.tolist()

    def gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of a CPU tensor of the same shape, in rank order."""
        if self.world_size == 1:
            return [tensor]
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor, group=self.control)
        return parts


def wrap_for_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model in DistributedDataParallel: gradients are averaged across ranks during backward."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    # The only buffers are RoPE's fixed tables: nothing to send before each forward pass (the
    # option's name changed in torch 2.13).
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})  # fmt: skip
    return DistributedDataParallel(model, device_ids=device_ids, **no_sync)
