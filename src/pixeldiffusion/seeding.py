"""Named random streams: every draw of a run comes from a generator seeded by hashing (seed, purpose, index...),
so no two purposes share numbers, and each stream is a function of its name alone (not of the batch size, the
number of processes or what was drawn before it)."""

from __future__ import annotations

import functools
import hashlib

import torch


def stream_seed(seed: int, purpose: str, *index: int) -> int:
    """A 63-bit generator seed for the stream (seed, purpose, index...), e.g. (seed, "image", 17)."""
    name = ":".join(map(str, (seed, purpose, *index))).encode()
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "little") >> 1


def generator(seed: int, purpose: str, *index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded for the stream (seed, purpose, index...)."""
    return torch.Generator(device).manual_seed(stream_seed(seed, purpose, *index))


class ImageNoise:
    """Standard normal draws with one generator per image, seeded by (seed, "image", index) as EDM seeds each
    image: an image's starting noise and every later draw of a stochastic sampler depend on its index alone, so
    the same seed gives the same images whatever the batch size or the number of processes."""

    def __init__(self, seed: int, indices: range | list[int], device: torch.device | str = "cpu"):
        self.seed, self.indices, self.device = seed, indices, torch.device(device)

    @functools.cached_property
    def generators(self) -> list[torch.Generator]:
        """Made at the first draw, so that slicing a large request into batches holds one batch's generators."""
        return [generator(self.seed, "image", i, device=self.device) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, part: slice) -> ImageNoise:
        """The streams of some of the images, from their start (whatever this object has drawn already)."""
        return ImageNoise(self.seed, self.indices[part], self.device)

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """One draw of shape (len(self), *shape), each image's slice from its own stream."""
        return torch.stack([torch.randn(shape, generator=g, device=self.device, dtype=dtype) for g in self.generators])

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        """Noise shaped and typed like a batch `like` of these images."""
        if len(like) != len(self.generators):
            raise ValueError(f"a batch of {len(like)} images drawn with the streams of {len(self.generators)}")
        return self.randn(tuple(like.shape[1:]), like.dtype)
