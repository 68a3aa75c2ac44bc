"""Where a training step or a sampling run spends its time: PyTorch's profiler table of the operators (and, when
compiled, of inductor's generated kernels), sorted by their own time. The measurement behind the README's
account of the share of the peak.

    .venv/bin/python benchmarks/profile_ops.py --task sample --precision bf16 --compile
    .venv/bin/python benchmarks/profile_ops.py --task train --precision bf16 --channels-last
    .venv/bin/python benchmarks/profile_ops.py --task sample --precision bf16 --compile --library diffusers
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch._inductor.config
from torch.profiler import ProfilerActivity, profile

from speed import SIZES, Case, make_work


def profile_table(step: Callable, repeats: int, rows: int) -> str:
    """The profiler's table over `repeats` calls of `step`, after three untimed ones."""
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=80)
    per_call = sum(e.self_cpu_time_total for e in prof.key_averages()) / repeats / 1e6
    return f"{table}{per_call:.3f} s of CPU time per call, profiled\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("train", "sample"), default="train")
    p.add_argument("--library", choices=("pixeldiffusion", "diffusers"), default="pixeldiffusion")
    p.add_argument("--size", default="mnist-small", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: auto")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args()
    torch._inductor.config.cpp.enable_kernel_profile = True  # name inductor's kernels in the table
    # one training step, or one sampling run of 20 DDIM evaluations, exactly as speed.py times them
    fields = (args.size, args.library, args.task, args.precision, args.compile, args.batch, "cpu")
    step = make_work(Case(*fields, channels_last=args.channels_last))
    print(profile_table(step, args.repeats, args.rows))


if __name__ == "__main__":
    main()
