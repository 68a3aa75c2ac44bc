"""The maths of the evaluation metrics against closed forms and direct formulas."""

import math

import pytest
import torch

from pixeldiffusion.evaluation.metrics import (
    class_coverage,
    frechet_distance,
    kernel_inception_distance,
    mean_and_covariance,
    memorisation,
    mmd2_unbiased,
    precision_recall,
    psd_sqrt,
)

g = torch.Generator().manual_seed(0)
f64 = torch.float64


def random_rotation(d: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
    return q


# --- Frechet distance ----------------------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    """Diagonal covariances: Tr (S1 S2)^(1/2) = sum sqrt(a_i b_i), so d^2 = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
    a, b = torch.rand(6, generator=g, dtype=f64) + 0.1, torch.rand(6, generator=g, dtype=f64) + 0.1
    mu1, mu2 = torch.randn(6, generator=g, dtype=f64), torch.randn(6, generator=g, dtype=f64)
    expected = ((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(float(expected), rel=1e-10)


def test_frechet_distance_is_invariant_to_a_common_rotation():
    """Commuting covariances Q diag(a) Q^T and Q diag(b) Q^T keep the diagonal closed form."""
    a, b = torch.rand(5, generator=g, dtype=f64) + 0.1, torch.rand(5, generator=g, dtype=f64) + 0.1
    q = random_rotation(5)
    expected = ((a.sqrt() - b.sqrt()) ** 2).sum()
    zero = torch.zeros(5, dtype=f64)
    got = frechet_distance(zero, q @ torch.diag(a) @ q.T, zero, q @ torch.diag(b) @ q.T)
    assert got == pytest.approx(float(expected), rel=1e-9)


def test_frechet_distance_of_non_commuting_2x2_covariances():
    """For 2x2 matrices, Tr (S1 S2)^(1/2) = sqrt(Tr(S1 S2) + 2 sqrt(det S1 det S2)) (eigenvalues l1, l2 >= 0)."""
    s1 = torch.tensor([[2.0, 0.7], [0.7, 1.0]], dtype=f64)
    s2 = torch.tensor([[0.5, -0.3], [-0.3, 1.5]], dtype=f64)
    trace_sqrt = math.sqrt(float((s1 @ s2).trace()) + 2 * math.sqrt(float(s1.det() * s2.det())))
    mu1, mu2 = torch.tensor([1.0, 2.0], dtype=f64), torch.tensor([0.0, -1.0], dtype=f64)
    expected = 1 + 9 + float(s1.trace() + s2.trace()) - 2 * trace_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_is_exact_and_stable_for_singular_covariances():
    # zero variances in some directions: the closed form still holds
    a = torch.tensor([1.0, 0.0, 4.0, 0.0], dtype=f64)
    b = torch.tensor([0.0, 0.0, 1.0, 9.0], dtype=f64)
    zero = torch.zeros(4, dtype=f64)
    assert frechet_distance(zero, torch.diag(a), zero, torch.diag(b)) == pytest.approx(1 + 0 + 1 + 9, rel=1e-10)
    # fewer samples than dimensions (rank 9 in 64 dimensions): the distance of a set to itself is 0, not NaN
    x = torch.randn(10, 64, generator=g)
    mu, sigma = mean_and_covariance(x)
    assert torch.linalg.matrix_rank(sigma) == 9
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-6)
    y = torch.randn(10, 64, generator=g) + 1
    d = frechet_distance(mu, sigma, *mean_and_covariance(y))
    assert math.isfinite(d) and d > 64 * 0.5


def test_frechet_distance_of_samples_converges_to_the_population_value():
    """Samples of N(0, I) and N(m, 4 I) in 8 dimensions: d^2 = |m|^2 + 8 (1 - 2)^2."""
    m = torch.full((8,), 0.5)
    x = torch.randn(20000, 8, generator=g)
    y = 2 * torch.randn(20000, 8, generator=g) + m
    assert frechet_distance(*mean_and_covariance(x), *mean_and_covariance(y)) == pytest.approx(2 + 8, rel=0.03)


def test_mean_and_covariance_match_torch():
    x = torch.randn(50, 4, generator=g)
    mu, sigma = mean_and_covariance(x)
    assert torch.allclose(mu, x.double().mean(0)) and torch.allclose(sigma, torch.cov(x.double().T))
    root = psd_sqrt(sigma)
    assert torch.allclose(root @ root, sigma, atol=1e-12)


# --- KID -----------------------------------------------------------------------------------------------------


def direct_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased MMD^2 estimator as written in the paper, one kernel evaluation at a time."""
    k = lambda a, b: (float(a @ b) / len(a) + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_matches_the_direct_formula():
    x, y = torch.randn(12, 5, generator=g, dtype=f64), torch.randn(9, 5, generator=g, dtype=f64) + 0.3
    assert mmd2_unbiased(x, y) == pytest.approx(direct_mmd2(x, y), rel=1e-12)


def test_mmd2_estimator_is_unbiased():
    """Over many independent pairs of small samples of one distribution the estimates average to 0 (the biased
    V-statistic, which keeps the i = j terms, would average about (E k(x, x) - E k(x, y)) * 2/m > 0)."""
    estimates = torch.tensor(
        [mmd2_unbiased(torch.randn(20, 4, generator=g), torch.randn(20, 4, generator=g)) for _ in range(400)]
    )
    assert abs(estimates.mean()) < 3 * estimates.std() / math.sqrt(len(estimates))


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    x, y = torch.randn(1000, 16, generator=g), torch.randn(1000, 16, generator=g)
    mean, std = kernel_inception_distance(x, y, subsets=20, subset_size=200)
    assert abs(mean) < std
    shifted_mean, _ = kernel_inception_distance(x, y + 0.5, subsets=20, subset_size=200)
    assert shifted_mean > 10 * std


def test_kid_subsets_are_seeded():
    x, y = torch.randn(300, 4, generator=g), torch.randn(300, 4, generator=g)
    assert kernel_inception_distance(x, y, subsets=5, subset_size=100) == kernel_inception_distance(
        x, y, subsets=5, subset_size=100
    )


# --- precision and recall ------------------------------------------------------------------------------------


def test_precision_recall_of_identical_sets_is_one_one():
    x = torch.randn(500, 8, generator=g)
    assert precision_recall(x, x.clone()) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero_zero():
    x = torch.randn(500, 8, generator=g)
    assert precision_recall(x, torch.randn(500, 8, generator=g) + 100) == (0.0, 0.0)


def test_a_set_covering_half_of_the_support_has_recall_one_half():
    """Real: uniform on [0, 2] x [0, 1]; fake: uniform on [0, 1] x [0, 1] (twice as dense): every fake point is
    real-looking (precision 1), and the fake manifold covers the left half of the real points (recall 1/2)."""
    real = torch.rand(4000, 2, generator=g) * torch.tensor([2.0, 1.0])
    fake = torch.rand(4000, 2, generator=g)
    precision, recall = precision_recall(real, fake)
    assert precision > 0.98
    assert recall == pytest.approx(0.5, abs=0.03)


# --- class coverage and memorisation -------------------------------------------------------------------------


def test_class_coverage_entropy_and_classes_present():
    uniform = torch.arange(1000) % 10
    assert class_coverage(uniform, 10) == (pytest.approx(math.log(10)), 10)
    two = torch.arange(1000) % 2
    assert class_coverage(two, 10) == (pytest.approx(math.log(2)), 2)
    stray = torch.cat([torch.zeros(995, dtype=torch.long), torch.full((5,), 7)])  # 0.5% of a class is not present
    entropy, present = class_coverage(stray, 10)
    assert present == 1 and 0 < entropy < 0.05


def test_memorisation_flags_copies_of_training_images():
    train = torch.rand(500, 64, generator=g) * 2 - 1
    copies = train[:40] + 0.01 * torch.randn(40, 64, generator=g)
    fresh = torch.rand(60, 64, generator=g) * 2 - 1
    result = memorisation(torch.cat([copies, fresh]), train, probes=200)
    assert result.fraction == pytest.approx(0.4)
    assert result.threshold == pytest.approx(0.5 * result.train_median)
    assert 0.5 < result.train_median < 1  # RMS distance of uniform points in [-1, 1]: sqrt(2/3) = 0.82
    assert result.median > result.threshold  # most samples are fresh
