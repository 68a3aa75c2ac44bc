"""The maths of sample quality: distances between sets of feature vectors (or pixels), each a plain function.

- Frechet distance (Heusel et al. 2017): the 2-Wasserstein distance between Gaussians fitted to two sets.
- Kernel distance, KID (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel, over subsets.
- Precision and recall (Kynkaanniemi et al. 2019): how much of each set lies in the k-NN manifold of the other.
- Class coverage: the entropy of a histogram of predicted classes.
- Memorisation: how close samples lie to their nearest training image, against the train-train spacing.

Inputs are (N, D) tensors; everything that accumulates is computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CHUNK = 1024  # query rows per block of a distance matrix


def mean_and_covariance(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean mu and the unbiased covariance Sigma = (X - mu)^T (X - mu) / (N - 1) of (N, D) features, in float64."""
    x = features.to(torch.float64)
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / max(len(x) - 1, 1)


def psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix, by eigen-decomposition
    (eigenvalues that rounding made slightly negative count as zero)."""
    eigenvalues, vectors = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(Sigma1 + Sigma2 - 2 (Sigma1 Sigma2)^(1/2)).

    Tr (Sigma1 Sigma2)^(1/2) is the sum of the square roots of the eigenvalues of Sigma1 Sigma2, which are those of
    the symmetric positive semi-definite S = Sigma1^(1/2) Sigma2 Sigma1^(1/2) (AB and BA share their non-zero
    eigenvalues). Working on S, in float64, is exact for singular covariances too (fewer samples than dimensions),
    where the non-symmetric product needs pytorch-fid's eps * I on the diagonals to keep sqrtm stable.
    """
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(v, dtype=torch.float64) for v in (mu1, sigma1, mu2, sigma2))
    root1 = psd_sqrt(sigma1)
    s = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((s + s.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return max(float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt), 0.0)


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x . y / d + 1)^3, KID's kernel, for all pairs of rows."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased estimate of MMD^2 (Gretton et al. 2012, eq. 3) with the polynomial kernel:

    1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j).
    """
    x, y = x.to(torch.float64), y.to(torch.float64)
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def kernel_inception_distance(
    x: torch.Tensor, y: torch.Tensor, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: the mean and standard deviation of `mmd2_unbiased` over random subsets of each set, each subset drawn
    without replacement and of min(subset_size, len(x), len(y)) rows (Binkowski et al. 2018; torch-fidelity's
    defaults). Unbiased: two samples of one distribution score 0 on average, and may score below 0."""
    size = min(subset_size, len(x), len(y))
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor(
        [
            mmd2_unbiased(x[torch.randperm(len(x), generator=g)[:size]], y[torch.randperm(len(y), generator=g)[:size]])
            for _ in range(subsets)
        ],
        dtype=torch.float64,
    )
    return float(values.mean()), float(values.std(correction=0))


def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between all rows of a and b, through |a|^2 + |b|^2 - 2 a.b (in the inputs' dtype)."""
    squared = (a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T
    return squared.clamp(min=0).sqrt()


def kth_nearest_distance(queries: torch.Tensor, points: torch.Tensor, k: int = 1, *, among_self: bool = False):
    """The distance from each query to its k-th nearest point. among_self: the queries are rows of points, and
    each query's zero distance to itself is not counted."""
    rank = k + int(among_self)
    return torch.cat(
        [
            pairwise_distances(queries[i : i + CHUNK], points).topk(rank, dim=1, largest=False).values[:, -1]
            for i in range(0, len(queries), CHUNK)
        ]
    )


def in_manifold(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Whether each query lies in at least one ball |q - c_j| <= r_j."""
    return torch.cat(
        [(pairwise_distances(queries[i : i + CHUNK], centres) <= radii).any(1) for i in range(0, len(queries), CHUNK)]
    )


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    The manifold of a set is the union of balls around its points, each reaching the point's k-th nearest
    neighbour in the set. precision = the fraction of fake points inside the real manifold; recall = the fraction
    of real points inside the fake manifold. Compare sets of equal size: a denser set has smaller balls.
    """
    real, fake = real.to(torch.float64), fake.to(torch.float64)
    real_radii = kth_nearest_distance(real, real, k, among_self=True)
    fake_radii = kth_nearest_distance(fake, fake, k, among_self=True)
    precision = in_manifold(fake, real, real_radii).double().mean()
    recall = in_manifold(real, fake, fake_radii).double().mean()
    return float(precision), float(recall)


PRESENT_SHARE = 0.1  # a class is present when it gets at least this fraction of its uniform share 1/K


def class_coverage(predicted: torch.Tensor, num_classes: int) -> tuple[float, int]:
    """The entropy H = -sum_c p_c ln p_c (nats) of the histogram p of predicted classes, at most ln K when every
    class is equally frequent, and the number of classes present (p_c >= PRESENT_SHARE / K)."""
    p = torch.bincount(predicted.flatten().cpu(), minlength=num_classes).double() / predicted.numel()
    entropy = (p[p > 0] * p[p > 0].reciprocal().log()).sum()  # sum p ln(1/p): +0, not -0, for a single class
    return float(entropy), int((p >= PRESENT_SHARE / num_classes).sum())


@dataclass(frozen=True)
class Memorisation:
    """How close samples lie to the training images, in RMS pixel difference ([-1, 1] units: 0 same, 2 opposite)."""

    median: float  # median distance of a sample to its nearest training image
    train_median: float  # median distance of a training image to its nearest other training image
    threshold: float  # ratio * train_median
    fraction: float  # fraction of samples nearer than threshold to some training image: likely copies


def memorisation(
    samples: torch.Tensor, train: torch.Tensor, *, ratio: float = 0.5, probes: int = 1000, seed: int = 0
) -> Memorisation:
    """Nearest-training-image distances of samples (N, D) in pixel space, against the typical spacing of the
    training set (measured from `probes` random training images): the fraction nearer than ratio x that spacing."""
    samples, train = samples.float(), train.float()
    scale = math.sqrt(train.shape[1])
    nearest = kth_nearest_distance(samples, train) / scale
    picked = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:probes]
    spacing = kth_nearest_distance(train[picked], train, among_self=True) / scale
    train_median = float(spacing.median())
    return Memorisation(
        median=float(nearest.median()),
        train_median=train_median,
        threshold=ratio * train_median,
        fraction=float((nearest < ratio * train_median).double().mean()),
    )
