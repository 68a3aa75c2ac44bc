"""Samplers against closed forms and against the diffusers schedulers (an independent implementation)."""

import itertools

import pytest
import torch

from pixeldiffusion.errors import ConfigError
from pixeldiffusion.models.classifier import NoisyClassifier
from pixeldiffusion.models.embeddings import null_like
from pixeldiffusion.models.unet import UNetConfig
from pixeldiffusion.sampling import (
    SAMPLERS,
    SPACINGS,
    ClassifierGuidance,
    classifier_gradient,
    classifier_guided,
    ddim,
    ddpm,
    guided,
    make_denoiser,
    nfe,
    sample,
    shown_steps,
    timestep_grid,
)
from pixeldiffusion.schedule import EDM_SIGMA_DATA, PREDICTIONS, NoiseSchedule, ScheduleConfig

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


COSINE = NoiseSchedule.from_config(ScheduleConfig(kind="cosine", timesteps=1000))
LINEAR = NoiseSchedule.from_config(ScheduleConfig(kind="linear", timesteps=1000))
PREDICTION_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def test_grids_start_at_T_and_end_at_zero():
    assert timestep_grid(LINEAR, 10, "trailing") == [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert timestep_grid(LINEAR, 10, "leading") == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1, 0]
    assert timestep_grid(LINEAR, 4, "linspace") == [1000, 667, 334, 1, 0]
    short = NoiseSchedule.from_config(ScheduleConfig(timesteps=50))
    assert timestep_grid(short, 50, "trailing") == list(range(50, -1, -1))
    with pytest.raises(ConfigError, match="between 1 and T"):
        timestep_grid(LINEAR, 1001)


@pytest.mark.parametrize("T", [2, 37, 999, 1000])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_grid_is_well_formed_for_every_step_count(T, spacing):
    """For any T and every steps in 1..T: steps + 1 strictly descending times from at most T down to 0."""
    schedule = NoiseSchedule.from_config(ScheduleConfig(kind="cosine", timesteps=T))
    for steps in range(1, T + 1):
        grid = timestep_grid(schedule, steps, spacing)
        assert len(grid) == steps + 1 and grid[-1] == 0 and grid[0] <= T, (steps, grid[:3], grid[-3:])
        assert all(a > b for a, b in itertools.pairwise(grid)), (steps, grid)
        if spacing in ("trailing", "karras"):
            assert grid[0] == T


def test_shown_steps_are_evenly_spaced_and_end_with_the_last():
    assert shown_steps(10, 4) == [0, 3, 6, 9]
    assert shown_steps(3, 40) == [0, 1, 2]
    assert shown_steps(5, 1) == [4] and shown_steps(5, 0) == []


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 3, 61, 333, 999])
def test_odd_step_counts_sample_finite_images(sampler, steps):
    x_T = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    got = sample(fake_model, LINEAR, x_T, prediction="eps", sampler=sampler, steps=steps, noise=seeded_noise(1))
    assert got.isfinite().all()


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [7, 50, 1000])
def test_grids_equal_diffusers_timesteps_plus_one(spacing, steps):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    sched.set_timesteps(steps)
    assert timestep_grid(LINEAR, steps, spacing)[:-1] == [int(t) + 1 for t in sched.timesteps]


@pytest.mark.parametrize("schedule", [LINEAR, COSINE])
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 50, 200, 1000])
def test_karras_grid_descends_from_T_to_one_and_follows_the_sigma_ramp(schedule, steps):
    grid = timestep_grid(schedule, steps, "karras")
    assert len(grid) == steps + 1 and grid[0] == schedule.T and grid[-1] == 0
    assert steps == 1 or grid[-2] == 1, "the last step starts from t = 1, the smallest sigma"
    assert all(a > b for a, b in itertools.pairwise(grid)), "strictly descending"
    if steps == 10:  # where no times collide, each is the one nearest the wanted sigma (diffusers' rounding)
        sched = diffusers.DPMSolverMultistepScheduler(
            num_train_timesteps=1000, beta_schedule="linear", use_karras_sigmas=True
        )
        if schedule is LINEAR:
            sched.set_timesteps(steps)
            assert grid[:-1] == [int(t) + 1 for t in sched.timesteps]


def float64_twin(sched, schedule: NoiseSchedule):
    """The diffusers scheduler with its tables replaced by ours in float64, so both compute in float64."""
    sched.betas = schedule.beta[1:].clone()
    sched.alphas = schedule.alpha[1:].clone()
    sched.alphas_cumprod = schedule.alpha_bar[1:].clone()
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    return sched


def seeded_noise(seed: int):
    """Noise drawn from one generator in call order, as diffusers' schedulers draw it."""
    g = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype)


def ours_one_step(sampler, schedule, x, t, s, prediction, clip, **kw):
    denoise = make_denoiser(fake_model, schedule, prediction, clip_x0=clip)
    (step,) = sampler(denoise, schedule, x, [t, s], noise=seeded_noise(0), **kw)
    return step.x


@pytest.mark.parametrize("kind", list(DIFFUSERS_SCHEDULE))
def test_tables_equal_diffusers_to_float32_precision(kind):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_SCHEDULE[kind])
    ours = NoiseSchedule.from_config(ScheduleConfig(kind=kind, timesteps=1000))
    assert torch.allclose(ours.beta[1:].float(), sched.betas, rtol=1e-6, atol=1e-9)
    assert torch.allclose(ours.alpha_bar[1:].float(), sched.alphas_cumprod, rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("kind", list(DIFFUSERS_SCHEDULE))
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("spacing,steps", [("leading", 50), ("trailing", 20), ("linspace", 13), ("trailing", 1000)])
def test_one_ddpm_step_equals_diffusers(kind, prediction, variance, spacing, steps):
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule=DIFFUSERS_SCHEDULE[kind],
        timestep_spacing=spacing,
        prediction_type=PREDICTION_TYPE[prediction],
        variance_type={"posterior": "fixed_small", "beta": "fixed_large"}[variance],
        clip_sample=True,
    )
    sched.set_timesteps(steps)
    ours = NoiseSchedule.from_config(ScheduleConfig(kind=kind, timesteps=1000))
    float64_twin(sched, ours)
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = timestep_grid(ours, steps, spacing)
    # early, middle and late steps, and the last one: there diffusers adds noise of variance beta_ts whenever its
    # t > 0 (DDPM adds none on the step to x_0), so with variance="beta" on a strided grid the two differ by design
    last = [len(grid) - 2] if variance == "posterior" or steps == 1000 else []
    for i in (0, len(grid) // 2, len(grid) - 3, *last):
        t, s = grid[i], grid[i + 1]
        t_d = torch.tensor(t - 1)
        expected = sched.step(fake_model(x, t_d.expand(3) + 1), t_d, x, generator=torch.Generator().manual_seed(0))
        got = ours_one_step(ddpm, ours, x, t, s, prediction, True, variance=variance)
        assert torch.allclose(got, expected.prev_sample, rtol=0, atol=1e-9), (t, s)


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
        prediction_type=PREDICTION_TYPE[prediction],
        clip_sample=clip,
        set_alpha_to_one=True,
    )
    sched.set_timesteps(steps)
    ours = NoiseSchedule.from_config(ScheduleConfig(kind=kind, timesteps=1000))
    float64_twin(sched, ours)
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grid = timestep_grid(ours, steps, spacing)
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
        assert torch.allclose(got, expected.prev_sample, rtol=0, atol=1e-9), (t, s)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing,steps", [("trailing", 5), ("trailing", 20), ("karras", 10), ("linspace", 50)])
def test_dpmpp_2m_loop_equals_diffusers(kind, prediction, spacing, steps):
    """A whole DPM-Solver++(2M) loop against diffusers' multistep solver on the same grid (diffusers computes
    in float32 whatever its input, so the tolerance is float32's)."""
    ours = NoiseSchedule.from_config(ScheduleConfig(kind=kind, timesteps=1000))
    grid = timestep_grid(ours, steps, spacing)
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule=DIFFUSERS_SCHEDULE[kind],
        prediction_type=PREDICTION_TYPE[prediction],
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=False,
        final_sigmas_type="zero",
    )
    float64_twin(sched, ours)  # the same tables (its step still computes in float32)
    sched.alpha_t, sched.sigma_t = ours.alpha_bar[1:].sqrt(), (1 - ours.alpha_bar[1:]).sqrt()
    sched.lambda_t = ours.half_log_snr(torch.arange(1, 1001))
    sched.set_timesteps(timesteps=[t - 1 for t in grid[:-1]])
    model = gaussian_data_oracle(ours, 0.3, 0.5, prediction)  # a model whose x0 stays in range, unlike fake_model's
    x_T = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(4))
    x = x_T
    for t_d in sched.timesteps:
        x = sched.step(model(x, t_d.expand(2) + 1), t_d, x).prev_sample
    got = sample(
        model, ours, x_T, prediction=prediction, sampler="dpmpp_2m", steps=steps, spacing=spacing, clip_x0=False
    )
    assert torch.allclose(got, x, atol=2e-5)


def gaussian_data_oracle(schedule: NoiseSchedule, mu: float, s: float, prediction: str):
    """The exact network for data x0 ~ N(mu, s^2 I), as the given prediction type:
    E[x0 | x_t] = mu + sqrt(a) s^2 / (a s^2 + 1 - a) (x_t - sqrt(a) mu)."""

    def model(x, t, cond=None):
        a = schedule.alpha_bar[t].to(x.dtype).reshape(-1, 1, 1, 1)
        x0 = mu + a.sqrt() * s**2 / (a * s**2 + 1 - a) * (x - a.sqrt() * mu)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        if prediction == "edm":  # F = (x0 - c_skip y) / c_out in EDM's y = x / sqrt(a), sigma^2 = (1 - a) / a
            d, sigma2 = EDM_SIGMA_DATA, (1 - a) / a
            c_skip, c_out = d**2 / (sigma2 + d**2), (sigma2 * d**2 / (sigma2 + d**2)).sqrt()
            return (x0 - c_skip * x / a.sqrt()) / c_out
        return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0, "flow": eps - x0}[prediction]

    return model


def ode_solution(schedule: NoiseSchedule, x_T: torch.Tensor, mu: float, s: float) -> torch.Tensor:
    """The probability-flow ODE's x_0 from x_T for Gaussian data: in y = x / sqrt(a_bar), sigma^2 = (1 - a) / a,
    dy/dsigma = sigma (y - mu) / (s^2 + sigma^2), so y - mu grows as sqrt(s^2 + sigma^2)."""
    a = schedule.alpha_bar[schedule.T].to(x_T.dtype)
    y_T, sigma2 = x_T / a.sqrt(), (1 - a) / a
    return mu + (y_T - mu) * s / (s**2 + sigma2).sqrt()


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ode_solvers_converge_to_the_exact_solution_at_their_order(prediction):
    """Deterministic DDIM (Euler, first order), Heun and DPM-Solver++(2M) (second order) on Gaussian data, whose
    ODE solution is known, over Karras grids (which end at t = 1, so the last first-order jump to 0 is tiny)."""
    mu, s = 0.3, 0.5
    x_T = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = ode_solution(LINEAR, x_T, mu, s)
    model = gaussian_data_oracle(LINEAR, mu, s, prediction)

    def error(sampler, steps):
        got = sample(
            model, LINEAR, x_T, prediction=prediction, sampler=sampler, steps=steps, spacing="karras", clip_x0=False
        )
        return float((got - exact).abs().max())

    for sampler in ("ddim", "heun", "dpmpp_2m"):
        errors = {steps: error(sampler, steps) for steps in (10, 20, 40, 100, 500)}
        assert all(b < a for a, b in itertools.pairwise(errors.values())), (sampler, errors)
        ratio = errors[100] / errors[20]  # 5x the steps: error / 5 at first order, / 25 at second
        if sampler == "ddim":
            assert 0.1 < ratio < 0.4, (sampler, errors)
        else:
            assert ratio < 0.06 and errors[500] < 1e-3, (sampler, errors)


def test_edm_output_is_diffusers_edm_preconditioning():
    """x0 from an edm output F equals diffusers' EDMEulerScheduler.precondition_outputs(x_t / alpha, F, sigma)."""
    sched = diffusers.EDMEulerScheduler(sigma_data=EDM_SIGMA_DATA)
    g = torch.Generator().manual_seed(0)
    x_t, F = torch.randn(2, 6, 1, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 20, 300, 700, 950, 1000])
    x0, _ = COSINE.x0_eps(x_t, t, F, "edm")
    a = COSINE.alpha_bar[t].reshape(-1, 1, 1, 1)
    theirs = sched.precondition_outputs(x_t / a.sqrt(), F, ((1 - a) / a).sqrt())
    assert torch.allclose(x0, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("steps", [3, 9])  # diffusers' times are integers where steps divides T - 1
def test_ddim_on_flow_is_diffusers_flow_matching_euler(steps):
    """Deterministic DDIM on the flow schedule with a flow output is rectified flow's Euler step
    x_{s'} = x_s + (s' - s) u, which diffusers' FlowMatchEulerDiscreteScheduler takes, in the straight path's
    coordinates x_s = x_t / (alpha_t + sigma_t), s = t/T. Both loops skip diffusers' first time, s = 1 (pure noise,
    where the flow schedule's clipped beta differs)."""
    T = 1000
    flow = NoiseSchedule.from_config(ScheduleConfig(kind="flow", timesteps=T))
    scale = lambda t: flow.alpha_bar[t].sqrt() + (1 - flow.alpha_bar[t]).sqrt()  # noqa: E731  x_s = x_t / scale
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=T)
    sched.set_timesteps(steps + 1)
    sched.set_begin_index(1)
    times = [round(float(sigma) * T) for sigma in sched.sigmas[1:]]
    x_t = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    *_, last = ddim(make_denoiser(fake_model, flow, "flow", clip_x0=False), flow, x_t, times)
    x_s = x_t / scale(times[0])
    for t, timestep in zip(times[:-1], sched.timesteps[1:], strict=True):
        u = fake_model(x_s * scale(t), torch.full((len(x_s),), t))
        x_s = sched.step(u, timestep, x_s).prev_sample
    assert torch.allclose(last.x, x_s, atol=1e-5)  # diffusers steps in float32


def test_nfe_counts_network_calls():
    calls = []

    def model(x, t, cond=None):
        calls.append(1)
        return torch.zeros_like(x)

    for sampler in SAMPLERS:
        calls.clear()
        sample(model, COSINE, torch.zeros(1, 1, 2, 2), prediction="eps", sampler=sampler, steps=7)
        assert len(calls) == nfe(sampler, 7), sampler


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
    ours = NoiseSchedule.from_config(ScheduleConfig(kind="cosine", timesteps=1000))
    float64_twin(sched, ours)
    x_T = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    x = x_T
    for t_d in sched.timesteps:
        kw = {} if sampler == "ddpm" else {"eta": eta, "use_clipped_model_output": True}
        x = sched.step(fake_model(x, t_d.expand(2) + 1), t_d, x, generator=g, **kw).prev_sample
        # diffusers draws noise on the last DDPM step too (scaled by zero variance); ours does not
    params = {"variance": variance} if sampler == "ddpm" else {"eta": eta}
    got = sample(
        fake_model,
        ours,
        x_T,
        prediction="eps",
        sampler=sampler,
        steps=steps,
        spacing=spacing,
        noise=seeded_noise(5),
        **params,
    )
    assert torch.allclose(got, x, rtol=0, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 5, 100])
def test_ddim_with_an_exact_eps_oracle_returns_x0(steps):
    """If the network knows the true noise, deterministic DDIM recovers x0 from any x_t in any number of steps."""
    schedule = NoiseSchedule.from_config(ScheduleConfig(kind="cosine", timesteps=1000))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    x_T = schedule.q_sample(x0, 1000, torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64))
    oracle = lambda x, t, cond=None: schedule.eps_from_x0(x, t[0].item(), x0)  # noqa: E731
    got = sample(oracle, schedule, x_T, prediction="eps", steps=steps, clip_x0=False)
    assert torch.allclose(got, x0, rtol=0, atol=1e-9)


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
            noise=seeded_noise(9),
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


def linear_classifier(seed: int, dtype=torch.float32):
    """logits = W x: grad_x log p(y | x) = W_y - sum_k p_k W_k, in closed form (time is ignored)."""
    weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return weight, lambda x, t: x.flatten(1) @ weight.T


def test_the_classifier_gradient_equals_finite_differences():
    config = UNetConfig(
        image_size=4,
        base_channels=4,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(2,),
        attention_heads=1,
        norm_groups=2,
    )
    torch.manual_seed(0)
    network = NoisyClassifier(config, class_names=("a", "b", "c"), schedule=ScheduleConfig()).double().eval()
    for p in network.parameters():  # undo the zero initialisation of the blocks' last layers
        if not p.any():
            torch.nn.init.normal_(p, std=0.3)
    x, y, t = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.tensor([0, 2]), 300

    def log_p(x: torch.Tensor) -> torch.Tensor:
        return network(x, torch.full((2,), t)).log_softmax(1).gather(1, y[:, None]).sum()

    with torch.no_grad():  # as the sampler calls it
        grad = classifier_gradient(network, x, t, y)
        h, numeric = 1e-6, torch.zeros(x.numel(), dtype=torch.float64)
        for i in range(x.numel()):
            step = torch.zeros(x.numel(), dtype=torch.float64)
            step[i] = h
            numeric[i] = (log_p(x + step.view_as(x)) - log_p(x - step.view_as(x))) / (2 * h)
    assert grad.abs().max() > 1e-3
    assert torch.allclose(grad, numeric.view_as(x), rtol=1e-5, atol=1e-8)


def test_classifier_guidance_shifts_eps_by_the_scaled_gradient_and_keeps_x0_consistent():
    weight, classifier = linear_classifier(1, torch.float64)
    x, y, t, s = torch.randn(2, 1, 2, 2, dtype=torch.float64), torch.tensor([1, 2]), 400, 2.5
    denoise = make_denoiser(fake_model, LINEAR, "eps", clip_x0=True)
    x0_hat, eps_hat = classifier_guided(denoise, LINEAR, ClassifierGuidance(classifier, y, s))(x, t)
    _, eps = denoise(x, t)
    p = (x.flatten(1) @ weight.T).softmax(1)
    grad = (weight[y] - p @ weight).view_as(x)
    a = LINEAR.alpha_bar[t]
    assert torch.allclose(eps_hat, eps - s * (1 - a).sqrt() * grad, rtol=0, atol=1e-12)
    assert torch.allclose(a.sqrt() * x0_hat + (1 - a).sqrt() * eps_hat, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_classifier_guidance_at_scale_0_is_unguided_and_a_larger_scale_steers(sampler):
    """A network that knows one image, x0 = 0, samples it; guidance moves each sample towards its class."""
    _, classifier = linear_classifier(2)
    x_T, y = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 0])
    origin = lambda x, t, cond=None: LINEAR.eps_from_x0(x, t[0].item(), torch.zeros_like(x))  # noqa: E731

    def run(model, guidance: ClassifierGuidance | None) -> torch.Tensor:
        options = dict(prediction="eps", sampler=sampler, steps=5, eta=1.0, noise=seeded_noise(4))
        return sample(model, LINEAR, x_T, classifier_guidance=guidance, **options)

    assert torch.equal(run(fake_model, ClassifierGuidance(classifier, y, 0.0)), run(fake_model, None))
    log_p = lambda x: classifier(x, None).log_softmax(1).gather(1, y[:, None])  # noqa: E731
    plain, steered = run(origin, None), run(origin, ClassifierGuidance(classifier, y, 1.0))
    assert torch.allclose(log_p(plain), torch.tensor(1 / 3).log(), atol=1e-5), "unguided, it samples x0 = 0"
    assert (log_p(steered) > log_p(plain) + 0.01).all()


def test_sampling_runs_in_inference_mode_unless_a_classifier_needs_autograd():
    modes = []

    def model(x, t, cond=None):
        modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        return torch.zeros_like(x)

    _, classifier = linear_classifier(5)
    x_T = torch.randn(1, 1, 2, 2)
    sample(model, LINEAR, x_T, prediction="eps", steps=2)
    sample(
        model,
        LINEAR,
        x_T,
        prediction="eps",
        steps=2,
        classifier_guidance=ClassifierGuidance(classifier, torch.tensor([0])),
    )
    assert modes == [(True, False)] * 2 + [(False, False)] * 2
    with pytest.raises(ConfigError, match="classifier scale must be a finite number >= 0"):
        ClassifierGuidance(classifier, torch.tensor([0]), float("nan"))
