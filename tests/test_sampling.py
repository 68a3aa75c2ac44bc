"""Samplers against closed forms and against the diffusers schedulers (an independent implementation)."""

import pytest
import torch

from pixeldiffusion.errors import ConfigError
from pixeldiffusion.models.embeddings import null_like
from pixeldiffusion.sampling import ddim, ddpm, guided, make_denoiser, sample, timestep_grid
from pixeldiffusion.schedule import NoiseSchedule, ScheduleConfig

diffusers = pytest.importorskip("diffusers")

DIFFUSERS_SCHEDULE = {
    "linear": "linear",
    "quadratic": "scaled_linear",
    "cosine": "squaredcos_cap_v2",
    "sigmoid": "sigmoid",
}


def fake_model(x, t, cond=None):
    """A deterministic 'network' whose output depends on x and t."""
    return 0.3 * torch.sin(3 * x + t[:, None, None, None] / 100) + 0.1 * x


def test_grids_start_at_T_and_end_at_zero():
    assert timestep_grid(1000, 10, "trailing") == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert timestep_grid(1000, 10, "leading") == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1, 0]
    assert timestep_grid(1000, 4, "linspace") == [1000, 667, 334, 1, 0]
    assert timestep_grid(50, 50, "trailing") == list(range(50, -1, -1))
    with pytest.raises(ConfigError, match="between 1 and T"):
        timestep_grid(1000, 1001)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [7, 50, 1000])
def test_grids_equal_diffusers_timesteps_plus_one(spacing, steps):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    assert timestep_grid(1000, steps, spacing)[:-1] == [int(t) + 1 for t in sched.timesteps]


def ours_one_step(sampler, schedule, x, t, s, prediction, clip, **kw):
    denoise = make_denoiser(fake_model, schedule, prediction, clip_x0=clip)
    return sampler(denoise, schedule, x, [t, s], generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("kind", list(DIFFUSERS_SCHEDULE))
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("spacing,steps", [("leading", 50), ("trailing", 20), ("linspace", 13), ("trailing", 1000)])
def test_one_ddpm_step_equals_diffusers(kind, prediction, variance, spacing, steps):
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule=DIFFUSERS_SCHEDULE[kind],
        timestep_spacing=spacing,
        prediction_type={"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[prediction],
        variance_type={"posterior": "fixed_small", "beta": "fixed_large"}[variance],
        clip_sample=True,
    )
    sched.set_timesteps(steps)
    ours = NoiseSchedule.from_config(ScheduleConfig(kind=kind, timesteps=1000))
    assert torch.allclose(ours.alpha_bar[1:], sched.alphas_cumprod, rtol=1e-6)
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    grid = timestep_grid(1000, steps, spacing)
    for i in (0, len(grid) // 2, len(grid) - 3):  # early, middle and late steps (each adds noise)
        t, s = grid[i], grid[i + 1]
        t_d = torch.tensor(t - 1)
        expected = sched.step(fake_model(x, t_d.expand(3) + 1), t_d, x, generator=torch.Generator().manual_seed(0))
        got = ours_one_step(ddpm, ours, x, t, s, prediction, True, variance=variance)
        assert torch.allclose(got, expected.prev_sample, atol=1e-5), (t, s)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing,steps", [("leading", 50), ("trailing", 10), ("trailing", 100), ("leading", 1000)])
@pytest.mark.parametrize("clip", [True, False])
def test_one_ddim_step_equals_diffusers(kind, prediction, eta, spacing, steps, clip):
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule=DIFFUSERS_SCHEDULE[kind],
        timestep_spacing=spacing,
        prediction_type={"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[prediction],
        clip_sample=clip,
        set_alpha_to_one=True,
    )
    sched.set_timesteps(steps)
    ours = NoiseSchedule.from_config(ScheduleConfig(kind=kind, timesteps=1000))
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    grid = timestep_grid(1000, steps, spacing)
    for i in (0, len(grid) // 2, len(grid) - 2):
        t, s = grid[i], grid[i + 1]
        t_d = torch.tensor(t - 1)
        expected = sched.step(
            fake_model(x, t_d.expand(3) + 1),
            t_d,
            x,
            eta=eta,
            use_clipped_model_output=True,
            generator=torch.Generator().manual_seed(0),
        )
        got = ours_one_step(ddim, ours, x, t, s, prediction, clip, eta=eta)
        assert torch.allclose(got, expected.prev_sample, atol=1e-5), (t, s)


@pytest.mark.parametrize(
    "sampler,variance,eta", [("ddpm", "posterior", None), ("ddim", None, 0.0), ("ddim", None, 1.0)]
)
@pytest.mark.parametrize("spacing,steps", [("leading", 25), ("trailing", 40)])
def test_full_loops_equal_diffusers(sampler, variance, eta, spacing, steps):
    """Whole sampling loops, noise drawn from identically seeded generators in the same order."""
    cls = diffusers.DDPMScheduler if sampler == "ddpm" else diffusers.DDIMScheduler
    sched = cls(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", timestep_spacing=spacing, clip_sample=True
    )
    sched.set_timesteps(steps)
    x_T = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(5)
    x = x_T
    for t_d in sched.timesteps:
        kw = {} if sampler == "ddpm" else {"eta": eta, "use_clipped_model_output": True}
        x = sched.step(fake_model(x, t_d.expand(2) + 1), t_d, x, generator=g, **kw).prev_sample
        # diffusers draws noise on the last DDPM step too (scaled by zero variance); ours does not
    ours = NoiseSchedule.from_config(ScheduleConfig(kind="cosine", timesteps=1000))
    params = {"variance": variance} if sampler == "ddpm" else {"eta": eta}
    got = sample(
        fake_model,
        ours,
        x_T,
        prediction="eps",
        sampler=sampler,
        steps=steps,
        spacing=spacing,
        generator=torch.Generator().manual_seed(5),
        **params,
    )
    assert torch.allclose(got, x, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 5, 100])
def test_ddim_with_an_exact_eps_oracle_returns_x0(steps):
    """If the network knows the true noise, deterministic DDIM recovers x0 from any x_t in any number of steps."""
    schedule = NoiseSchedule.from_config(ScheduleConfig(kind="cosine", timesteps=1000))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(4, 1, 3, 3, generator=g) * 2 - 1, torch.randn(4, 1, 3, 3, generator=g)
    x_T = schedule.q_sample(x0, 1000, eps)
    oracle = lambda x, t, cond=None: schedule.eps_from_x0(x, t[0].item(), x0)  # noqa: E731
    got = sample(oracle, schedule, x_T, prediction="eps", steps=steps, clip_x0=False)
    assert torch.allclose(got, x0, atol=1e-4)


def test_sampling_is_reproducible_for_a_seed():
    schedule = NoiseSchedule.from_config(ScheduleConfig(timesteps=100))
    runs = [
        sample(
            fake_model,
            schedule,
            torch.zeros(2, 1, 4, 4),
            prediction="eps",
            sampler="ddpm",
            steps=100,
            generator=torch.Generator().manual_seed(9),
        )
        for _ in range(2)
    ]
    assert torch.equal(*runs)


def test_guidance_combines_conditional_and_null_outputs_in_one_pass():
    calls = []

    def model(x, t, cond):
        calls.append(len(x))
        return torch.where(cond.isnan() if cond.is_floating_point() else (cond < 0), 1.0, 3.0)[:, None, None, None] * x

    cond, x, t = torch.tensor([2, 5]), torch.ones(2, 1, 2, 2), torch.tensor([4, 4])
    out = guided(model, cond, 2.5)(x, t)
    assert calls == [4], "conditional and null rows share one batched forward"
    assert torch.allclose(out, (1 + 2.5 * (3 - 1)) * x)  # out_null + s (out_cond - out_null)
    assert torch.equal(guided(model, cond, 1.0)(x, t), model(x, t, cond))
    assert torch.equal(guided(model, cond, 0.0)(x, t), model(x, t, null_like(cond)))


def test_null_condition_sentinels():
    assert null_like(torch.tensor([3, 1])).tolist() == [-1, -1]
    assert null_like(torch.zeros(2, 5)).isnan().all()
