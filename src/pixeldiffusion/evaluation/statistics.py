"""Features of images under an extractor (the dataset's classifier or the FID Inception), and the statistics of a
reference set under it, computed once and kept in the cache.

The cache file is keyed by the extractor's fingerprint (a hash of its weights file), the reference's name and its
geometry, so statistics of one extractor or one reference are never used for another. It is a checkpoint file
(safetensors, checksummed): a damaged one is computed again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from pixeldiffusion.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pixeldiffusion.data import to_model_range
from pixeldiffusion.data.cache import cache_dir
from pixeldiffusion.evaluation.metrics import mean_and_covariance
from pixeldiffusion.evaluation.reference import Reference

KIND = "pixeldiffusion.reference-statistics.v1"
MAX_FEATURES = 10_000  # reference features kept for KID and precision/recall (a seeded random subset)
BATCH = 128  # images embedded at a time


class Extractor(Protocol):
    """Anything that maps images in [-1, 1] to feature vectors, with a name for reports and a fingerprint of its
    weights for caches (`TrainedClassifier`, `InceptionExtractor`)."""

    name: str
    fingerprint: str

    def embed(self, x: torch.Tensor) -> torch.Tensor: ...


@torch.inference_mode()
def batched(network: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, *, device) -> torch.Tensor:
    """network(x) of uint8 images (N, C, H, W) taken to [-1, 1], BATCH at a time on `device`: (N, ...) float32 on
    the CPU."""
    return torch.cat(
        [
            network(to_model_range(images[start : start + BATCH].to(device))).float().cpu()
            for start in range(0, len(images), BATCH)
        ]
    )


@dataclass(frozen=True)
class ReferenceStatistics:
    """The Gaussian fitted to a reference set's features (mean mu, covariance Sigma, over all `count` images) and
    up to MAX_FEATURES of the features themselves."""

    extractor: str
    reference: str
    count: int
    mu: torch.Tensor
    sigma: torch.Tensor
    features: torch.Tensor


def statistics_path(extractor: Extractor, reference: Reference) -> Path:
    """CACHE/reference-statistics/SLUG-HASH.safetensors, HASH covering the extractor's fingerprint and the reference's
    name and geometry."""
    key = hashlib.sha256(json.dumps([KIND, extractor.fingerprint, reference.name, reference.geometry]).encode())
    return cache_dir() / "reference-statistics" / f"{reference.slug}-{key.hexdigest()[:16]}.safetensors"


def compute_statistics(extractor: Extractor, reference: Reference, *, device: torch.device) -> ReferenceStatistics:
    """Embed every held-out image of the reference."""
    features = batched(extractor.embed, reference.held_out.images, device=device)
    mu, sigma = mean_and_covariance(features)
    kept = torch.randperm(len(features), generator=torch.Generator().manual_seed(0))[:MAX_FEATURES]
    return ReferenceStatistics(extractor.name, reference.name, len(features), mu, sigma, features[kept.sort().values])


def reference_statistics(extractor: Extractor, reference: Reference, *, device: torch.device) -> ReferenceStatistics:
    """The statistics of a reference under an extractor: from the cache, else computed and kept there."""
    path = statistics_path(extractor, reference)
    if path.exists():
        try:
            tensors, meta = load_checkpoint(path)
            if meta.get("kind") == KIND:
                return ReferenceStatistics(meta["extractor"], meta["reference"], meta["count"], **tensors)
        except (CheckpointError, KeyError, TypeError):
            pass  # damaged, or of an older layout: computed again, and replaced
    stats = compute_statistics(extractor, reference, device=device)
    tensors = {"mu": stats.mu, "sigma": stats.sigma, "features": stats.features}
    meta = {"kind": KIND, "extractor": stats.extractor, "reference": stats.reference, "count": stats.count}
    save_checkpoint(path, tensors, meta)
    return stats
