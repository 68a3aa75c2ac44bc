"""Noise schedules and the closed-form forward process of DDPM (Ho et al. 2020).

Conventions, stated once for the whole package:

- ``beta[t]`` is the *variance* of the noise added at step t, ``alpha[t] = 1 - beta[t]`` and
  ``alpha_bar[t] = alpha[1] * ... * alpha[t]``, as in the DDPM paper (seed 003's "betas" are
  standard deviations; here they never are).
- Time is discrete, ``t`` in {1, ..., T}. Every table has an entry for t = 0 as well, with
  ``beta[0] = 0`` and ``alpha_bar[0] = 1``: x_0 is the clean image, so the last step of any
  sampler (to t = 0) needs no special case. The network receives this same integer t.
- ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps`` with eps ~ N(0, I) (eq. 4).

Tables are built and kept in float64; a value read from them takes the dtype of the tensor it scales.
float64 matters at small t, where 1 - alpha_bar_t / alpha_bar_s cancels: in float32 the last DDPM step's
beta carries a relative error of about 5e-4 (diffusers computes it so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pixeldiffusion.errors import ConfigError

SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid", "flow")
PREDICTIONS = ("eps", "x0", "v", "edm", "flow")
EDM_SIGMA_DATA = 0.5  # sigma_data of the edm target: EDM's value for images in [-1, 1] (Karras et al. 2022)


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = field(
        default="linear", metadata={"help": "the noise schedule: linear, cosine, quadratic, sigmoid or flow"}
    )
    timesteps: int = field(default=1000, metadata={"help": "T, the number of forward steps"})
    beta_start: float = field(default=1e-4, metadata={"help": "beta_1 for linear, quadratic and sigmoid schedules"})
    beta_end: float = field(default=0.02, metadata={"help": "beta_T for linear, quadratic and sigmoid schedules"})
    cosine_s: float = field(
        default=0.008, metadata={"help": "offset s of the cosine schedule (Nichol & Dhariwal 2021, eq. 17)"}
    )

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.kind!r}; choose one of {', '.join(SCHEDULES)}")
        if self.timesteps < 2:
            raise ConfigError(f"timesteps must be at least 2, got {self.timesteps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")


def make_betas(config: ScheduleConfig) -> torch.Tensor:
    """beta_1 ... beta_T in float64 for the chosen schedule kind (length T)."""
    T, b0, b1 = config.timesteps, config.beta_start, config.beta_end
    if config.kind == "linear":  # DDPM, section 4
        return torch.linspace(b0, b1, T, dtype=torch.float64)
    if config.kind == "quadratic":  # linear in sqrt(beta) (diffusers "scaled_linear")
        return torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2
    if config.kind == "sigmoid":  # sigmoid ramp from beta_start to beta_end (seed 002's bonus)
        return torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float64)) * (b1 - b0) + b0
    if config.kind == "flow":
        return _betas_from_alpha_bar(_flow_alpha_bar(torch.arange(T + 1, dtype=torch.float64) / T))
    # cosine: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi / 2) (Nichol & Dhariwal 2021, eq. 17)
    s = config.cosine_s
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    return _betas_from_alpha_bar(f / f[0])


def _flow_alpha_bar(s: torch.Tensor) -> torch.Tensor:
    """The straight path of rectified flow, x_s = (1 - s) x_0 + s eps (Liu et al. 2023), seen on the variance-
    preserving chain: x_t = x_s / ((1 - s)^2 + s^2)^(1/2), so alpha_bar = (1 - s)^2 / ((1 - s)^2 + s^2), s = t/T."""
    return (1 - s) ** 2 / ((1 - s) ** 2 + s**2)


def _betas_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped at 0.999 so that alpha_bar_T > 0 (Nichol & Dhariwal)."""
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


def broadcast_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float64 value per batch item (B,) or a scalar, shaped to broadcast against `like` and in its dtype."""
    return value.reshape(value.shape + (1,) * (like.ndim - value.ndim)).to(like.dtype)


def _at(table: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """table[t], shaped to broadcast against `like` (t is a scalar or one timestep per batch item)."""
    return broadcast_like(table[t], like)


class NoiseSchedule:
    """The tables of one discrete schedule and the maths that only needs them.

    ``beta``, ``alpha`` and ``alpha_bar`` have T + 1 entries indexed directly by t (see module docstring).
    """

    def __init__(self, betas: torch.Tensor, config: ScheduleConfig | None = None):
        """A schedule from beta_1 ... beta_T; use `from_config` for the named kinds."""
        self.config = config
        self.T = len(betas)
        self.beta = torch.cat([torch.zeros(1, dtype=torch.float64, device=betas.device), betas.double()])
        self.alpha = 1 - self.beta
        self.alpha_bar = torch.cumprod(self.alpha, dim=0)

    @classmethod
    def from_config(cls, config: ScheduleConfig = ScheduleConfig()) -> NoiseSchedule:
        return cls(make_betas(config), config)

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """The same schedule with its tables on `device` (in float32 on Apple's MPS, which has no float64)."""
        device = torch.device(device)
        dtype = torch.float32 if device.type == "mps" else torch.float64
        other = NoiseSchedule.__new__(NoiseSchedule)
        other.__dict__.update(self.__dict__)
        other.beta, other.alpha, other.alpha_bar = (
            x.to(device, dtype) for x in (self.beta, self.alpha, self.alpha_bar)
        )
        return other

    def snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """Signal-to-noise ratio SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021)."""
        a = self.alpha_bar[t]
        return a / (1 - a)

    def half_log_snr(self, t: torch.Tensor | int) -> torch.Tensor:
        """lambda_t = log(alpha_t / sigma_t) = log(sqrt(alpha_bar_t) / sqrt(1 - alpha_bar_t)) (DPM-Solver's lambda)."""
        a = self.alpha_bar[t]
        return 0.5 * (a.log() - torch.log1p(-a))

    def nearest_t(self, log_sigma: torch.Tensor) -> torch.Tensor:
        """The t in 1..T whose ln sigma_t = -lambda_t = ln sqrt((1 - alpha_bar_t) / alpha_bar_t) is nearest each
        ln sigma (a continuous noise level on the discrete chain)."""
        table = -self.half_log_snr(torch.arange(1, self.T + 1, device=log_sigma.device))  # increasing in t
        log_sigma = log_sigma.to(table.dtype)
        # table[above - 1] < ln sigma <= table[above], the ends clamped so that both neighbours exist
        above = torch.searchsorted(table, log_sigma).clamp(1, self.T - 1)
        nearer_below = (log_sigma - table[above - 1]) < (table[above] - log_sigma)
        return above + 1 - nearer_below.long()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0): x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4)."""
        a = _at(self.alpha_bar, t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def posterior(
        self, x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor | int, s: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_s | x_t, x_0) for any s < t (DDPM eqs. 6-7, with alpha_t -> a_bar_t / a_bar_s).

        mean = sqrt(a_bar_s) beta_ts / (1 - a_bar_t) x_0 + sqrt(alpha_ts) (1 - a_bar_s) / (1 - a_bar_t) x_t
        var  = (1 - a_bar_s) / (1 - a_bar_t) beta_ts,   alpha_ts = a_bar_t / a_bar_s,  beta_ts = 1 - alpha_ts
        """
        a_t, a_s = self.alpha_bar[t], self.alpha_bar[s]
        alpha_ts = a_t / a_s
        beta_ts = 1 - alpha_ts
        coef_x0 = broadcast_like(a_s.sqrt() * beta_ts / (1 - a_t), x_t)
        coef_x_t = broadcast_like(alpha_ts.sqrt() * (1 - a_s) / (1 - a_t), x_t)
        return coef_x0 * x0 + coef_x_t * x_t, broadcast_like((1 - a_s) / (1 - a_t) * beta_ts, x_t)

    # Conversions between what a network may predict and the clean image / noise. With a = alpha_bar_t,
    # alpha = sqrt(a), sigma = sqrt(1 - a), x_t = alpha x0 + sigma eps:
    #   eps, x0, v = alpha eps - sigma x0 (Salimans & Ho 2022);
    #   edm: EDM's preconditioned output F (Karras et al. 2022, eq. 7) with sigma_edm = sigma / alpha and
    #        sigma_data = d: D(x) = c_skip x + c_out F, x = x_t / alpha; the network reads x_t, VP's own c_in;
    #   flow: the velocity u = eps - x0 of the straight path x_s = (1 - s) x0 + s eps (Lipman et al. 2023),
    #         x_s = x_t / (alpha + sigma), s = sigma / (alpha + sigma).

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | int, prediction: str) -> torch.Tensor:
        """Regression target: eps, x0, v = alpha eps - sigma x0, u = eps - x0, or EDM's
        F = (x0 - c_skip x) / c_out = (sigma x0 / d - d alpha eps) / k,  k = (d^2 a + 1 - a)^(1/2)."""
        if prediction == "eps":
            return eps
        if prediction == "x0":
            return x0
        if prediction == "flow":
            return eps - x0
        a = _at(self.alpha_bar, t, x0)
        if prediction == "edm":
            d = EDM_SIGMA_DATA
            return ((1 - a).sqrt() * x0 / d - d * a.sqrt() * eps) / (d**2 * a + 1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def x0_eps(
        self, x_t: torch.Tensor, t: torch.Tensor | int, output: torch.Tensor, prediction: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by a network output of the given prediction type at x_t, t.

        eps:  x0 = (x_t - sigma eps) / alpha;  x0: eps = (x_t - alpha x0) / sigma;
        v:    x0 = alpha x_t - sigma v,  eps = sigma x_t + alpha v;
        edm:  x0 = (d^2 alpha x_t + d sigma k F) / k^2,  eps = (sigma x_t - d alpha k F) / k^2;
        flow: x0 = (x_t - sigma u) / (alpha + sigma),  eps = (x_t + alpha u) / (alpha + sigma).
        """
        a = _at(self.alpha_bar, t, x_t)
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        if prediction == "eps":
            return (x_t - sigma * output) / alpha, output
        if prediction == "x0":
            return output, self.eps_from_x0(x_t, t, output)
        if prediction == "v":
            return alpha * x_t - sigma * output, sigma * x_t + alpha * output
        if prediction == "edm":
            d = EDM_SIGMA_DATA
            k2 = d**2 * a + 1 - a
            dkF = d * k2.sqrt() * output
            return (d**2 * alpha * x_t + sigma * dkF) / k2, (sigma * x_t - alpha * dkF) / k2
        if prediction == "flow":
            return (x_t - sigma * output) / (alpha + sigma), (x_t + alpha * output) / (alpha + sigma)
        raise ConfigError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor) -> torch.Tensor:
        """eps = (x_t - sqrt(a_bar_t) x0) / sqrt(1 - a_bar_t), the inverse of q_sample."""
        a = _at(self.alpha_bar, t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()
