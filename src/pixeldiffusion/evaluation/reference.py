"""The real images a sample is judged against: a dataset's held-out split at the model's geometry, and its train
split for the memorisation check."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cached_property

from pixeldiffusion.config import DataConfig, RunConfig
from pixeldiffusion.data import ImageData, load_dataset
from pixeldiffusion.data.imagedata import one_split
from pixeldiffusion.errors import PixelDiffusionError


@dataclass(frozen=True)
class Reference:
    """A dataset at one image size (and padding). Datasets with one split (digits, sprites, folders) have no
    held-out images: their whole set is the reference, and the name says so."""

    data: DataConfig
    image_size: int

    @classmethod
    def of_run(cls, config: RunConfig, *, data_dir: str | None = None) -> Reference:
        """The dataset a run was trained on, at its images' size; data_dir overrides the one it recorded."""
        return cls(config.data if data_dir is None else replace(config.data, data_dir=data_dir), config.pixel_size)

    @classmethod
    def of_dataset(
        cls, dataset: str, *, data_dir: str | None = None, image_size: int | None = None, pad: bool = False
    ) -> Reference:
        """A dataset by name, at image_size (default: its own size), padded with black up to it when pad."""
        if image_size is None:
            if pad:
                raise PixelDiffusionError("padding needs an image size to pad to")
            image_size = load_dataset(dataset, split="test", data_dir=data_dir).images.shape[-1]
        return cls(DataConfig(dataset=dataset, data_dir=data_dir, pad=pad), image_size)

    @cached_property
    def train(self) -> ImageData:
        return self.data.load("train", self.image_size)

    @cached_property
    def held_out(self) -> ImageData:
        """The test split; for a dataset with one split, the whole set."""
        return self.data.load("test", self.image_size)

    @cached_property
    def one_split(self) -> bool:
        return one_split(self.train, self.held_out)

    @property
    def name(self) -> str:
        """E.g. "mnist:test", or "digits:all (one split, no held-out images)"."""
        return (
            f"{self.data.dataset}:all (one split, no held-out images)"
            if self.one_split
            else f"{self.data.dataset}:test"
        )

    @property
    def geometry(self) -> str:
        """E.g. "28x28" or "32x32 padded"."""
        return f"{self.image_size}x{self.image_size}" + (" padded" if self.data.pad else "")

    @property
    def slug(self) -> str:
        """A file-name stem naming the dataset and geometry, e.g. "mnist-28" or "mnist-32-pad"."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", self.data.dataset).strip("-")[-60:]
        return f"{name}-{self.image_size}" + ("-pad" if self.data.pad else "")
