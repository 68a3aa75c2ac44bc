"""bf16 attention on the CPU: the fused bf16 kernel against the same heads in fp32, forward and backward (training)
or forward alone (sampling). The measurement behind `models.blocks.SMALL_HEAD`, the size below which `attend` runs
bf16 heads in fp32 when they need a gradient.

Each shape (batch, heads, tokens L, head dimension d) is timed three ways, interleaved: "bf16" (the bf16 flash
kernel), "routed" (bf16 in, fp32 kernel, bf16 out: what `attend` does below the limit) and "fp32". Prints one JSON
record per shape.

    .venv/bin/python benchmarks/attention.py --out benchmarks/results/attention-2026-11-27.jsonl
    .venv/bin/python benchmarks/attention.py --forward --out benchmarks/results/attention-forward-2026-11-27.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from pixeldiffusion.models.blocks import attend_in_fp32
from speed import host_info, interleaved, wait_for_idle

# (batch, heads, L, d): the 7x7 attention of the digits and mnist presets, CIFAR-10's 16x16, and neighbours
SHAPES = (
    (64, 4, 49, 16),
    (64, 1, 49, 64),
    (64, 8, 49, 8),
    (32, 4, 196, 16),
    (32, 2, 196, 32),
    (64, 1, 196, 64),
    (16, 2, 64, 128),
    (16, 4, 256, 16),
    (8, 4, 256, 64),
    (8, 1, 256, 256),
    (16, 4, 1024, 16),
    (8, 8, 1024, 32),
    (16, 1, 1024, 64),
)


KERNELS = {
    "bf16": (torch.bfloat16, F.scaled_dot_product_attention),
    "routed": (torch.bfloat16, attend_in_fp32),
    "fp32": (torch.float32, F.scaled_dot_product_attention),
}


def compare(shape: tuple[int, int, int, int], rounds: int, repeats: int, *, backward: bool) -> dict:
    """Median milliseconds of forward (+ backward) for each kernel, over `rounds` interleaved blocks."""
    g = torch.Generator().manual_seed(0)
    work = {}
    for name, (dtype, kernel) in KERNELS.items():
        q, k, v = (torch.randn(shape, generator=g).to(dtype).requires_grad_(backward) for _ in range(3))

        def step(q=q, k=k, v=v, kernel=kernel) -> None:
            if backward:
                kernel(q, k, v).float().sum().backward()
            else:
                with torch.inference_mode():
                    kernel(q, k, v)

        work[name] = step
    timing = interleaved(work, rounds=rounds, repeats=repeats, warmup=1)
    median = {name: 1000 * statistics.median(t) for name, t in timing["seconds"].items()}
    B, heads, L, d = shape
    return {
        "batch": B,
        "heads": heads,
        "tokens": L,
        "head_dim": d,
        "pass": "forward+backward" if backward else "forward",
        "ms": median,
        "speedup_routed": median["bf16"] / median["routed"],
        "others_cpu": timing["others_cpu"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3, help="passes per timed block")
    p.add_argument("--forward", action="store_true", help="time the forward pass alone, as sampling runs it")
    p.add_argument("--out", type=Path, help="JSON-lines file the records are appended to")
    args = p.parse_args()
    if not wait_for_idle(0.2, 900, loadavg=False):
        print("warning: the machine stayed busy; the records say how busy")
    host = host_info(torch.device("cpu"))
    for shape in SHAPES:
        record = compare(shape, args.rounds, args.repeats, backward=not args.forward)
        print(json.dumps(record), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps({"host": host, **record}) + "\n")


if __name__ == "__main__":
    main()
