"""Who this process is in a `torchrun` launch, and the device it trains on.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process of rank 0.
NCCL joins the processes on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pixeldiffusion.errors import ConfigError


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


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """auto: the local CUDA device when there is one, else the CPU."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """precision "auto": bf16 autocast on CUDA and on CPUs with bf16 instructions, fp32 elsewhere."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


# A CPU run with a time budget at least this long compiles its network when --compile is unset (use_compile).
COMPILE_PAYS_MINUTES = 10


def use_compile(setting: bool | None, device: torch.device, minutes: float = 0.0) -> bool:
    """compile unset: torch.compile the training network on CUDA, and on the CPU for runs with a time budget of at
    least COMPILE_PAYS_MINUTES. Here, compiling the MNIST network took 85 s on 2 cores (empty inductor cache) and
    made the bf16 step 23% faster, which wins the compile time back after about 8 minutes; a run budgeted in steps
    has no known length, so it compiles only when asked (README, Speed)."""
    if setting is not None:
        return setting
    return device.type == "cuda" or minutes >= COMPILE_PAYS_MINUTES


def use_channels_last(setting: bool | None, device: torch.device, bf16: bool) -> bool:
    """channels_last unset: train and sample with NHWC weights and activations on CUDA (what its tensor-core
    convolutions want) and in fp32 on the CPU, where oneDNN's convolutions made MNIST training 8% and sampling 15%
    faster here; not in bf16 on the CPU, where they made them 16% and 23% slower (benchmarks/channels_last.py;
    README, Speed)."""
    return setting if setting is not None else device.type == "cuda" or not bf16


def setup(device: str = "auto") -> Process:
    """Join the process group of a torchrun launch (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    where = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if where.type == "cuda":
            torch.cuda.set_device(where)
        dist.init_process_group(backend="nccl" if where.type == "cuda" else "gloo")
    return Process(rank=rank, world_size=world_size, local_rank=local_rank, device=where)
