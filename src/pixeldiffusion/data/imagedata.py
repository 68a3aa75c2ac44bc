"""A dataset held in memory as one uint8 tensor, and the conversions between pixels and model inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pixeldiffusion.errors import PixelDiffusionError

RESIZE_CHUNK = 4096  # images resized at a time
HOLD_OUT = 6  # one-split datasets: every 6th image (in a seeded order) is kept out of a classifier's training


@dataclass(frozen=True, eq=False)
class ImageData:
    """A dataset held in memory."""

    name: str
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor | None = None  # (N,) int64 class indices
    context: torch.Tensor | None = None  # (N, D) float32 context vectors (e.g. sprite attributes)
    class_names: tuple[str, ...] = ()  # name of each class index
    context_names: tuple[str, ...] = ()  # name of each context dimension
    licence: str = field(default="", compare=False)  # where the data comes from and on what terms

    def __post_init__(self):
        n = len(self.images)
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise PixelDiffusionError(f"{self.name}: images must be a uint8 tensor (N, C, H, W)")
        for what, values in (("labels", self.labels), ("context vectors", self.context)):
            if values is not None and len(values) != n:
                raise PixelDiffusionError(f"{self.name}: {n} images but {len(values)} {what}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def condition(self, kind: str) -> torch.Tensor | None:
        """The per-image condition for a conditioning kind: labels, context vectors, or None."""
        if kind == "none":
            return None
        values = self.labels if kind == "class" else self.context
        if values is None:
            raise PixelDiffusionError(f"dataset {self.name} has no {'labels' if kind == 'class' else 'context'}")
        return values


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels {0..255} -> floats in [-1, 1]."""
    return images.float() / 127.5 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> uint8 pixels, rounding to the nearest level."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images (N, C, H, W) to size x size with antialiased bilinear interpolation.

    Works through the images a chunk at a time, so the float copy never holds the whole dataset.
    """
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):
        chunk = images[start : start + RESIZE_CHUNK].float()
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + RESIZE_CHUNK] = chunk.round().clamp(0, 255).to(torch.uint8)
    return out


def pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """Pad images symmetrically with zeros (black) up to size x size, e.g. 28 -> 32 (seed 003)."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise PixelDiffusionError(f"cannot pad {h}x{w} images to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top))


def one_split(train: ImageData, test: ImageData) -> bool:
    """Whether a dataset's test split is its train split (the digits, sprites and folders have one split)."""
    return len(test) == len(train) and torch.equal(test.images, train.images)


def held_out_split(train: ImageData, test: ImageData, seed: int) -> tuple[ImageData, ImageData]:
    """(train, test) to fit and test a classifier on: the dataset's own splits, or for a dataset with one split
    every HOLD_OUT-th image of a seeded order held out."""
    if not one_split(train, test):
        return train, test
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    held, kept = order[::HOLD_OUT], torch.cat([order[i::HOLD_OUT] for i in range(1, HOLD_OUT)])

    def part(indices: torch.Tensor) -> ImageData:
        labels = train.labels[indices] if train.labels is not None else None
        return ImageData(train.name, train.images[indices], labels, class_names=train.class_names)

    return part(kept), part(held)
