"""A small CNN classifier for one dataset at one geometry, trained by the product itself in a few CPU minutes.

Its penultimate layer (the global average of its last convolutions) is the "classifier" feature space of the
Frechet distance, KID and precision/recall; its predictions give the class accuracy and coverage of samples.
It is saved as a checkpoint (safetensors + JSON: dataset, geometry, classes, test accuracy), by default in the
cache as classifiers/DATASET-SIZE.safetensors. A classifier below MIN_ACCURACY never scores: its features and
verdicts would mislead every score made with it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pixeldiffusion.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pixeldiffusion.data import ImageData, to_model_range
from pixeldiffusion.data.cache import cache_dir, exclusive
from pixeldiffusion.data.imagedata import HOLD_OUT, held_out_split
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.evaluation.reference import Reference
from pixeldiffusion.process import resolve_device

KIND = "pixeldiffusion.classifier.v1"
MIN_ACCURACY = 0.95  # held-out accuracy a classifier needs to score with (3 epochs of the digits reach 22%)
# ...except on harder datasets, where this network's ceiling is lower (the state of the art of small CNNs is about
# 93% on Fashion-MNIST and 90% on CIFAR-10): there the floor only keeps an untrained classifier out
# (emoji's categories are semantic, e.g. a fork is an object, a pie food: 10 epochs reach 80%, 20 reach 84%)
MIN_ACCURACY_OF = {"fashion-mnist": 0.85, "cifar10": 0.75, "emoji": 0.75}


def min_accuracy(dataset: str) -> float:
    """The held-out accuracy a classifier of `dataset` needs to score with."""
    return MIN_ACCURACY_OF.get(dataset, MIN_ACCURACY)


# Default length: epochs enough to see IMAGES_SEEN images, at least MIN_EPOCHS (digits: 21 epochs, 99.3% held out;
# MNIST: 3 epochs, 99.5%); twice that on the emoji, whose held-out accuracy still climbs (20 epochs: 84%)
IMAGES_SEEN = 30_000
IMAGES_SEEN_OF = {"emoji": 60_000}
MIN_EPOCHS = 3
PIXELS_PER_S = 1e6  # training images x pixels per second on 2 CPU cores (digits 0.85M, MNIST 1.2M): time estimates


class Classifier(nn.Module):
    """Stages of two 3x3 convolutions with BatchNorm and ReLU, 2x2 max-pooling between stages, a global average
    pool (the features, widths[-1] of them) and a linear layer (the logits)."""

    def __init__(self, *, channels: int, num_classes: int, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
                channels = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features (N, widths[-1]) of images in [-1, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of images in [-1, 1]."""
        return self.head(self.body(x))


@dataclass(frozen=True)
class ClassifierInfo:
    """What a classifier was trained on and how well it does, as recorded in its file."""

    dataset: str
    image_size: int
    pad: bool
    channels: int
    class_names: tuple[str, ...]
    widths: tuple[int, ...]
    test_accuracy: float
    test_set: str  # the images the accuracy was measured on
    epochs: int
    seed: int


@dataclass(frozen=True)
class TrainedClassifier:
    """A classifier loaded from its file, ready to embed (a feature extractor) and to predict classes."""

    network: Classifier
    info: ClassifierInfo
    path: Path
    fingerprint: str  # SHA-256 prefix of the file: features cached for one file are not reused for another

    @property
    def name(self) -> str:
        return f"classifier {self.path.stem}"

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.embed(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def check_fits(self, reference: Reference) -> None:
        """Refuse to score images of another dataset or geometry than the classifier was trained on."""
        info, data = self.info, reference.data
        if (info.dataset, info.image_size, info.pad) != (data.dataset, reference.image_size, data.pad):
            raise PixelDiffusionError(
                f"{self.path} was trained on {info.dataset} at {info.image_size}x{info.image_size}"
                f"{' padded' if info.pad else ''}, not on {data.dataset} at {reference.geometry}; "
                f"train one with: {train_command(reference)}"
            )


def classifier_path(reference: Reference) -> Path:
    """The default file of the classifier of a dataset at a geometry: CACHE/classifiers/DATASET-SIZE.safetensors."""
    return cache_dir() / "classifiers" / f"{reference.slug}.safetensors"


def train_command(reference: Reference) -> str:
    """The command line that trains the default classifier of a reference set."""
    data = reference.data
    options = [f"--dataset {data.dataset}", f"--image-size {reference.image_size}"]
    options += [f"--data-dir {data.data_dir}"] if data.data_dir else []
    options += ["--pad"] if data.pad else []
    return "pixeldiffusion train-classifier " + " ".join(options)


def load_classifier(path: str | Path, *, device: str | torch.device = "cpu") -> TrainedClassifier:
    """A classifier written by `train_classifier`."""
    path = Path(path)
    if not path.is_file():
        raise PixelDiffusionError(f"no classifier at {path}")
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a pixeldiffusion classifier")
    fields = meta["info"]
    info = ClassifierInfo(**{**fields, "class_names": tuple(fields["class_names"]), "widths": tuple(fields["widths"])})
    network = Classifier(channels=info.channels, num_classes=len(info.class_names), widths=info.widths)
    network.load_state_dict(tensors)
    fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return TrainedClassifier(network.to(device).eval(), info, path, fingerprint)


def classifier_for(
    reference: Reference, *, path: str | Path | None = None, device: str | torch.device = "auto"
) -> TrainedClassifier:
    """The classifier that scores images of the reference, checked to fit it and to reach `min_accuracy`: the one at
    `path`, else the cache's (`classifier_path`), trained now with the defaults (saying so) when there is none.

    Processes asking at once (torchrun's ranks) train it once: the others wait for it, then load it.
    """
    device = resolve_device(device)
    if path is None:
        path = classifier_path(reference)
        with exclusive(path.parent):
            if not path.is_file():
                epochs = default_epochs(reference)
                tqdm.write(
                    f"no classifier of {reference.data.dataset} at {reference.geometry} to score with yet: training "
                    f"one ({epochs} epochs, {cpu_time(reference, epochs)}), kept as {path}"
                )
                fit_classifier(reference, epochs=epochs, device=device)
    classifier = load_classifier(path, device=device)
    classifier.check_fits(reference)
    info = classifier.info
    floor = min_accuracy(reference.data.dataset)
    if info.test_accuracy < floor:
        out = "" if Path(path) == classifier_path(reference) else f" --out {path}"
        longer = f" --epochs {2 * info.epochs}" if info.epochs >= default_epochs(reference) else ""
        raise PixelDiffusionError(
            f"{path} classifies {info.test_accuracy:.1%} of {info.test_set} correctly, below the "
            f"{floor:.0%} needed to score with it; train a better one with: "
            f"{train_command(reference)}{out}{longer}"
        )
    return classifier


def default_epochs(reference: Reference) -> int:
    """Passes enough to see IMAGES_SEEN training images (IMAGES_SEEN_OF for some datasets), at least MIN_EPOCHS:
    21 for the digits, 3 for MNIST, 20 for the emoji."""
    train, _, _ = classifier_splits(reference, 0)
    return max(MIN_EPOCHS, math.ceil(IMAGES_SEEN_OF.get(reference.data.dataset, IMAGES_SEEN) / len(train)))


def cpu_time(reference: Reference, epochs: int) -> str:
    """About how long training takes on 2 CPU cores (much less on a GPU), e.g. "about 3 CPU minutes"."""
    train, _, _ = classifier_splits(reference, 0)
    minutes = epochs * len(train) * reference.image_size**2 / PIXELS_PER_S / 60
    return "under a CPU minute" if minutes < 1 else f"about {minutes:.0f} CPU minutes"


def classifier_splits(reference: Reference, seed: int) -> tuple[ImageData, ImageData, str]:
    """(train, test, name of the test set): the dataset's own splits, or for a one-split dataset a seeded
    1/HOLD_OUT of it held out."""
    train, test = held_out_split(reference.train, reference.held_out, seed)
    if not reference.one_split:
        return train, test, reference.name
    return train, test, f"{train.name}: 1/{HOLD_OUT} held out (one split)"


@torch.inference_mode()
def accuracy(network: nn.Module, data: ImageData, *, device: torch.device, batch_size: int = 1024) -> float:
    """The fraction of images whose most likely class is their label."""
    network.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        x = to_model_range(data.images[start : start + batch_size].to(device))
        correct += int((network(x).argmax(1).cpu() == data.labels[start : start + batch_size]).sum())
    return correct / len(data)


def train_classifier(
    dataset: str,
    *,
    data_dir: str | None = None,
    out: str | Path | None = None,
    image_size: int | None = None,
    pad: bool = False,
    **training,
) -> TrainedClassifier:
    """Train the classifier of a dataset (at image_size, default its own; padded when pad) and save it to `out`
    (default: `classifier_path`); `training`: the options of `fit_classifier` (epochs, widths, device...)."""
    reference = Reference.of_dataset(dataset, data_dir=data_dir, image_size=image_size, pad=pad)
    return fit_classifier(reference, out=out, **training)


def fit_classifier(
    reference: Reference,
    *,
    out: str | Path | None = None,
    epochs: int | None = None,
    batch_size: int = 256,
    lr: float = 2e-3,
    widths: tuple[int, ...] = (32, 64, 128),
    seed: int = 0,
    device: str | torch.device = "auto",
) -> TrainedClassifier:
    """Train the classifier of a reference set with Adam and a cosine decay of the learning rate, no augmentation,
    for `epochs` (default: `default_epochs`); measure its test accuracy and save it to `out` (default:
    `classifier_path`). Real MNIST: 99.5% after 3 epochs, about 2 minutes on 2 CPU cores."""
    if reference.train.labels is None:
        raise PixelDiffusionError(f"{reference.data.dataset} has no class labels: a classifier needs them")
    epochs = default_epochs(reference) if epochs is None else epochs
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, not {epochs}")
    train, test, test_set = classifier_splits(reference, seed)
    device = resolve_device(device)
    torch.manual_seed(seed)
    network = Classifier(channels=train.shape[0], num_classes=len(train.class_names), widths=widths).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total, step = epochs * steps_per_epoch, 0
    g = torch.Generator().manual_seed(seed)
    network.train()
    with tqdm(total=total, desc=f"classifier {reference.slug}", unit="step", disable=None, leave=False) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=g)
            for start in range(0, len(train), batch_size):
                batch = order[start : start + batch_size]
                for group in optimizer.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                logits = network(to_model_range(train.images[batch].to(device)))
                loss = F.cross_entropy(logits, train.labels[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    info = ClassifierInfo(
        dataset=reference.data.dataset,
        image_size=reference.image_size,
        pad=reference.data.pad,
        channels=train.shape[0],
        class_names=tuple(train.class_names),
        widths=tuple(widths),
        test_accuracy=accuracy(network, test, device=device),
        test_set=test_set,
        epochs=epochs,
        seed=seed,
    )
    path = Path(out) if out else classifier_path(reference)
    save_checkpoint(path, network.state_dict(), {"kind": KIND, "info": asdict(info)})
    return load_classifier(path, device=device)
