"""The autoencoder of latent diffusion (Rombach et al. 2022) as a run: `train-autoencoder` trains it on a dataset,
scores its reconstructions of held-out images (MSE, PSNR) and measures the scale factor of its latents; `train
--autoencoder` then diffuses in its latent space (`latent_config`), the dataset encoded once (`encode`).

An autoencoder run holds config.json, autoencoder.safetensors (the weights; its header the configuration, scale
factor and scores), metrics.jsonl and reconstructions.png (held-out images above their reconstructions).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.config import AutoencoderRunConfig, LatentConfig, RunConfig, from_dict
from pixeldiffusion.data import to_model_range, to_uint8
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.interop.pretrained import load_autoencoder
from pixeldiffusion.models.autoencoder import Autoencoder, autoencoder_loss
from pixeldiffusion.process import Process, resolve_device
from pixeldiffusion.recipes import default_config
from pixeldiffusion.seeding import generator
from pixeldiffusion.training import rundir
from pixeldiffusion.training.clock import RunClock
from pixeldiffusion.training.plan import batch_indices, learning_rate, total_steps
from pixeldiffusion.visualize import auto_scale, image_grid, save_image

FILE = "autoencoder.safetensors"
HELD_OUT = 1000  # training images held out to score the reconstructions, at most (and at most a tenth of them)
SCALE_IMAGES = 2048  # training images whose latents measure the scale factor
BATCH = 256  # images per forward pass when encoding or scoring
LOG_EVERY = 50  # steps between progress updates and lines of metrics.jsonl


@dataclass(frozen=True)
class AutoencoderRun:
    """A trained autoencoder: its run's configuration, weights and latent scale factor."""

    config: AutoencoderRunConfig
    state_dict: dict[str, torch.Tensor]
    scale_factor: float

    def network(self) -> Autoencoder:
        return load_autoencoder(self.config.model, self.state_dict)


@dataclass(frozen=True)
class TrainedAutoencoder:
    """Where train-autoencoder put its weights, and how well they reconstruct held-out images."""

    path: Path
    steps: int
    minutes: float
    held_out: int  # images scored
    mse: float  # mean squared error, pixels in [0, 1]
    psnr: float  # 10 log10(1 / mse), in dB
    scale_factor: float


@torch.no_grad()
def encode(autoencoder: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """The posterior means of uint8 images (N, C, H, W), (N, C_z, H / f, W / f) on the autoencoder's device."""
    device = next(autoencoder.parameters()).device
    parts = [
        autoencoder.encode(to_model_range(images[i : i + BATCH].to(device)))[0] for i in range(0, len(images), BATCH)
    ]
    return torch.cat(parts)


def read_autoencoder(source: str | Path) -> AutoencoderRun:
    """The autoencoder of a train-autoencoder run directory (or of its autoencoder.safetensors)."""
    path = Path(source)
    path = path / FILE if path.is_dir() else path
    if not path.is_file():
        raise PixelDiffusionError(
            f"{source} holds no autoencoder: train one with `pixeldiffusion train-autoencoder --out {source}`"
        )
    tensors, meta = ckpt.load_checkpoint(path)
    try:
        config = from_dict(AutoencoderRunConfig, meta["config"])
        return AutoencoderRun(config, ckpt.split_prefix(tensors, "autoencoder"), float(meta["scale_factor"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{path} is not an autoencoder of train-autoencoder ({e})") from e


def latent_config(config: RunConfig, source: str | Path, *, image_size: int | None = None) -> RunConfig:
    """`config` diffusing in the latent space of the autoencoder run `source`, for images of image_size pixels
    (default: the autoencoder's): the U-Net takes its latents, and x0 is not clipped (latents are unbounded)."""
    found = read_autoencoder(source)
    model, size = found.config.model, image_size or found.config.image_size
    if size % model.factor:
        raise ConfigError(f"image size {size} is not divisible by the autoencoder's factor {model.factor}")
    return replace(
        config,
        latent=LatentConfig(source=str(source), autoencoder=model, scale_factor=found.scale_factor),
        model=replace(config.model, image_size=size // model.factor, in_channels=model.latent_channels),
        sample=replace(config.sample, clip_x0=False),
    )


def latent_autoencoder(config: RunConfig, run_dir: Path, *, resume: bool) -> Autoencoder:
    """The autoencoder of a latent run: a resumed run's from its latest checkpoint (which carries it, so a moved run
    needs nothing else), a new run's from the autoencoder run it names."""
    if resume and ckpt.list_checkpoints(run_dir):
        tensors, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))
        return load_autoencoder(config.latent.autoencoder, ckpt.split_prefix(tensors, "autoencoder"))
    found = read_autoencoder(config.latent.source)
    if (found.config.model, found.scale_factor) != (config.latent.autoencoder, config.latent.scale_factor):
        raise ConfigError(f"the autoencoder in {config.latent.source} is not the one this configuration records")
    return found.network()


def train_autoencoder(config: AutoencoderRunConfig, out: str | Path) -> TrainedAutoencoder:
    """Train an autoencoder on config.data until a stop condition (or SIGINT/SIGTERM), then score it on held-out
    images, measure its latents' scale factor and write its run to `out`."""
    out = Path(out)
    if (out / FILE).exists():
        raise PixelDiffusionError(f"{out} already holds an autoencoder; choose another --out")
    size = config.image_size or default_config(config.data.dataset, pad=config.data.pad).model.image_size
    with rundir.locked(out):
        data = config.data.load("train", size)
        config = replace(config, image_size=size, model=replace(config.model, in_channels=data.shape[0]))
        held = min(HELD_OUT, len(data) // 10)
        if held < 1:
            raise ConfigError(f"{config.data.dataset} has {len(data)} images; an autoencoder needs at least 10")
        order = torch.randperm(len(data), generator=generator(config.seed, "held-out"))
        held_out, train = data.images[order[:held]], data.images[order[held:]]
        ckpt.write_atomic(out / "config.json", config.to_json().encode())
        (out / "metrics.jsonl").unlink(missing_ok=True)
        device = resolve_device(config.device)
        torch.manual_seed(config.seed)  # the initial weights
        model = Autoencoder(config.model).to(device)
        steps, elapsed = _fit(model, train.to(device), config, out)
        model.eval().requires_grad_(False)

        reconstructions = torch.cat([_reconstruct(model, held_out[i : i + BATCH]) for i in range(0, held, BATCH)])
        mse = float(((reconstructions - to_model_range(held_out)) / 2).square().mean())  # pixels in [0, 1]
        sample = train[torch.randperm(len(train), generator=generator(config.seed, "scale"))[:SCALE_IMAGES]]
        scale_factor = 1 / float(encode(model, sample).std())
        psnr = 10 * math.log10(1 / max(mse, 1e-12))
        meta = {
            "config": json.loads(config.to_json()),
            "scale_factor": scale_factor,
            "step": steps,
            "elapsed": elapsed,
            "held_out": {"images": held, "mse": mse, "psnr": psnr},
        }
        path = ckpt.save_checkpoint(out / FILE, {f"autoencoder/{k}": v for k, v in model.state_dict().items()}, meta)
        shown = min(held, 8)
        pictures = torch.cat([held_out[:shown], to_uint8(reconstructions[:shown])])
        save_image(image_grid(pictures, shown, scale=auto_scale(size)), out / "reconstructions.png")
    return TrainedAutoencoder(path, steps, elapsed / 60, held, mse, psnr, scale_factor)


@torch.no_grad()
def _reconstruct(model: Autoencoder, images: torch.Tensor) -> torch.Tensor:
    """decode(posterior mean) of uint8 images, in [-1, 1], on the CPU."""
    return model.decode(encode(model, images)).clamp(-1, 1).cpu()


def _fit(model: Autoencoder, images: torch.Tensor, config: AutoencoderRunConfig, out: Path) -> tuple[int, float]:
    """AdamW on the loss of models/autoencoder.py, with the plan's batches and learning rate; returns the steps
    taken and the training seconds."""
    device, minutes, factor = images.device, config.length.minutes, config.model.factor
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, fused=True)
    end = total_steps(config.length.max_steps, config.length.epochs, len(images), config.batch_size)
    clock = RunClock(Process(device=device), elapsed=0.0, budget_s=60 * minutes if minutes else None, agree_every=1)
    latent = (config.model.latent_channels, images.shape[-2] // factor, images.shape[-1] // factor)
    step, logged, sums = 0, 0, torch.zeros(3, device=device)  # since the last log: loss, error per pixel, KL

    def finished() -> bool:
        return bool((end and step >= end) or clock.out_of_time or clock.stop_signal)

    with clock.catching_signals(), tqdm(total=end, unit="step", dynamic_ncols=True, desc="autoencoder") as bar:
        while not finished():
            with clock.timing():
                lr = learning_rate(
                    step,
                    lr=config.lr,
                    warmup_steps=config.warmup_steps,
                    decay=config.lr_decay,
                    total_steps=end,
                    elapsed=clock.elapsed,
                    budget_s=clock.budget_s,
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = to_model_range(images[batch_indices(config.seed, step, len(images), config.batch_size, device)])
                if config.data.hflip:
                    flip = torch.rand(
                        len(x), generator=generator(config.seed, "flip", step, device=device), device=device
                    )
                    x = torch.where(flip[:, None, None, None] < 0.5, x.flip(-1), x)
                noise = generator(config.seed, "noise", step, device=device)
                eps = torch.randn((len(x), *latent), generator=noise, device=device)
                loss, kl = autoencoder_loss(x, *model(x, eps), loss=config.loss, beta=config.beta)
                loss.mean().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step += 1
            clock.tick(step)
            bar.update(1)
            error = (loss - config.beta * kl).mean() / x[0].numel()
            sums += torch.stack([loss.mean(), error, kl.mean()]).detach()
            if step % LOG_EVERY == 0 or finished():
                loss_mean, error_mean, kl_mean = (sums / (step - logged)).tolist()
                if not math.isfinite(loss_mean):
                    raise PixelDiffusionError(
                        f"the autoencoder's loss became NaN or infinite by step {step}; try a lower --lr"
                    )
                record = {"step": step, "loss": loss_mean, "reconstruction": error_mean, "kl": kl_mean, "lr": lr}
                rundir.append_metrics(out / "metrics.jsonl", {**record, "elapsed_s": round(clock.elapsed, 2)})
                bar.set_postfix(reconstruction=f"{error_mean:.4f}", kl=f"{kl_mean:.3g}", lr=f"{lr:.2e}", refresh=False)
                logged, sums = step, sums.zero_()
    return step, clock.elapsed
