"""Who this process is in a `torchrun` launch, its device, and the few collectives the library uses.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process of rank 0, and every
collective below is the identity. NCCL joins the processes on GPUs, gloo on CPUs. Nothing else in the library
looks up `torch.distributed` by itself: whoever shares work across processes is handed a `Process`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pixeldiffusion.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class Process:
    rank: int = 0  # index of this process among all
    world_size: int = 1  # number of processes
    local_rank: int = 0  # index of this process on its machine (selects its GPU)
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and shows progress."""
        return self.rank == 0

    def share(self, n: int) -> range:
        """This process's contiguous share of n items (the first n % world processes take one more)."""
        size, extra = divmod(n, self.world_size)
        start = self.rank * size + min(self.rank, extra)
        return range(start, start + size + (self.rank < extra))

    def all_max(self, values: list[float]) -> list[float]:
        """The element-wise maximum of `values` over all processes (one small collective)."""
        if self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def all_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over all processes."""
        if self.world_size == 1:
            return value
        value = value.clone()
        dist.all_reduce(value)
        return value / self.world_size

    def all_gather(self, part: Any) -> list[Any]:
        """Every process's `part` (any picklable object), in rank order."""
        if self.world_size == 1:
            return [part]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, part)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """auto: the local CUDA device when there is one, else Apple's MPS when there is one, else the CPU."""
    if isinstance(name, torch.device):
        return name
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for, but this machine has no MPS device")
    return torch.device(name)


def launch_rank() -> int:
    """This process's rank in a torchrun launch (0 without one), known before the process group is joined."""
    return int(os.environ.get("RANK", "0"))


def setup(device: str | torch.device = "auto") -> Process:
    """Join the process group of a torchrun launch (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = launch_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    where = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if where.type == "cuda":
            torch.cuda.set_device(where)
        dist.init_process_group(backend="nccl" if where.type == "cuda" else "gloo")
    return Process(rank=rank, world_size=world_size, local_rank=local_rank, device=where)


def teardown(process: Process) -> None:
    """Leave the process group, all processes together (see docs/decisions.md, "Processes leave together")."""
    if process.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
