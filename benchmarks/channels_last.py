"""Channels-last against contiguous training, interleaved in one process: the measurement behind the default of
`TrainConfig.channels_last` (distributed.use_channels_last).

Two Trainers of the same size and precision, one per memory layout, take alternating blocks of steps (the order
flipped every round), so a drift of the machine's speed falls on both alike. Prints one JSON record per precision.

    .venv/bin/python benchmarks/channels_last.py --out benchmarks/results/channels-last-2026-11-27.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from speed import SIZES, benchmark_trainer, cpu_snapshot, host_info, others_cpu, wait_for_idle


def compare(size: str, batch: int, precision: str, rounds: int, steps: int) -> dict:
    """Median images/s of each layout over `rounds` alternating blocks of `steps` steps."""
    trainers = {}
    for layout in ("nchw", "channels_last"):
        trainers[layout] = benchmark_trainer(
            SIZES[size].config, batch, precision=precision, compile=False, channels_last=layout == "channels_last"
        )
    for t in trainers.values():
        for _ in range(3):  # warm-up: oneDNN picks its kernels
            t.train_step()
    seconds: dict[str, list[float]] = {layout: [] for layout in trainers}
    start = cpu_snapshot()
    for r in range(rounds):
        for layout in list(trainers)[:: 1 if r % 2 == 0 else -1]:
            begin = time.perf_counter()
            for _ in range(steps):
                trainers[layout].train_step()
            seconds[layout].append((time.perf_counter() - begin) / steps)
    speed = {layout: batch / statistics.median(s) for layout, s in seconds.items()}
    return {
        "size": size,
        "batch": batch,
        "precision": precision,
        "images_per_s": speed,
        "ratio_channels_last": speed["channels_last"] / speed["nchw"],
        "seconds_per_step": seconds,
        "others_cpu": others_cpu(start, cpu_snapshot()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="mnist-small", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=5, help="training steps per timed block")
    p.add_argument("--out", type=Path, help="JSON-lines file the records are appended to")
    args = p.parse_args()
    if not wait_for_idle(0.2, 900, loadavg=False):
        print("warning: the machine stayed busy; the records say how busy")
    host = host_info(torch.device("cpu"))
    for precision in args.precisions.split(","):
        record = {"host": host, **compare(args.size, args.batch, precision, args.rounds, args.steps)}
        print(json.dumps({k: v for k, v in record.items() if k not in ("host", "seconds_per_step")}), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
