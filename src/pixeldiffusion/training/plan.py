"""The plan of a run as pure functions of (config, step): which images a step draws, its learning rate and the
EMA's decay. Nothing here keeps state, so a resumed run and every process of a launch compute the same values."""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from pixeldiffusion.seeding import generator


def total_steps(max_steps: int | None, epochs: float | None, dataset_size: int, batch_size: int) -> int | None:
    """The step at which the run ends: the earlier of max_steps and `epochs` passes over the data (None: time only)."""
    bounds = [s for s in (max_steps, epochs and math.ceil(epochs * dataset_size / batch_size)) if s]
    return min(bounds) if bounds else None


@lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, dataset_size: int, device: torch.device | str) -> torch.Tensor:
    """The permutation of the dataset for one pass over it, from the stream (seed, "data-order", epoch), moved to
    the device once per epoch (cached) rather than once per step."""
    return torch.randperm(dataset_size, generator=generator(seed, "data-order", epoch)).to(device)


def batch_indices(
    seed: int, step: int, dataset_size: int, batch_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Indices of a step's global batch: positions [step B, (step + 1) B) of the endless sequence of epoch
    permutations. A batch may straddle two epochs, so no image is dropped, and a dataset smaller than the
    batch still trains (each batch then holds every image about B / N times)."""
    start, stop = step * batch_size, (step + 1) * batch_size
    first, last = start // dataset_size, (stop - 1) // dataset_size
    order = torch.cat([epoch_order(seed, e, dataset_size, device) for e in range(first, last + 1)])
    offset = start - first * dataset_size
    return order[offset : offset + batch_size]


def learning_rate(
    step: int,
    *,
    lr: float,
    warmup_steps: int,
    decay: str,
    total_steps: int | None,
    elapsed: float = 0.0,
    budget_s: float | None = None,
) -> float:
    """Linear warm-up over warmup_steps, then cosine, linear or no decay to zero at the end of the run (`progress`)."""
    return decayed_rate(lr, step, warmup_steps, decay, progress(step, total_steps, elapsed, budget_s))


def progress(step: int, total_steps: int | None, elapsed: float = 0.0, budget_s: float | None = None) -> float:
    """How far a run is, from 0 to 1: the larger of step / total_steps and elapsed / budget_s (a time budget)."""
    done = step / total_steps if total_steps else 0.0
    if budget_s:
        done = max(done, elapsed / budget_s)
    return min(done, 1.0)


def decayed_rate(lr: float, step: int, warmup_steps: int, decay: str, progress: float) -> float:
    """lr after a linear warm-up over warmup_steps and a cosine, linear or no decay to zero at progress 1."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    shape = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}
    return lr * warm * shape[decay]


def ema_halflife(step: int, halflife: float, rampup: float) -> float:
    """The EMA's half-life in steps at `step`: the configured one, capped early at rampup * step (EDM's ramp-up)."""
    return min(halflife, rampup * step)


def ema_decay(step: int, halflife: float, rampup: float) -> float:
    """Per-step EMA decay for the half-life at `step`: decay = 0.5 ** (1 / ema_halflife(step, ...))."""
    h = ema_halflife(step, halflife, rampup)
    return 0.5 ** (1 / h) if h > 0 else 0.0
