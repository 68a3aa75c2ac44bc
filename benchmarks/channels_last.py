"""Channels-last against contiguous training and sampling, interleaved in one process: the measurement behind the
default of `RuntimeConfig.channels_last` and `SampleConfig.channels_last` (runtime.use_channels_last).

Two Trainers (or Pipelines) of the same size and precision, one per memory layout, take alternating blocks of
steps (the order flipped every round), so a drift of the machine's speed falls on both alike. A training step is
one optimizer step; a sampling step is one `Pipeline.sample` call of SAMPLE_NFE network evaluations. Prints one
JSON record per task and precision.

    .venv/bin/python benchmarks/channels_last.py --out benchmarks/results/channels-last-2026-11-27.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path

import torch

from speed import SIZES, Case, host_info, interleaved, make_work, report, wait_for_idle

SAMPLE_NFE = 4


def compare(task: str, size: str, batch: int, precision: str, rounds: int, steps: int, compile: bool = False) -> dict:
    """Median images/s of each layout over `rounds` alternating blocks of `steps` steps."""
    work = {
        layout: make_work(
            Case(size, "pixeldiffusion", task, precision, compile, batch, "cpu", layout == "channels_last", SAMPLE_NFE)
        )
        for layout in ("nchw", "channels_last")
    }
    timing = interleaved(work, rounds=rounds, repeats=steps, warmup=3)  # warm-up: oneDNN picks its kernels
    seconds = timing["seconds"]
    speed = {layout: batch / statistics.median(s) for layout, s in seconds.items()}
    return {
        "task": task,
        "size": size,
        "batch": batch,
        "precision": precision,
        "compile": compile,
        "images_per_s": speed,
        "ratio_channels_last": speed["channels_last"] / speed["nchw"],
        "seconds_per_step": seconds,
        "others_cpu": timing["others_cpu"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="mnist-small", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tasks", default="train,sample")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile both layouts")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    p.add_argument("--out", type=Path, help="JSON-lines file the records are appended to")
    args = p.parse_args()
    if not wait_for_idle(0.2, 900, loadavg=False):
        print("warning: the machine stayed busy; the records say how busy")
    host = host_info(torch.device("cpu"))
    for task, precision in itertools.product(args.tasks.split(","), args.precisions.split(",")):
        record = {
            "host": host,
            **compare(task, args.size, args.batch, precision, args.rounds, args.steps, args.compile),
        }
        report(record, args.out, bulky=("host", "seconds_per_step"))


if __name__ == "__main__":
    main()
