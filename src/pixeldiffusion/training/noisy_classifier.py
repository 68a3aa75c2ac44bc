"""Training the noisy classifier of classifier guidance (`models/classifier.py`) for a diffusion run: on
x_t ~ q(x_t | x_0) with t uniform in {1, ..., T} of the run's noise schedule, the run's dataset at its image size
and its classes (the dataset's labels, also for an unconditional run), cross-entropy and AdamW (Dhariwal & Nichol
2021, section 4.1). `train-classifier --noisy --run RUN` writes it to RUN/classifier/ by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pixeldiffusion.config import LengthConfig
from pixeldiffusion.data import ImageData, to_model_range
from pixeldiffusion.data.imagedata import HOLD_OUT, held_out_split, one_split
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.interop.pretrained import read_model
from pixeldiffusion.models.classifier import FILE_NAME, NoisyClassifier
from pixeldiffusion.models.unet import MAGNITUDE_PRESERVING
from pixeldiffusion.objectives import draw_times
from pixeldiffusion.process import Process, resolve_device
from pixeldiffusion.schedule import NoiseSchedule
from pixeldiffusion.seeding import generator
from pixeldiffusion.training.clock import RunClock
from pixeldiffusion.training.plan import batch_indices, learning_rate, total_steps

FOLDER = "classifier"  # the default output folder, inside the run
DEFAULT_LENGTH = LengthConfig(max_steps=3000)
TEST_BATCH = 1024  # images per forward pass when testing


@dataclass(frozen=True)
class TrainedNoisyClassifier:
    """Where the noisy classifier went, and how well it classifies held-out images noised to a few times t."""

    path: Path
    steps: int
    minutes: float
    accuracy: dict[int, float]  # t -> fraction of the held-out images classified correctly at that t
    test_set: str  # the images the accuracy was measured on


def accuracy_times(T: int) -> list[int]:
    """The times the accuracy is reported at: 0 (clean images), T/4, T/2 and 3T/4."""
    return [0, T // 4, T // 2, 3 * T // 4]


def train_noisy_classifier(
    run: str | Path,
    *,
    out: str | Path | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    device: str | torch.device = "auto",
    **training,
) -> TrainedNoisyClassifier:
    """Train the noisy classifier of a run (a run directory, or anything `read_model` opens): the run's U-Net down to
    its middle block, fitted by `fit_noisy_classifier` (`training`: its options) on the run's data, tested on held-out
    images at `accuracy_times`, saved to out/classifier.safetensors (default out: RUN/classifier) and a JSON beside."""
    config = read_model(run).config
    if out is None:
        if not Path(run).is_dir():
            raise ConfigError(f"{run} is not a run directory: give --out DIR for the classifier")
        out = Path(run) / FOLDER
    data = config.data if data_dir is None else replace(config.data, data_dir=data_dir)
    size = config.model.image_size
    train, test = data.load("train", size), data.load("test", size)
    test_set = f"{data.dataset}:test" if not one_split(train, test) else f"{data.dataset}: 1/{HOLD_OUT} held out"
    train, test = held_out_split(train, test, seed)
    model = config.model
    if train.labels is None:
        raise PixelDiffusionError(f"{data.dataset} has no class labels: a classifier needs them")
    if model.num_classes and model.num_classes != len(train.class_names):
        raise PixelDiffusionError(
            f"the run is conditioned on {model.num_classes} classes, the dataset has {len(train.class_names)}"
        )
    if train.shape != (model.in_channels, size, size):
        raise PixelDiffusionError(
            f"the run's network takes {model.in_channels}x{size}x{size} inputs, not the dataset's images "
            f"{'x'.join(map(str, train.shape))}: a noisy classifier learns the images the run diffuses"
        )
    torch.manual_seed(seed)  # the initial weights
    # an ADM encoder at the run's sizes: EDM2's network has no encoder-only form here
    block = "resnet" if model.block == MAGNITUDE_PRESERVING else model.block
    network = NoisyClassifier(
        replace(model, num_classes=0, context_dim=0, block=block),
        class_names=train.class_names,
        schedule=config.diffusion.schedule,
    ).to(resolve_device(device))
    steps, seconds = fit_noisy_classifier(network, train, seed=seed, hflip=config.data.hflip, **training)
    accuracy = {t: held_out_accuracy(network, test, t, seed=seed) for t in accuracy_times(network.schedule.timesteps)}
    path = network.save(
        Path(out) / FILE_NAME,
        run=str(run),
        dataset=data.dataset,
        steps=steps,
        test_set=test_set,
        accuracy={str(t): a for t, a in accuracy.items()},
    )
    return TrainedNoisyClassifier(path, steps, seconds / 60, accuracy, test_set)


PROGRESS_EVERY = 50  # steps between updates of the progress bar's loss


def fit_noisy_classifier(
    network: NoisyClassifier,
    data: ImageData,
    *,
    length: LengthConfig = DEFAULT_LENGTH,
    batch_size: int = 128,
    lr: float = 3e-4,
    weight_decay: float = 0.05,
    warmup_steps: int = 100,
    seed: int = 0,
    hflip: bool = False,
    progress: bool = False,
) -> tuple[int, float]:
    """Train a noisy classifier on x_t ~ q(x_t | x_0) of its schedule, t uniform in {1, ..., T}, with cross-entropy
    and AdamW (linear warm-up, cosine decay), until the first stop condition of `length` or SIGINT/SIGTERM; with
    hflip, half the images flipped. Returns the steps taken and the training seconds."""
    device = next(network.parameters()).device
    schedule = NoiseSchedule.from_config(network.schedule).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=weight_decay)
    end = total_steps(length.max_steps, length.epochs, len(data), batch_size)
    budget = 60 * length.minutes if length.minutes else None
    clock = RunClock(Process(device=device), elapsed=0.0, budget_s=budget, agree_every=1)
    images, labels = data.images.to(device), data.labels.to(device)
    step = 0
    network.train()
    with clock.catching_signals(), tqdm(total=end, unit="step", disable=not progress, desc="noisy classifier") as bar:
        while not ((end and step >= end) or clock.out_of_time or clock.stop_signal):
            with clock.timing():
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(
                        step,
                        lr=lr,
                        warmup_steps=warmup_steps,
                        decay="cosine",
                        total_steps=end,
                        elapsed=clock.elapsed,
                        budget_s=budget,
                    )
                batch = batch_indices(seed, step, len(data), batch_size, device)
                x0 = to_model_range(images[batch])
                draw = generator(seed, "classifier", step, device=device)
                if hflip:  # the run's augmentation: a flipped image keeps its class
                    flip = torch.rand(len(x0), generator=draw, device=device) < 0.5
                    x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
                t = draw_times(schedule, len(x0), draw)
                x_t = schedule.q_sample(x0, t, torch.randn(x0.shape, generator=draw, device=device))
                loss = F.cross_entropy(network(x_t, t), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            step += 1
            clock.tick(step)
            bar.update(1)
            if progress and step % PROGRESS_EVERY == 0:  # .item() waits for the device: not every step
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    if not math.isfinite(loss.item()):
        raise PixelDiffusionError(f"the classifier's loss became NaN or infinite by step {step}; try a lower lr")
    return step, clock.elapsed


@torch.inference_mode()
def held_out_accuracy(network: NoisyClassifier, data: ImageData, t: int, *, seed: int) -> float:
    """The fraction of images, noised to time t of the classifier's schedule with the noise of the stream
    (seed, "classifier-test", t), whose most likely class is their label."""
    network.eval()
    device = next(network.parameters()).device
    schedule = NoiseSchedule.from_config(network.schedule).to(device)
    draw = generator(seed, "classifier-test", t, device=device)
    correct = 0
    for start in range(0, len(data), TEST_BATCH):
        x0 = to_model_range(data.images[start : start + TEST_BATCH].to(device))
        x_t = schedule.q_sample(x0, t, torch.randn(x0.shape, generator=draw, device=device))
        logits = network(x_t, torch.full((len(x0),), t, device=device, dtype=torch.long))
        correct += int((logits.argmax(1).cpu() == data.labels[start : start + TEST_BATCH]).sum())
    return correct / len(data)
