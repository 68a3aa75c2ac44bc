"""Training curves and sample grids in TensorBoard, through a callback: `train(..., callbacks=(logger,))`.

Needs the `tensorboard` extra. The scalars are the lines of the run's metrics.jsonl, so TensorBoard shows
exactly what `pixeldiffusion show run` plots.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixeldiffusion.errors import PixelDiffusionError

if TYPE_CHECKING:  # hints only: tensorboard is optional, and training may come to import this module
    from torch.utils.tensorboard import SummaryWriter

    from pixeldiffusion.training import RunView

SAMPLES = 16  # images in each logged grid


def tensorboard_logger(log_dir: str | Path, *, every: int = 1000) -> Callable[[RunView], None]:
    """A training callback writing TensorBoard events to `log_dir`, on the main process only: each new line of
    metrics.jsonl as scalars (train/loss, train/lr, ..., eval/fd, ...) and, every `every` steps, a grid of
    samples from the EMA weights (the main process samples alone, without collectives)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise PixelDiffusionError(
            "logging to TensorBoard needs the tensorboard package: pip install 'pixeldiffusion[tensorboard]'"
        ) from e
    if every < 1:
        raise PixelDiffusionError(f"TensorBoard image interval must be at least 1 step, got {every}")
    writer = None
    read = 0  # bytes of metrics.jsonl already logged

    def log(run: RunView) -> None:
        nonlocal writer, read
        if not run.process.is_main:
            return
        writer = writer or SummaryWriter(str(log_dir))
        metrics = run.run_dir / "metrics.jsonl"
        if metrics.exists() and metrics.stat().st_size > read:
            with open(metrics, "rb") as f:
                f.seek(read)
                text = f.read()
            complete = text[: text.rfind(b"\n") + 1]  # a line still being written waits for the next call
            read += len(complete)
            for line in complete.decode().splitlines():
                _add_scalars(writer, json.loads(line))
        if run.step % every == 0:
            _add_samples(writer, run)
        writer.flush()

    return log


def _add_scalars(writer: SummaryWriter, record: dict) -> None:
    """One metrics.jsonl line as scalars at its step, under eval/ for evaluation lines and train/ otherwise."""
    group = "eval" if record.get("kind") == "eval" else "train"
    for name, value in record.items():
        if name not in ("step", "kind") and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(f"{group}/{name}", value, record["step"])


def _add_samples(writer: SummaryWriter, run: RunView) -> None:
    """A grid of samples from the EMA weights with the run's sampling settings (every class in turn)."""
    grid = run.pipeline().sample(SAMPLES).grid().convert("RGB")
    writer.add_image("samples", np.asarray(grid), run.step, dataformats="HWC")
