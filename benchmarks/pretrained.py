"""Sampling speed of an imported diffusers model: pixeldiffusion's DDIM (`Pipeline.sample` on the converted U-Net)
against diffusers' own `DDIMPipeline` on the same `UNet2DModel`, at the same batch and number of steps.

The model is google/ddpm-cifar10-32's architecture (its config.json, 35.7M parameters) with random weights, so that
nothing is downloaded; speed does not depend on the weights' values. Both run fp32 on the CPU, eager and then under
torch.compile; pixeldiffusion's default precision (bf16 autocast where the CPU has it) is one more row. Variants are
timed in alternating rounds so that a drift of the machine's speed falls on all of them alike.

    .venv/bin/python benchmarks/pretrained.py                                              # the README's numbers
    .venv/bin/python benchmarks/pretrained.py --size tiny --steps 2 --repeats 1 --rounds 1 --no-compile  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import diffusers
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from pixeldiffusion.pipeline import Pipeline

# google/ddpm-cifar10-32's unet config.json
CIFAR10_32 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    norm_num_groups=32,
    norm_eps=1e-6,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    dropout=0.1,
)
SIZES = {"cifar10-32": CIFAR10_32, "tiny": CIFAR10_32 | dict(sample_size=8, block_out_channels=(32, 32, 32, 32))}


def variants(size: str, batch: int, steps: int, compile: bool) -> dict[str, Callable[[], object]]:
    """One sampling run of `batch` images in `steps` DDIM steps, per library and setting."""
    torch.manual_seed(0)
    unet = UNet2DModel(**SIZES[size]).eval()
    with tempfile.TemporaryDirectory() as folder:
        DDPMPipeline(unet, DDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder)
        ours = Pipeline.from_pretrained(folder, device="cpu")
    scheduler = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")

    def theirs(network: torch.nn.Module) -> Callable[[], object]:
        pipeline = DDIMPipeline(network, scheduler)
        pipeline.set_progress_bar_config(disable=True)
        return lambda: pipeline(batch_size=batch, num_inference_steps=steps, output_type="np")

    def mine(**settings) -> Callable[[], object]:
        return lambda: ours.sample(batch, sampler="ddim", steps=steps, spacing="trailing", **settings).images

    runs = {
        "diffusers DDIMPipeline, fp32": theirs(unet),
        "pixeldiffusion, fp32": mine(precision="fp32"),
        "pixeldiffusion, default precision": mine(precision="auto"),
    }
    if compile:
        runs["diffusers DDIMPipeline, fp32, compiled"] = theirs(torch.compile(unet))
        runs["pixeldiffusion, fp32, compiled"] = mine(precision="fp32", compile=True)
    return runs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="cifar10-32")
    parser.add_argument("--batch", type=int, default=8, help="images per sampling run")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps (network evaluations) per run")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds over the variants")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="compiled rows")
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args(argv)

    runs = variants(args.size, args.batch, args.steps, args.compile)
    warmup = {}
    for name, run in runs.items():  # the first call compiles, and allocates everything
        begin = time.perf_counter()
        run()
        warmup[name] = time.perf_counter() - begin
    loadavg_before = os.getloadavg()[0]
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name in list(runs)[:: 1 if r % 2 == 0 else -1]:
            for _ in range(args.repeats):
                begin = time.perf_counter()
                runs[name]()
                seconds[name].append(time.perf_counter() - begin)
    baseline = statistics.median(seconds["diffusers DDIMPipeline, fp32"])
    rows = {
        name: {
            "median_s": statistics.median(times),
            "images_per_s": args.batch / statistics.median(times),
            "speedup_over_diffusers_eager": baseline / statistics.median(times),
            "first_call_s": warmup[name],
            "times_s": times,
        }
        for name, times in seconds.items()
    }
    report = {
        "settings": vars(args),
        "host": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "loadavg_before": loadavg_before,
            "loadavg_after": os.getloadavg()[0],
        },
        "rows": rows,
    }
    for name, row in rows.items():
        print(
            f"{name:42s} {row['median_s']:7.2f} s per run, {row['images_per_s']:6.2f} images/s, "
            f"x{row['speedup_over_diffusers_eager']:.2f} (first call {row['first_call_s']:.1f} s)",
            file=sys.stderr,
        )
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
