"""A diffusers baseline for issue 8: train diffusers' UNet2DModel on MNIST for a fixed wall-clock budget, the way
diffusers' official unconditional example (examples/unconditional_image_generation) does, sample it with DDIM, and
score the samples with pixeldiffusion's own evaluation (classifier Frechet distance, KID, precision/recall, class
coverage, memorisation).

What it takes from the official example: UNet2DModel, DDPMScheduler (1000 steps, linear betas), the epsilon MSE
loss, AdamW with its betas (0.95, 0.999) and weight decay 1e-6, a linear warm-up of 500 steps then cosine decay
(`get_scheduler("cosine")`), gradient clipping at 1, EMAModel with its warm-up (inv_gamma 1, power 3/4, at most
0.9999), bf16 mixed precision (as `--mixed_precision bf16`), and sampling from the EMA weights. The example counts
its schedule in steps; under a time budget the number of steps is estimated from the measured speed of the first
50 steps. What it changes: the data stay in memory as one tensor (as pixeldiffusion's do), no random flips
(digits are not symmetric), and DDIM at 50 steps instead of DDPM's 1000 to sample.

    python benchmarks/diffusers_baseline.py --data-dir ../shared/data/mnist --minutes 30 --attention-at 0 \
        --channels 32,64,64 --lr 3e-3 --n 10000 --out runs/diffusers-mnist

It writes OUT/samples.npz (the n images), OUT/samples.png (a grid of 64), OUT/unet (the EMA model, diffusers'
format) and appends one JSON line with the settings and scores to benchmarks/results/diffusers-baseline.jsonl.
With --eval-every N it also scores the EMA model every N steps as `train --eval-every` scores ours (500 samples of
DPM-Solver++(2M) at 20 steps, outside the training clock), each score a line of OUT/metrics.jsonl, for the curve
of Frechet distance against training minutes.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from pixeldiffusion.data import load_dataset, to_model_range, to_uint8
from pixeldiffusion.evaluation.evaluate import evaluate_images, extractors, score
from pixeldiffusion.evaluation.reference import Reference
from pixeldiffusion.pipeline import Samples

RESULTS = Path(__file__).resolve().parent / "results" / "diffusers-baseline.jsonl"
ESTIMATE_AFTER = 50  # steps timed before the cosine schedule's length is fixed


def build_unet(channels: tuple[int, ...], attention_at: int, layers: int, shape: tuple[int, ...]) -> UNet2DModel:
    """The example's UNet2DModel at a smaller size for images of `shape` (C, H, W): ResNet blocks, attention in
    the middle block and at the levels whose resolution is at most `attention_at` pixels."""
    image_size = shape[-1]
    sizes = [image_size // 2**i for i in range(len(channels))]
    attention = [s <= attention_at for s in sizes]
    return UNet2DModel(
        sample_size=image_size,
        in_channels=shape[0],
        out_channels=shape[0],
        layers_per_block=layers,
        block_out_channels=channels,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        norm_num_groups=min(32, channels[0] // 4),
    )


def curve_scorer(args: argparse.Namespace, shape: tuple[int, ...]) -> Callable[..., None]:
    """What --eval-every calls: score the EMA weights on args.eval_samples DPM-Solver++(2M) samples at 20 steps (as
    our --eval-every samples), appending {"kind": "eval", "step", "elapsed_s", "fd", ...} to OUT/metrics.jsonl."""
    reference = Reference.of_dataset(args.dataset, data_dir=args.data_dir, image_size=shape[-1])
    cpu = torch.device("cpu")
    extractor, judge = extractors("classifier", reference, device=cpu)
    path = args.out / "metrics.jsonl"
    path.unlink(missing_ok=True)

    def point(model: UNet2DModel, ema: EMAModel, step: int, elapsed: float) -> None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
        model.eval()
        scheduler = DPMSolverMultistepScheduler.from_config(DDPMScheduler(num_train_timesteps=1000).config)
        x = sample(model, scheduler, args.eval_samples, 20, batch=500, seed=args.seed + 1)
        model.train()
        ema.restore(model.parameters())
        scores = score(to_uint8(x), reference=reference, extractor=extractor, classifier=judge, device=cpu)
        record = {"kind": "eval", "step": step, "elapsed_s": round(elapsed, 2), **scores.record()}
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps({k: record[k] for k in ("step", "elapsed_s", "fd")}))

    return point


def train(args: argparse.Namespace, images: torch.Tensor) -> tuple[UNet2DModel, dict]:
    torch.manual_seed(args.seed)
    model = build_unet(args.channels, args.attention_at, args.layers, tuple(images.shape[1:]))
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    budget, elapsed, step, lr_scheduler = 60 * args.minutes, 0.0, 0, None
    g = torch.Generator().manual_seed(args.seed)
    order, position = torch.randperm(len(images), generator=g), 0
    model.train()
    losses = []
    curve_point = curve_scorer(args, tuple(images.shape[1:])) if args.eval_every else None
    while elapsed < budget:
        start = time.perf_counter()
        if position + args.batch > len(order):
            order, position = torch.randperm(len(images), generator=g), 0
        clean = images[order[position : position + args.batch]]
        position += args.batch
        noise = torch.randn(clean.shape, generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(clean),), generator=g)
        with autocast:
            prediction = model(noise_scheduler.add_noise(clean, noise, t), t).sample
        loss = F.mse_loss(prediction.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if lr_scheduler is None:  # warm-up by hand until the step time is known
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        step += 1
        elapsed += time.perf_counter() - start
        losses.append(loss.detach())
        if step == ESTIMATE_AFTER:  # the example's get_scheduler("cosine"), over the steps the budget allows
            total = max(step + 1, int(budget / (elapsed / step)))
            lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=args.warmup, num_training_steps=total)
            with warnings.catch_warnings():  # fast-forwarding the new schedule to this step warns; it is meant
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(step):
                    lr_scheduler.step()
        if step % 200 == 0:
            print(json.dumps({"step": step, "loss": float(torch.stack(losses[-200:]).mean()), "elapsed_s": elapsed}))
        if curve_point and step % args.eval_every == 0:
            curve_point(model, ema, step, elapsed)
    ema.copy_to(model.parameters())
    return model.eval(), {"steps": step, "train_s": round(elapsed, 1), "images_per_s": step * args.batch / elapsed}


@torch.inference_mode()
def sample(model: UNet2DModel, scheduler, n: int, steps: int, batch: int, seed: int) -> torch.Tensor:
    """n images in [-1, 1] by a diffusers scheduler (DDIM at eta 0 for the final score)."""
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    size, channels = model.config.sample_size, model.config.in_channels
    out = []
    for start in range(0, n, batch):
        x = torch.randn((min(batch, n - start), channels, size, size), generator=g)
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t).sample, t, x).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="the dataset's files (default: the download cache)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--image-size", type=int, help="side in pixels (default: the dataset's own; emoji: 16 or 32)")
    p.add_argument("--minutes", type=float, default=30.0, help="training budget, wall-clock inside the steps")
    p.add_argument("--channels", default="32,64,64", help="block_out_channels")
    p.add_argument("--layers", type=int, default=1, help="layers_per_block")
    p.add_argument("--attention-at", type=int, default=0, help="attention also at levels of at most this many pixels")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: the 5-minute sweep's best)")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast in training")
    p.add_argument("--n", type=int, default=10000, help="images sampled and scored")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--eval-every", type=int, default=0, help="steps between scores of the EMA model (0: none)")
    p.add_argument("--eval-samples", type=int, default=500, help="images per score of --eval-every")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/diffusers-mnist"))
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON-lines file the record is appended to")
    args = p.parse_args()
    args.channels = tuple(int(c) for c in args.channels.split(","))
    args.out.mkdir(parents=True, exist_ok=True)

    data = load_dataset(args.dataset, split="train", data_dir=args.data_dir, image_size=args.image_size)
    images = to_model_range(data.images)
    model, trained = train(args, images)
    model.save_pretrained(args.out / "unet")
    start = time.perf_counter()
    ddim = DDIMScheduler.from_config(DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").config)
    x = sample(model, ddim, args.n, args.steps, batch=500, seed=args.seed + 1)
    sampled_s = time.perf_counter() - start
    Samples(x).save(npz=args.out / "samples.npz")
    Samples(x[:64]).save(args.out / "samples.png")
    evaluation = evaluate_images(args.out / "samples.npz", dataset=args.dataset, data_dir=args.data_dir, device="cpu")
    print(evaluation.table())
    record = {
        "library": "diffusers",
        "dataset": args.dataset,
        "settings": {
            k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
        },
        "params": sum(p.numel() for p in model.parameters()),
        **trained,
        "sample_s": round(sampled_s, 1),
        "sampler": {"name": "ddim", "steps": args.steps, "eta": 0.0},
        **evaluation.record(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.results.parent.mkdir(exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
