"""The denoising objective: noise an image, ask the network for its prediction, weight the error.

L = w(t) * loss(model(x_t, t, cond), target),  x_t = q_sample(x0, t, eps),  t ~ U{1..T},  eps ~ N(0, I)
(DDPM Algorithm 1, with the prediction target, weighting and the distribution of t as options).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pixeldiffusion.errors import ConfigError
from pixeldiffusion.schedule import EDM_SIGMA_DATA, NoiseSchedule

LOSSES = ("l2", "l1", "huber")
WEIGHTINGS = ("none", "min_snr")
T_SAMPLINGS = ("uniform", "lognormal")


def check_objective(loss: str, weighting: str) -> None:
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def elementwise_loss(output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over pixels of the l2, l1 or huber error, one value per image (B,)."""
    if kind == "l2":
        err = F.mse_loss(output, target, reduction="none")
    elif kind == "l1":
        err = F.l1_loss(output, target, reduction="none")
    else:
        err = F.smooth_l1_loss(output, target, reduction="none")
    return err.flatten(1).mean(dim=1)


def min_snr_weight(snr: torch.Tensor, prediction: str, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma weighting (Hang et al. 2023, eq. 9) expressed for the network's target: the x0 error is weighted
    min(SNR, gamma), and an output error of one makes an x0 error of c = d x0 / d output, so w = min(SNR, gamma) c^2:
    c^2 = 1 / SNR for eps, 1 for x0, 1 / (SNR + 1) for v, d^2 / (d^2 SNR + 1) for edm (d = sigma_data) and
    1 / (sqrt(SNR) + 1)^2 for flow."""
    clipped = snr.clamp(max=gamma)
    if prediction == "eps":
        return clipped / snr
    if prediction == "x0":
        return clipped
    if prediction == "edm":
        return clipped * EDM_SIGMA_DATA**2 / (EDM_SIGMA_DATA**2 * snr + 1)
    if prediction == "flow":
        return clipped / (snr.sqrt() + 1) ** 2
    return clipped / (snr + 1)


def draw_times(
    schedule: NoiseSchedule,
    n: int,
    stream: torch.Generator,
    *,
    sampling: str = "uniform",
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> torch.Tensor:
    """n training times: t ~ U{1..T}, or for "lognormal" the t whose noise level sqrt(1 / SNR(t)) is nearest
    sigma, ln sigma ~ N(p_mean, p_std^2) (EDM's training distribution of sigma, Karras et al. 2022, Table 1)."""
    device = stream.device
    if sampling == "uniform":
        return torch.randint(1, schedule.T + 1, (n,), generator=stream, device=device)
    log_sigma = p_mean + p_std * torch.randn(n, generator=stream, device=device)
    return schedule.nearest_t(log_sigma)


def denoising_loss(
    model: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    cond: torch.Tensor | None,
    *,
    prediction: str,
    loss: str = "l2",
    weighting: str = "none",
    min_snr_gamma: float = 5.0,
) -> torch.Tensor:
    """The weighted per-image loss (B,) of one batch; its mean is what the optimiser minimises."""
    x_t = schedule.q_sample(x0, t, eps)
    output = model(x_t, t, cond)
    per_image = elementwise_loss(output.float(), schedule.target(x0, eps, t, prediction), loss)
    if weighting == "min_snr":
        per_image = per_image * min_snr_weight(schedule.snr(t).float(), prediction, min_snr_gamma)
    return per_image
