"""Samplers: generators that walk a descending grid of time steps from x_T ~ N(0, I) down to x_0.

Every sampler has the signature ``sampler(denoise, schedule, x_T, grid, *, noise, ...)`` and yields one `Step`
per pair of the grid; the last step's x is the sample. Whoever needs the intermediates (the pipeline's frames,
the web page, a progress bar) iterates; whoever does not calls `sample`, which runs the same loop to its end.

- ``denoise(x_t, t) -> (x0, eps)`` is the network seen through `make_denoiser`: guidance, prediction
  type and clipping are already applied, so a sampler only does the maths of its paper.
- ``grid`` holds steps + 1 integer times, T first and 0 last (see `timestep_grid`); the sampler walks
  it in consecutive pairs (t, s), never deriving the previous step by subtracting a stride.
- ``noise(x)`` draws standard normal noise shaped like x (per-image streams: `seeding.ImageNoise`).

The deterministic samplers solve the probability-flow ODE. In the coordinates y = x / sqrt(a_bar) and
sigma = sqrt((1 - a_bar) / a_bar) it reads dy/dsigma = eps(x, t) (Karras et al. 2022, eq. 4 with
s(t) = sqrt(a_bar)): DDIM with eta = 0 is its Euler method, `heun` its trapezoidal method, and `dpmpp_2m`
a second-order exponential integrator in lambda = log(1 / sigma).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction

import torch

from pixeldiffusion.errors import ConfigError
from pixeldiffusion.models.embeddings import null_like
from pixeldiffusion.schedule import NoiseSchedule

SPACINGS = ("trailing", "leading", "linspace", "karras")
KARRAS_RHO = 7.0  # the exponent of Karras et al.'s sigma grid (their eq. 5)
Denoiser = Callable[[torch.Tensor, int | torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Noise = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Step:
    """One step of a sampler: from time t to time s (the i-th pair of the grid, 0 first)."""

    i: int
    t: int  # the time just left
    s: int  # the time reached (0 after the last step)
    x: torch.Tensor  # x_s, the new sample
    x0: torch.Tensor  # the prediction of x_0 that x_s was computed from


def timestep_grid(schedule: NoiseSchedule, steps: int, spacing: str = "trailing") -> list[int]:
    """steps + 1 descending times ending at 0; which of {1..T} are visited depends on `spacing`.

    trailing: round(T (steps - k) / steps) for k = 0 .. steps-1, the grid that starts at T (Lin et al. 2024,
              Table 2), computed exactly (half to even, as numpy rounds) so that no time repeats for any steps;
    leading:  1 + k * (T // steps) for k = steps-1 .. 0 (DDIM's original choice, diffusers' default);
    linspace: steps values evenly spaced from T down to 1, rounded half to even as 1 + round(linspace(0, T - 1));
    karras:   the times nearest (in log sigma) to sigma_i = (sigma_max^(1/rho) + i / (steps - 1)
              (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, rho = 7, from sigma(T) to sigma(1) (EDM eq. 5),
              moved apart by the least where rounding would visit a time twice.
    """
    T = schedule.T
    if spacing not in SPACINGS:
        raise ConfigError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not 1 <= steps <= T:
        raise ConfigError(f"the number of sampling steps must be between 1 and T = {T}, got {steps}")
    if spacing == "trailing":
        times = torch.tensor([round(Fraction(T * (steps - k), steps)) for k in range(steps)], dtype=torch.float64)
    elif spacing == "leading":
        times = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * (T // steps) + 1
    elif spacing == "linspace":
        times = (torch.linspace(0, T - 1, steps, dtype=torch.float64).round() + 1).flip(0)
    else:
        times = _karras_times(schedule, steps)
    return [int(t) for t in times] + [0]


def _karras_times(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Karras et al.'s sigma grid mapped to the nearest integer times, strictly descending from T to 1."""
    log_sigma = -schedule.half_log_snr(torch.arange(1, schedule.T + 1)).cpu()  # increasing in t = 1..T
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    low, high = log_sigma[0].exp() ** (1 / KARRAS_RHO), log_sigma[-1].exp() ** (1 / KARRAS_RHO)
    wanted = ((high + ramp * (low - high)) ** KARRAS_RHO).log()
    index = torch.searchsorted(log_sigma, wanted).clamp(1, len(log_sigma) - 1)  # log_sigma[index-1] < wanted
    below, above = log_sigma[index - 1], log_sigma[index]
    times = (index + (wanted - below) / (above - below)).round().clamp(1, schedule.T)  # t of index is index + 1
    times = [int(t) for t in times]
    times[0] = schedule.T
    for i in range(1, len(times)):  # where rounding made neighbours collide: step down from the top...
        times[i] = min(times[i], times[i - 1] - 1)
    times[-1] = max(times[-1], 1)
    for i in range(len(times) - 2, -1, -1):  # ...and back up from t = 1, which stays within T since steps <= T
        times[i] = max(times[i], times[i + 1] + 1)
    return torch.tensor(times, dtype=torch.float64)


def shown_steps(steps: int, frames: int) -> list[int]:
    """Indices of `frames` evenly spaced steps out of `steps` (all when frames >= steps), the first and the last
    included (the last alone for one frame): the intermediates an animation or the web page shows."""
    n = min(frames, steps)
    if n <= 1:
        return [steps - 1] if n == 1 else []
    return sorted({round(k * (steps - 1) / (n - 1)) for k in range(n)})


def guided(model: Callable[..., torch.Tensor], cond: torch.Tensor | None, scale: float = 1.0):
    """Classifier-free guidance (Ho & Salimans 2022) around a network: out = out_null + s (out_cond - out_null).

    s = 1 is the plain conditional model and s = 0 the unconditional one (each costs one forward pass);
    Ho & Salimans' guidance weight w is s - 1. Other s run conditional and null rows in one batched pass.
    """
    if cond is None or scale == 1.0:
        return lambda x, t: model(x, t, cond)
    null = null_like(cond)
    if scale == 0.0:
        return lambda x, t: model(x, t, null)
    both = torch.cat([cond, null])

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_cond, out_null = model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return out_null + scale * (out_cond - out_null)

    return model_fn


@dataclass(frozen=True)
class ClassifierGuidance:
    """What classifier guidance needs for a batch: a noisy classifier (x_t, t) -> logits, the class y of each
    image and the scale s."""

    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    y: torch.Tensor  # (B,) class indices
    scale: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ConfigError(f"the classifier scale must be a finite number >= 0, got {self.scale}")

    def __getitem__(self, part: slice) -> ClassifierGuidance:
        """The guidance of some of the images (a batch of them)."""
        return replace(self, y=self.y[part])


def classifier_gradient(
    classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, t: int, y: torch.Tensor
) -> torch.Tensor:
    """grad_x log p_phi(y | x_t, t) for each image and its own class: autograd of the sum over the batch, whose
    terms each depend on one image. Runs under enable_grad, so a caller under no_grad may ask for it."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = classifier(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        log_p = logits.log_softmax(dim=1).gather(1, y[:, None]).sum()
        return torch.autograd.grad(log_p, x)[0]


def classifier_guided(denoise: Denoiser, schedule: NoiseSchedule, guidance: ClassifierGuidance) -> Denoiser:
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 2 in eps form, section 4.2) around a denoiser:

    eps_hat = eps - s sqrt(1 - a_bar_t) grad_x log p_phi(y | x_t, t),
    x0_hat = (x_t - sqrt(1 - a_bar_t) eps_hat) / sqrt(a_bar_t) = x0 + sqrt((1 - a_bar_t) / a_bar_t) (eps - eps_hat),
    so that both stay consistent with x_t. As in ADM, x0_hat is not clipped again. Every sampler is guided alike.
    """

    def denoise_guided(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        x0, eps = denoise(x, t)
        a = schedule.alpha_bar[t]
        shift = guidance.scale * (1 - a).sqrt() * classifier_gradient(guidance.classifier, x, t, guidance.y)
        # added as a shift, so that s = 0 leaves x0 (clipped or not) bit for bit
        return x0 + ((1 - a) / a).sqrt() * shift, eps - shift

    return denoise_guided


def make_denoiser(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    schedule: NoiseSchedule,
    prediction: str,
    *,
    clip_x0: bool = True,
) -> Denoiser:
    """denoise(x_t, t) -> (x0, eps) from a network's output, t one time for the batch or one per image (B,); with
    clip_x0, x0 is clipped to [-1, 1] and eps recomputed from it so that both stay consistent with x_t (as in DDPM's
    sampler)."""

    def denoise(x: torch.Tensor, t: int | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        times = t if isinstance(t, torch.Tensor) else torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        output = model_fn(x, times)
        x0, eps = schedule.x0_eps(x, t, output.to(x.dtype), prediction)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = schedule.eps_from_x0(x, t, x0)
        return x0, eps

    return denoise


def ddpm(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    grid: list[int],
    *,
    variance: str = "posterior",
    noise: Noise = torch.randn_like,
) -> Iterator[Step]:
    """Ancestral sampling (DDPM Algorithm 2): x_s ~ N(posterior mean(x_t, x0_hat), sigma^2 I).

    sigma^2 is the posterior variance beta~ (variance="posterior") or beta_ts = 1 - a_bar_t / a_bar_s
    (variance="beta"), the two choices of DDPM section 3.2; on a strided grid both span the jump t -> s.
    """
    if variance not in ("posterior", "beta"):
        raise ConfigError(f"unknown DDPM variance {variance!r}; choose 'posterior' or 'beta'")
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        x0, _ = denoise(x, t)
        mean, var = schedule.posterior(x, x0, t, s)
        if variance == "beta":
            var = 1 - schedule.alpha_bar[t] / schedule.alpha_bar[s]
        x = mean
        if s > 0:
            x = x + var.sqrt().to(x.dtype) * noise(x)
        yield Step(i, t, s, x, x0)


def ddim(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    x: torch.Tensor,
    grid: list[int],
    *,
    eta: float = 0.0,
    noise: Noise = torch.randn_like,
) -> Iterator[Step]:
    """DDIM (Song et al. 2021, eq. 12): x_s = sqrt(a_bar_s) x0 + sqrt(1 - a_bar_s - sigma^2) eps + sigma z,
    sigma = eta * sqrt(posterior variance) (eq. 16). eta = 0 is deterministic; eta = 1 is DDPM with beta~."""
    if not eta >= 0:
        raise ConfigError(f"eta must be a number >= 0, got {eta}")
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        x0, eps = denoise(x, t)
        a_t, a_s = schedule.alpha_bar[t], schedule.alpha_bar[s]
        sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)).sqrt()
        x = a_s.sqrt() * x0 + (1 - a_s - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0 and s > 0:
            x = x + sigma * noise(x)
        yield Step(i, t, s, x, x0)


def dpmpp_2m(
    denoise: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, grid: list[int], *, noise: Noise | None = None
) -> Iterator[Step]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), a multistep exponential integrator on x0 predictions:

    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^(-h) - 1) D,   h = lambda_s - lambda_t,   lambda = log(alpha / sigma),
    D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev with r = h_prev / h; D = x0_t on the first step and on the last,
    which lands on sigma = 0 where x_0 = D. Here alpha = sqrt(a_bar) and sigma = sqrt(1 - a_bar). One network
    evaluation per step; deterministic (`noise` is unused).
    """
    x0_prev, h_prev = None, None
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        x0, _ = denoise(x, t)
        if s == 0:
            x = x0
        else:
            lambda_t, lambda_s = schedule.half_log_snr(t), schedule.half_log_snr(s)
            h = lambda_s - lambda_t
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
            sigma_t, sigma_s = (1 - schedule.alpha_bar[t]).sqrt(), (1 - schedule.alpha_bar[s]).sqrt()
            x = sigma_s / sigma_t * x - schedule.alpha_bar[s].sqrt() * torch.expm1(-h) * d
            x0_prev, h_prev = x0, h
        yield Step(i, t, s, x, x0)


def heun(
    denoise: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, grid: list[int], *, noise: Noise | None = None
) -> Iterator[Step]:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1, deterministic):

    Euler:  y' = y_t + (sigma_s - sigma_t) eps(x_t, t)                   with y = x / sqrt(a_bar)
    Heun:   y_s = y_t + (sigma_s - sigma_t) (eps(x_t, t) + eps(x', s)) / 2,  x' = sqrt(a_bar_s) y'
    The last step, to sigma = 0, is Euler alone. 2 * steps - 1 network evaluations (see `nfe`); `noise` is unused.
    """
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        x0, eps = denoise(x, t)
        a_t, a_s = schedule.alpha_bar[t], schedule.alpha_bar[s]
        sigma_t, sigma_s = ((1 - a_t) / a_t).sqrt(), ((1 - a_s) / a_s).sqrt()
        y = x / a_t.sqrt()
        y_next = y + (sigma_s - sigma_t) * eps
        if s > 0:
            _, eps_next = denoise(a_s.sqrt() * y_next, s)
            y_next = y + (sigma_s - sigma_t) * (eps + eps_next) / 2
        x = a_s.sqrt() * y_next
        yield Step(i, t, s, x, x0)


def consistency(
    denoise: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, grid: list[int], *, noise: Noise = torch.randn_like
) -> Iterator[Step]:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): x0 = f(x_t, t), then x_s drawn afresh from
    q(x_s | x0) = N(sqrt(a_bar_s) x0, (1 - a_bar_s) I). One step is f(x_T, T) alone: the sampler of a consistency
    model (`pixeldiffusion distill --method consistency`), where f is the network's x0 prediction."""
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        x0, _ = denoise(x, t)
        x = x0 if s == 0 else schedule.q_sample(x0, s, noise(x))
        yield Step(i, t, s, x, x0)


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "dpmpp_2m": dpmpp_2m, "heun": heun, "consistency": consistency}
METHOD_PARAMS = {"ddpm": ("variance",), "ddim": ("eta",), "dpmpp_2m": (), "heun": (), "consistency": ()}


def nfe(sampler: str, steps: int) -> int:
    """Network evaluations of a sampler over `steps` grid steps (guidance's batched pass counts once)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def sample_steps(
    model: Callable[..., torch.Tensor],
    schedule: NoiseSchedule,
    x_T: torch.Tensor,
    *,
    prediction: str,
    cond: torch.Tensor | None = None,
    sampler: str = "ddim",
    steps: int = 50,
    spacing: str = "trailing",
    guidance: float = 1.0,
    classifier_guidance: ClassifierGuidance | None = None,
    clip_x0: bool = True,
    noise: Noise = torch.randn_like,
    **method_params,
) -> Iterator[Step]:
    """The steps of a named sampler from x_T over a grid of `steps` steps; method_params go to the samplers that
    take them (eta for ddim, variance for ddpm) and are ignored by the others. `guidance` is classifier-free
    guidance's scale; `classifier_guidance` adds a noisy classifier's gradient on top."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    params = {k: v for k, v in method_params.items() if k in METHOD_PARAMS[sampler]}
    denoise = make_denoiser(guided(model, cond, guidance), schedule, prediction, clip_x0=clip_x0)
    if classifier_guidance is not None:
        denoise = classifier_guided(denoise, schedule, classifier_guidance)
    grid = timestep_grid(schedule, steps, spacing)
    # the classifier's gradient needs autograd, which inference mode refuses even under enable_grad
    mode = torch.inference_mode() if classifier_guidance is None else torch.no_grad()
    yield from mode(SAMPLERS[sampler])(denoise, schedule, x_T, grid, noise=noise, **params)


def sample(model: Callable[..., torch.Tensor], schedule: NoiseSchedule, x_T: torch.Tensor, **kwargs) -> torch.Tensor:
    """x_0 generated from x_T: the last step of `sample_steps` (same arguments)."""
    return deque(sample_steps(model, schedule, x_T, **kwargs), maxlen=1)[0].x
