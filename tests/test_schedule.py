import math

import pytest
import torch

from pixeldiffusion.errors import ConfigError
from pixeldiffusion.schedule import PREDICTIONS, SCHEDULES, NoiseSchedule, ScheduleConfig


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("T", [10, 500, 1000])
def test_tables_are_consistent(kind, T):
    s = NoiseSchedule.from_config(ScheduleConfig(kind=kind, timesteps=T))
    assert s.beta.shape == s.alpha_bar.shape == (T + 1,)
    assert s.alpha_bar[0] == 1 and s.beta[0] == 0
    beta = s.beta[1:].double()
    assert torch.all(beta > 0) and torch.all(beta < 1)
    assert torch.all(beta[1:] >= beta[:-1] - 1e-7), "betas increase with t"
    assert torch.all(s.alpha_bar[1:] < s.alpha_bar[:-1]), "alpha_bar decreases strictly"
    # alpha_bar is the running product of alpha = 1 - beta
    assert s.alpha_bar.dtype == torch.float64
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - s.beta, 0), rtol=1e-12)
    if T == 1000:
        assert s.alpha_bar[-1] < 0.01, "x_T is nearly pure noise"


def test_linear_endpoints():
    s = NoiseSchedule.from_config(ScheduleConfig(kind="linear", timesteps=1000))
    assert s.beta[1].item() == pytest.approx(1e-4) and s.beta[1000].item() == pytest.approx(0.02)


def test_cosine_matches_its_formula():
    T, eps = 1000, 0.008
    s = NoiseSchedule.from_config(ScheduleConfig(kind="cosine", timesteps=T))
    f = lambda t: math.cos((t / T + eps) / (1 + eps) * math.pi / 2) ** 2  # noqa: E731
    for t in (1, 10, 250, 500, 900):
        assert s.alpha_bar[t].item() == pytest.approx(f(t) / f(0), rel=1e-5)
    assert s.beta.max().item() == pytest.approx(0.999), "the last beta is clipped at 0.999"


def test_q_sample_moments_match_the_step_by_step_chain():
    """Propagate mean and variance of x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z exactly, and by simulation."""
    s = NoiseSchedule.from_config(ScheduleConfig(kind="linear", timesteps=200))
    x0 = torch.tensor([0.7, -0.3])
    g = torch.Generator().manual_seed(0)
    chain = x0.repeat(200_000, 1).double()
    mean, var = x0.double(), torch.zeros(2, dtype=torch.float64)
    for t in range(1, 201):
        b = s.beta[t].double()
        mean, var = (1 - b).sqrt() * mean, (1 - b) * var + b
        chain = (1 - b).sqrt() * chain + b.sqrt() * torch.randn(chain.shape, generator=g, dtype=torch.float64)
        if t in (1, 20, 100, 200):
            a = s.alpha_bar[t].double()
            assert torch.allclose(mean, a.sqrt() * x0.double(), atol=1e-6)
            assert torch.allclose(var, (1 - a).expand(2), atol=1e-6)
            closed = s.q_sample(x0.expand(200_000, 2), t, torch.randn(200_000, 2, generator=g))
            assert torch.allclose(chain.mean(0).float(), closed.mean(0), atol=0.01)
            assert torch.allclose(chain.var(0).float(), closed.var(0), rtol=0.02, atol=1e-4)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x0): check mean and variance by completing the square."""
    s = NoiseSchedule.from_config(ScheduleConfig(timesteps=100))
    x0, x_t = torch.tensor([0.5]), torch.tensor([-0.2])
    for t in (2, 50, 100):
        a, b, ab_prev = s.alpha[t].double(), s.beta[t].double(), s.alpha_bar[t - 1].double()
        precision = a / b + 1 / (1 - ab_prev)
        mean_ref = (a.sqrt() / b * x_t.double() + ab_prev.sqrt() / (1 - ab_prev) * x0.double()) / precision
        mean, var = s.posterior(x_t, x0, t, t - 1)
        assert var.item() == pytest.approx((1 / precision).item(), rel=1e-4)
        assert mean.item() == pytest.approx(mean_ref.item(), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_prediction_conversions_round_trip(prediction):
    s = NoiseSchedule.from_config(ScheduleConfig(kind="cosine", timesteps=1000))
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1, torch.randn(6, 1, 4, 4, generator=g)
    t = torch.tensor([1, 10, 300, 500, 800, 999])
    x_t = s.q_sample(x0, t, eps)
    x0_hat, eps_hat = s.x0_eps(x_t, t, s.target(x0, eps, t, prediction), prediction)
    assert torch.allclose(x0_hat, x0, atol=2e-3) and torch.allclose(eps_hat, eps, atol=2e-3)


def test_flow_schedule_is_the_straight_path_rescaled_to_unit_variance():
    """x_t = ((1 - s) x0 + s eps) / ((1 - s)^2 + s^2)^(1/2), s = t/T, for t < T; at t = T the clipped beta keeps
    a_bar_T > 0."""
    T = 100
    s = NoiseSchedule.from_config(ScheduleConfig(kind="flow", timesteps=T))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(5, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1, torch.randn(5, 1, 3, 3, generator=g)
    eps = eps.double()
    t = torch.tensor([1, 10, 50, 90, 99])
    frac = (t / T).double().reshape(-1, 1, 1, 1)
    path = ((1 - frac) * x0 + frac * eps) / ((1 - frac) ** 2 + frac**2).sqrt()
    assert torch.allclose(s.q_sample(x0, t, eps), path, atol=1e-12)
    assert 0 < s.alpha_bar[T] < 1e-6 and s.beta[T] == pytest.approx(0.999)


def test_snr_is_alpha_bar_over_its_complement():
    s = NoiseSchedule.from_config()
    assert torch.allclose(s.snr(torch.tensor([5])), s.alpha_bar[5] / (1 - s.alpha_bar[5]))


def test_bad_configs_name_the_valid_choices():
    with pytest.raises(ConfigError, match="linear, cosine"):
        ScheduleConfig(kind="exponential")
    with pytest.raises(ConfigError, match="timesteps"):
        ScheduleConfig(timesteps=1)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_nearest_t_is_the_t_of_the_closest_noise_level(kind):
    """nearest_t agrees with a brute-force argmin over |ln sigma_t - ln sigma|, off the grid's ends as well."""
    schedule = NoiseSchedule.from_config(ScheduleConfig(kind=kind))
    table = -schedule.half_log_snr(torch.arange(1, schedule.T + 1))
    log_sigma = torch.cat([torch.linspace(table[0] - 3, table[-1] + 3, 5001, dtype=torch.float64), table])
    expected = (table[None, :] - log_sigma[:, None]).abs().argmin(dim=1) + 1
    assert torch.equal(schedule.nearest_t(log_sigma), expected)
