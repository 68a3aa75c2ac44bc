"""Speed of pixeldiffusion's U-Net next to diffusers' UNet2DModel at a matched configuration, in the same run.

For each size: parameters and FLOPs per forward of both networks, then training images/s (the real
`Trainer.train_step` against the equivalent diffusers step) and sampling images/s at an equal number of network
evaluations (DDIM, 20 NFE; `Pipeline.sample` against a DDIMScheduler loop), in fp32 and with bf16 autocast, with
torch.compile off and/or on, with the peak memory of each measurement, the achieved FLOP/s as a share of the
machine's measured matmul peak, and the ratio ours / diffusers of every number. Size mnist-small-mp puts our EDM2
magnitude-preserving U-Net beside the same diffusers network as mnist-small; mnist-small-16 is the network at half
its width that MNIST budgets up to 10 minutes train. See benchmarks/README.md.

    .venv/bin/python benchmarks/speed.py                  # all sizes, waits for an idle machine
    .venv/bin/python benchmarks/speed.py --sizes tiny --repeats 1 --batch 2 --no-wait --no-memory  # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import multiprocessing
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import diffusers
import torch
import torch._inductor.config
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from pixeldiffusion.config import DataConfig, OptimConfig, RunConfig, RuntimeConfig
from pixeldiffusion.data import ImageData
from pixeldiffusion.interop.diffusers import unet_config_to_diffusers
from pixeldiffusion.models import UNetConfig, build_unet, preset
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.process import resolve_device
from pixeldiffusion.runtime import cpu_flags, cpu_has_amx, cpu_has_bf16
from pixeldiffusion.schedule import NoiseSchedule
from pixeldiffusion.training import Trainer

LIBRARIES = ("pixeldiffusion", "diffusers")
PRECISIONS = ("fp32", "bf16")
NFE = 20  # network evaluations per sampling run, for both libraries
WARMUP = {"train": 3, "sample": 1}  # untimed runs before timing (the first training step allocates AdamW's state)
POLL_S = 1.0  # window over which the CPU use of other processes is measured while waiting for an idle machine
MIN_WINDOW_S = 0.5  # shortest window for the CPU use of others during a measurement (/proc/stat counts in 10 ms)
COMPILE = {"off": (False,), "on": (True,), "both": (False, True)}  # which torch.compile settings get rows
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Size:
    config: UNetConfig  # the ADM network both libraries build
    batch: int  # default images per training step and per sampling run
    repeats: int  # default timed repeats
    block: str = "resnet"  # pixeldiffusion's block: "mp" runs EDM2's network against diffusers' ADM one

    @property
    def ours(self) -> UNetConfig:
        return dataclasses.replace(self.config, block=self.block)


SIZES = {
    "mnist-small": Size(preset("digits", image_size=28), batch=64, repeats=10),  # the CPU model of the MNIST runs
    "mnist-small-16": Size(preset("digits", image_size=28, base_channels=16), batch=64, repeats=10),  # <= 10 min
    "mnist-small-mp": Size(preset("digits", image_size=28), batch=64, repeats=10, block="mp"),
    "mnist": Size(preset("mnist"), batch=32, repeats=5),
    "cifar10": Size(preset("cifar10"), batch=8, repeats=3),  # 35.7M parameters (DDPM)
    "tiny": Size(preset("digits", image_size=8, base_channels=8), batch=4, repeats=3),  # smoke tests only
}


@dataclass(frozen=True)
class Case:
    """One measurement: a library doing one task at one size, precision and compilation setting."""

    size: str
    library: str
    task: str  # "train": one optimizer step; "sample": one sampling run of `nfe` network evaluations
    precision: str
    compile: bool
    batch: int
    device: str  # "cpu" or "cuda"
    channels_last: bool | None = None  # pixeldiffusion's layout; None: its default (diffusers always runs NCHW)
    graphs: bool = False  # compiled with CUDA graphs (torch.compile's "reduce-overhead" mode)
    nfe: int = NFE  # network evaluations per sampling run


# -- the matched networks ----------------------------------------------------------------------------


def diffusers_unet(config: UNetConfig) -> UNet2DModel:
    """diffusers' UNet2DModel with the same architecture as UNet(config), as `pixeldiffusion export` maps it (a
    ConversionError names what has no counterpart)."""
    values = unet_config_to_diffusers(config, null_class=False)
    return UNet2DModel.from_config({k: v for k, v in values.items() if not k.startswith("_")})


def build(library: str, size: Size, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return (build_unet(size.ours) if library == "pixeldiffusion" else diffusers_unet(size.config)).to(device)


def count_flops(library: str, model: torch.nn.Module, config: UNetConfig, *, backward: bool) -> int:
    """FLOPs of one forward (and backward) pass per image, counted by torch's FlopCounterMode. Attention runs
    in the math backend while counting, since the counter has no formula for the fused CPU kernel."""
    device = next(model.parameters()).device
    x = torch.randn(1, config.in_channels, config.image_size, config.image_size, device=device)
    t = torch.full((1,), 500, device=device)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(x, t) if library == "pixeldiffusion" else model(x, t).sample
        if backward:
            out.square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# -- one unit of work per case -----------------------------------------------------------------------


@dataclass(frozen=True)
class RandomImages(DataConfig):
    """Random uint8 pictures made in memory, so that the real Trainer runs without a dataset on disk."""

    dataset: str = "random"
    count: int = 64

    def load(self, split: str, image_size: int) -> ImageData:
        g = torch.Generator().manual_seed(0)
        shape = (self.count, self.channels, image_size, image_size)
        return ImageData(name="random", images=torch.randint(0, 256, shape, dtype=torch.uint8, generator=g))


def benchmark_trainer(config: UNetConfig, batch: int, **runtime) -> Trainer:
    """The real Trainer on random pictures, in training mode; `runtime`: RuntimeConfig fields (precision...)."""
    run = RunConfig(
        data=RandomImages(channels=config.in_channels, count=4 * batch),
        model=config,
        optim=OptimConfig(batch_size=batch),
        runtime=RuntimeConfig(**runtime),
    )
    trainer = Trainer(run, Path(tempfile.gettempdir()) / "pixeldiffusion-benchmark")  # writes nothing there
    trainer.model.train()
    return trainer


def make_work(case: Case) -> Callable[[], object]:
    """Build the case's model and return a function doing one unit of its work."""
    size, device = SIZES[case.size], torch.device(case.device)
    config = size.ours if case.library == "pixeldiffusion" else size.config
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=case.precision == "bf16")
    shape = (case.batch, config.in_channels, config.image_size, config.image_size)

    # a CUDA graph's outputs are overwritten by its next replay: each step or network evaluation begins a new one
    begin_step = torch.compiler.cudagraph_mark_step_begin if case.graphs else lambda: None
    mode = "reduce-overhead" if case.graphs else None

    if case.task == "train" and case.library == "pixeldiffusion":
        train = dict(precision=case.precision, compile=case.compile, channels_last=case.channels_last)
        step = benchmark_trainer(config, case.batch, device=case.device, **train).train_step
        if case.graphs:  # the forward half of TrainStep's step, compiled as it is but with CUDA graphs
            step.loss = torch.compile(step.forward_loss, mode=mode)
        return lambda: (begin_step(), step())

    model = build(case.library, size, device)
    net = torch.compile(model, mode=mode) if case.compile and case.library == "diffusers" else model

    if case.task == "train":  # diffusers' examples/unconditional_image_generation step, with Trainer's optimizer
        model.train()
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        ema = EMAModel(model.parameters(), foreach=True)
        clean = torch.rand(shape, device=device) * 2 - 1

        def train_step() -> None:
            begin_step()
            noise = torch.randn_like(clean)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (case.batch,), device=device)
            with autocast:
                loss = F.mse_loss(net(scheduler.add_noise(clean, noise, t), t).sample.float(), noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(model.parameters())

        return train_step

    model.eval()
    if case.library == "pixeldiffusion":  # the user's path: Pipeline.sample, with its own precision and compile
        pipeline = Pipeline(model, NoiseSchedule.from_config(), RunConfig(model=config))
        settings = dict(sampler="ddim", steps=case.nfe, spacing="trailing", precision=case.precision)
        settings |= dict(compile=case.compile, channels_last=case.channels_last)
        return lambda: pipeline.sample(case.batch, batch_size=case.batch, **settings).images

    x_T = torch.randn(shape, device=device, generator=torch.Generator(device).manual_seed(0))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="trailing")

    def sample_diffusers() -> torch.Tensor:
        scheduler.set_timesteps(case.nfe, device=device)
        x = x_T
        with torch.inference_mode(), autocast:
            for t in scheduler.timesteps:
                begin_step()
                x = scheduler.step(net(x, t).sample, t, x).prev_sample
        return x

    return sample_diffusers


# -- an idle machine ---------------------------------------------------------------------------------


def cpu_snapshot() -> tuple[float, float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process's threads, wall seconds)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), time.process_time(), time.perf_counter()


def others_cpu(start: tuple[float, float, float], end: tuple[float, float, float]) -> float:
    """Cores kept busy by other processes between two snapshots."""
    busy, own, wall = (e - s for s, e in zip(start, end, strict=True))
    return max(busy - own, 0.0) / wall


def wait_for_idle(max_load: float, timeout: float, *, loadavg: bool) -> bool:
    """Wait until other processes use at most max_load cores (and, with `loadavg`, the 1-minute load average
    is at most max_load too); False if still busy after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        start = cpu_snapshot()
        time.sleep(POLL_S)
        if others_cpu(start, cpu_snapshot()) <= max_load and (not loadavg or os.getloadavg()[0] <= max_load):
            return True
        if time.monotonic() > deadline:
            return False


# -- measurements ------------------------------------------------------------------------------------


def timed(work: Callable[[], object], *, warmup: int, repeats: int, device: torch.device, max_load: float) -> dict:
    """Seconds per run of `work` over `repeats` timed runs after `warmup` untimed ones, with the load of the
    machine around them; the result is void when other processes used more than max_load cores meanwhile
    (measured over at least MIN_WINDOW_S)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for _ in range(warmup):
        work()
    sync()
    loadavg_before, start, times = os.getloadavg()[0], cpu_snapshot(), []
    for _ in range(repeats):
        begin = time.perf_counter()
        work()
        sync()
        times.append(time.perf_counter() - begin)
    time.sleep(max(0.0, start[2] + MIN_WINDOW_S - time.perf_counter()))
    busy = others_cpu(start, cpu_snapshot())
    median = statistics.median(times)
    return {
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "spread": (max(times) - min(times)) / median,
        "times_s": times,
        "load": {"loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()[0], "others_cpu": busy},
        "void": busy > max_load,
    }


def interleaved(work: dict[str, Callable[[], object]], *, rounds: int, repeats: int, warmup: int) -> dict:
    """Seconds per call of each variant of `work`, timed in `rounds` alternating blocks of `repeats` calls (the order
    flipped every round, so a drift of the machine's speed falls on all alike) after `warmup` untimed calls each;
    with the cores other processes kept busy meanwhile."""
    for call in work.values():
        for _ in range(warmup):
            call()
    seconds: dict[str, list[float]] = {name: [] for name in work}
    start = cpu_snapshot()
    for r in range(rounds):
        for name in list(work)[:: 1 if r % 2 == 0 else -1]:
            begin = time.perf_counter()
            for _ in range(repeats):
                work[name]()
            seconds[name].append((time.perf_counter() - begin) / repeats)
    return {"seconds": seconds, "others_cpu": others_cpu(start, cpu_snapshot())}


# the operators (eager: aten's; compiled: inductor's kernels, named by enable_kernel_profile) by what they do; the
# first match wins, so a kernel fusing a convolution's epilogue into a GroupNorm counts as a convolution
OPERATOR_KINDS = {
    "conv_gemm": re.compile(r"conv|(^|[:_])(add|b|baddb)?mm\b|matmul|linear|scaled_dot_product|attention|gemm"),
    "norm_act": re.compile(r"(group|layer|batch|rms)_norm|silu|sigmoid|gelu|swish|mish"),  # not clipping's norm
}


def operator_kind(name: str) -> str:
    """Which share of a step an operator's own time belongs to: conv_gemm, norm_act or other."""
    return next((kind for kind, pattern in OPERATOR_KINDS.items() if pattern.search(name)), "other")


def breakdown(work: Callable[[], object], *, repeats: int, device: torch.device) -> dict:
    """Where a unit of work spends its time: the profiler's self time of every operator over `repeats` runs (after
    one untimed), summed by `operator_kind`, as shares of the profiled total (the profiler's overhead falls on all
    alike), with the names of the five largest operators of each kind."""
    work()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            work()
        if device.type == "cuda":
            torch.cuda.synchronize()
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    seconds: dict[str, dict[str, float]] = {kind: {} for kind in (*OPERATOR_KINDS, "other")}
    for event in prof.key_averages():
        if (spent := getattr(event, attribute)) > 0:
            seconds[operator_kind(event.key)][event.key] = spent / 1e6 / repeats
    total = sum(sum(ops.values()) for ops in seconds.values())
    return {
        kind: {
            "share": sum(ops.values()) / total if total else 0.0,
            "top": {k: round(v, 6) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:5]},
        }
        for kind, ops in seconds.items()
    }


def peak_flops(device: torch.device, size: int, repeats: int, max_load: float) -> dict:
    """The machine's matmul FLOP/s in fp32 and bf16: the best of several size x size products."""
    result = {"matmul_size": size}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
        timing = timed(lambda a=a, b=b: a @ b, warmup=1, repeats=max(repeats, 3), device=device, max_load=max_load)
        result[precision] = {"flop_per_s": 2 * size**3 / timing["min_s"], **timing}
    return result


def memory_probe(case: Case) -> dict:
    """Peak memory of the case, run in a fresh process: the high-water mark over the first units of work
    (training: two steps, so AdamW's state is included), in total and above what was held once the model,
    optimizer and data were built. CPU: resident set size (Linux); CUDA: torch's allocator."""
    work = make_work(case)
    gc.collect()
    if case.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    for _ in range(2 if case.task == "train" else 1):
        work()
    if case.device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = rss_bytes("VmHWM")
    return {"peak_mib": peak / 2**20, "above_setup_mib": (peak - base) / 2**20}


def rss_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS: now, VmHWM: high-water mark), in bytes."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def peak_memory(case: Case) -> dict:
    """`memory_probe` in a fresh interpreter, so nothing measured before shares its allocator."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(memory_probe, case).result()


def public(config: dict) -> dict:
    """A diffusers model configuration without its private keys."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return ours / theirs if ours is not None and theirs else None


def measure(case: Case, repeats: int, flops_per_image: int, peak: dict, args: argparse.Namespace) -> dict:
    """Time one case once the machine is idle; images/s, FLOP/s and its share of the matmul peak, peak memory."""
    idle = args.no_wait or wait_for_idle(args.max_load, args.wait_timeout, loadavg=False)
    device = torch.device(case.device)
    timing = timed(make_work(case), warmup=WARMUP[case.task], repeats=repeats, device=device, max_load=args.max_load)
    gc.collect()
    timing["load"]["idle_wait"] = "skipped" if args.no_wait else "idle" if idle else "timed out"
    flop_per_s = flops_per_image * case.batch / timing["median_s"]
    split = breakdown(make_work(case), repeats=max(1, repeats // 2), device=device) if args.breakdown else None
    if split:  # each kind's share of the profiled time, in seconds of the timed median
        split = {kind: {**part, "s": part["share"] * timing["median_s"]} for kind, part in split.items()}
    return {
        "images_per_s": case.batch / timing["median_s"],
        "flop_per_s": flop_per_s,
        "peak_share": flop_per_s / peak[case.precision]["flop_per_s"],
        **timing,
        "breakdown": split,
        "memory": peak_memory(case) if args.memory else None,
    }


def compile_settings(task: str, setting: str, device: torch.device) -> list[tuple[bool, bool]]:
    """The (compiled, CUDA graphs) rows of a task. On a GPU a compiled Pipeline samples with CUDA graphs, so
    diffusers' compiled sampling does too; compiled training gets a row without and one with them."""
    cuda = device.type == "cuda"
    compiled = COMPILE[setting] if setting != "auto" else COMPILE["both" if cuda else "off"]
    if task == "sample":
        return [(c, c and cuda) for c in compiled]
    return [(c, False) for c in compiled] + ([(True, True)] if cuda and True in compiled else [])


def bench_size(
    name: str, args: argparse.Namespace, device: torch.device, peak: dict, save: Callable[[dict], None]
) -> dict:
    """Every row of one size, both libraries side by side with their ratios; `save` gets the result so far after
    each row (a run cut short keeps what it measured)."""
    size = SIZES[name]
    config, batch, repeats = size.config, args.batch or size.batch, args.repeats or size.repeats
    models = {library: build(library, size, device) for library in LIBRARIES}
    params = {library: sum(p.numel() for p in m.parameters()) for library, m in models.items()}
    flops = {
        task: {library: count_flops(library, m, config, backward=task == "train") for library, m in models.items()}
        for task in ("forward", "train")
    }
    del models
    log(
        f"{name}: parameters {params['pixeldiffusion']:,} / {params['diffusers']:,} (diffusers), "
        f"FLOPs per forward {flops['forward']['pixeldiffusion']:.4g} / {flops['forward']['diffusers']:.4g}"
    )
    rows: list[dict] = []
    result = {
        "config": {
            "pixeldiffusion": dataclasses.asdict(size.ours),
            "diffusers": public(diffusers_unet(config).config),
        },
        "batch": batch,
        "repeats": repeats,
        "nfe": NFE,
        "params": {**params, "ratio": ratio(params["pixeldiffusion"], params["diffusers"])},
        "flops_per_image": {
            task: {**per_library, "ratio": ratio(per_library["pixeldiffusion"], per_library["diffusers"])}
            for task, per_library in flops.items()
        },
        "rows": rows,
    }
    for task in ("train", "sample"):
        for precision in PRECISIONS:
            for compiled, graphs in compile_settings(task, args.compile, device):
                row = {"task": task, "precision": precision, "compile": compiled, "cuda_graphs": graphs}
                for library in LIBRARIES:
                    per_image = flops["train"][library] if task == "train" else NFE * flops["forward"][library]
                    case = Case(name, library, task, precision, compiled, batch, device.type, graphs=graphs)
                    row[library] = measure(case, repeats, per_image, peak, args)
                ours, theirs = row["pixeldiffusion"], row["diffusers"]
                row["void"] = ours["void"] or theirs["void"]
                row["ratio"] = {
                    "images_per_s": ratio(ours["images_per_s"], theirs["images_per_s"]),
                    "peak_memory": ratio(*((r["memory"] or {}).get("above_setup_mib") for r in (ours, theirs))),
                }
                log(
                    f"{name} {task} {precision}{' compiled' if compiled else ''}{' + CUDA graphs' if graphs else ''}: "
                    f"{ours['images_per_s']:.1f} / {theirs['images_per_s']:.1f} img/s (diffusers), "
                    f"ratio {row['ratio']['images_per_s']:.2f}{'  VOID: the machine was busy' if row['void'] else ''}"
                    + "".join(f"; ours {k} {v['s'] * 1e3:.0f} ms" for k, v in (ours["breakdown"] or {}).items())
                )
                rows.append(row)
                save(result)
    return result


# -- the report --------------------------------------------------------------------------------------


def host_info(device: torch.device) -> dict:
    cpuinfo = cpu_flags()
    model_name = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), None)
    status = git("status", "--porcelain")
    return {
        "hostname": platform.node(),
        "cpu": model_name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": cpu_has_bf16(),
        "cpu_amx": cpu_has_amx(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "pixeldiffusion_commit": git("rev-parse", "HEAD"),
        "pixeldiffusion_dirty": None if status is None else bool(status),  # uncommitted changes in the checkout
    }


def git(*args: str) -> str | None:
    """The output of a read-only git command in this checkout; None without git or outside a checkout."""
    try:
        done = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), *args], capture_output=True, text=True
        )
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def report(record: dict, out: Path | None, *, bulky: tuple[str, ...]) -> None:
    """Print a record without its `bulky` fields, and append the whole of it to the JSON-lines file `out`."""
    print(json.dumps({k: v for k, v in record.items() if k not in bulky}), flush=True)
    if out:
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="mnist-small,mnist,cifar10", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (default: per size)")
    parser.add_argument("--batch", type=int, help="images per training step and sampling run (default: per size)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, help="JSON file to write (default: results/DATE-HOST.json)")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for an idle machine")
    parser.add_argument("--max-load", type=float, default=0.2, help="cores other processes may use (default 0.2)")
    parser.add_argument("--wait-timeout", type=float, default=900, help="seconds to wait for idle (default 900)")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="peak memory probes")
    parser.add_argument(
        "--breakdown",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="profile each case: its time in convolutions/GEMMs, normalisation/activations and the rest",
    )
    parser.add_argument(
        "--compile",
        default="auto",
        choices=tuple(COMPILE) + ("auto",),
        help="torch.compile rows (auto: both on CUDA, off on CPU)",
    )
    parser.add_argument("--matmul-size", type=int, default=4096, help="matrix size of the peak FLOP/s measurement")
    args = parser.parse_args(argv)
    args.sizes = args.sizes.split(",")
    if unknown := set(args.sizes) - set(SIZES):
        parser.error(f"unknown size(s) {', '.join(sorted(unknown))}; choose from {', '.join(SIZES)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print its JSON report to stdout, write it to --out and return it."""
    args = parse_args(argv)
    # inductor's kernels named in the profile (else their time is the compiled region's, in "other"); set before any
    # compilation, it adds a profiler check to each kernel of the timed runs as well
    torch._inductor.config.cpp.enable_kernel_profile = args.breakdown
    device = resolve_device(args.device)
    started = datetime.now()
    if not args.no_wait and not wait_for_idle(args.max_load, args.wait_timeout, loadavg=True):
        log(f"the machine is still busy after {args.wait_timeout:.0f} s; measuring anyway (busy rows are void)")
    peak = peak_flops(device, args.matmul_size, args.repeats or 5, args.max_load)
    fp32, bf16 = (peak[p]["flop_per_s"] / 1e9 for p in PRECISIONS)
    log(f"peak matmul: {fp32:.1f} GFLOP/s fp32, {bf16:.1f} GFLOP/s bf16")
    report = {
        "schema": 1,
        "created": started.isoformat(timespec="seconds"),
        "host": host_info(device),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "peak": peak,
        "sizes": {},
    }
    out = args.out or RESULTS / f"{started:%Y-%m-%d-%H%M%S}-{platform.node()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(name: str, result: dict) -> None:
        report["sizes"][name] = result
        out.write_text(json.dumps(report, indent=2) + "\n")

    for name in args.sizes:
        bench_size(name, args, device, peak, lambda result, name=name: save(name, result))
    print(json.dumps(report, indent=2))
    log(f"written to {out}")
    return report


if __name__ == "__main__":
    main()
