"""Runtime policies: which precision, memory layout and compilation a device gets when the user leaves them unset.

Each default is a measurement on this project's machines; the numbers are in docs/decisions.md and the README's
Speed section.
"""

from __future__ import annotations

from pathlib import Path

import torch

# A CPU run with a time budget at least this long compiles when --compile is unset (compiling wins back its
# ~85 s after about 8 minutes on 2 cores).
COMPILE_PAYS_MINUTES = 10


def cpu_flags() -> str:
    """The CPU's feature flags as Linux lists them ("" elsewhere)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_amx() -> bool:
    """Whether the CPU has AMX's bf16 tile multiply, whose convolutions run twice as fast channels-last."""
    return "amx_bf16" in cpu_flags()


def use_bf16(precision: str, device: torch.device) -> bool:
    """precision "auto": bf16 autocast on CUDA and on CPUs with bf16 instructions, fp32 elsewhere (MPS included)."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def use_compile(setting: bool | None, device: torch.device, minutes: float | None = None) -> bool:
    """compile unset: on CUDA, and on the CPU for runs with a time budget of at least COMPILE_PAYS_MINUTES (a run
    budgeted in steps has no known length, so it compiles only when asked)."""
    if setting is not None:
        return setting
    return device.type == "cuda" or (device.type == "cpu" and (minutes or 0.0) >= COMPILE_PAYS_MINUTES)


def use_channels_last(setting: bool | None, device: torch.device, bf16: bool) -> bool:
    """channels_last unset: NHWC on CUDA (what tensor-core convolutions want) and in fp32 on the CPU (faster
    there); not in bf16 on the CPU, where torch's channels-last GroupNorm is slower."""
    return setting if setting is not None else device.type == "cuda" or (device.type == "cpu" and not bf16)


def training_compile_options(device: torch.device, channels_last: bool) -> dict[str, bool]:
    """inductor options for the training step. In NCHW on a CPU without AMX, keep that layout: inductor would make
    the convolutions channels-last, which gains them little there, while GroupNorm then reduces groups of 2-4
    adjacent channels with masked vector loads (docs/decisions.md, "inductor's layout for training"). With AMX,
    whose convolutions run twice as fast channels-last, and in sampling, where it measured faster, inductor chooses."""
    return {"layout_optimization": False} if device.type == "cpu" and not channels_last and not cpu_has_amx() else {}
