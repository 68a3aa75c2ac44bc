"""Distillation objectives: a student network learns to do in one step what its teacher does in several.

Both work on a grid of times (`sampling.timestep_grid`, trailing) and on a deterministic step of the teacher
(`TEACHER_SOLVERS`): DDIM's, x_s = sqrt(a_bar_s) x0 + sqrt(1 - a_bar_s) eps = q_sample(x0_hat, s, eps_hat) (Song
et al. 2021, eq. 12, eta = 0; the probability-flow ODE's first-order exponential integrator), or DPM-Solver++(2S)'s
second-order step.
The teacher is a `Denoiser` (guidance and clipping applied; one time per image), the student a network whose
unclipped x0 prediction is what is trained.

- progressive (Salimans & Ho 2022, Algorithm 2): two teacher steps t -> m -> s become one student step t -> s;
  the student's x0 target is the one whose DDIM step from x_t lands on the teacher's x_s.
- consistency (Song et al. 2023, consistency distillation): f(x, t) = x0 prediction is made the same at both
  ends of a teacher step, f(x_t, t) = sg f(x_s, s), with the boundary f(x_0, 0) = x_0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pixeldiffusion.sampling import Denoiser
from pixeldiffusion.schedule import NoiseSchedule, broadcast_like

StudentX0 = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t per image) -> the unclipped x0 prediction


def ddim_step(denoise: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor):
    """One deterministic DDIM step of a denoiser from x_t to x_s, one (t, s) per image."""
    x0, eps = denoise(x, t)
    return schedule.q_sample(x0, s, eps)


def dpm_solver_2_step(denoise: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor):
    """One step of DPM-Solver++(2S) (Lu et al. 2022, singlestep, data prediction), one (t, s) per image: DDIM's
    exponential-integrator step to a time u at the midpoint of lambda = log(alpha / sigma) (the first at or past it),
    then x_s = (sigma_s / sigma_t) x_t - alpha_s (e^(-h) - 1) D with D = (1 - 1/(2r)) x0_t + 1/(2r) x0_u,
    h = lambda_s - lambda_t, r = (lambda_u - lambda_t) / h. Like DDIM, exact where x0's prediction is constant
    along the path (as from t = T, where Heun's trapezoid in sigma is far off); DDIM alone where s = 0 or no time
    lies between t and s. Two network evaluations."""
    x0_t, eps_t = denoise(x, t)
    inner = s > 0
    lam = schedule.half_log_snr(torch.arange(1, schedule.T + 1, device=x.device))  # decreasing in t
    s1 = s.clamp(min=1)
    lam_t, lam_s = lam[t - 1], lam[s1 - 1]
    u = (torch.searchsorted(-lam, -(lam_t + lam_s) / 2) + 1).clamp(min=s1 + 1, max=t - 1)
    inner &= u > s1
    u = torch.where(inner, u, t)
    h = lam_s - lam_t
    r = (lam[u - 1] - lam_t) / h
    alpha, sigma = schedule.alpha_bar.sqrt(), (1 - schedule.alpha_bar).sqrt()

    def exponential_step(to: torch.Tensor, x0: torch.Tensor, h_: torch.Tensor) -> torch.Tensor:
        return broadcast_like(sigma[to] / sigma[t], x) * x - broadcast_like(alpha[to] * torch.expm1(-h_), x) * x0

    x0_u, _ = denoise(exponential_step(u, x0_t, r * h), u)
    r = broadcast_like(torch.where(inner, r, 1.0), x)
    d = (1 - 1 / (2 * r)) * x0_t + 1 / (2 * r) * x0_u
    ddim = schedule.q_sample(x0_t, s, eps_t)
    return torch.where(broadcast_like(inner, x) > 0, exponential_step(s1, d, h), ddim)


TeacherStep = Callable[[Denoiser, NoiseSchedule, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
TEACHER_SOLVERS: dict[str, TeacherStep] = {"ddim": ddim_step, "dpm_solver_2": dpm_solver_2_step}


def progressive_target(
    teacher: Denoiser,
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    t: torch.Tensor,
    m: torch.Tensor,
    s: torch.Tensor,
    step: TeacherStep = ddim_step,
) -> torch.Tensor:
    """The student's x0 target for the jump t -> s: x~0 = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - (sigma_s /
    sigma_t) alpha_t), where x_s is two teacher steps t -> m -> s (Salimans & Ho 2022, Algorithm 2: DDIM's),
    alpha = sqrt(a_bar) and sigma = sqrt(1 - a_bar). At s = 0 it is x_s itself."""
    x_s = step(teacher, schedule, step(teacher, schedule, x_t, t, m), m, s)
    a_t, a_s = broadcast_like(schedule.alpha_bar[t], x_t), broadcast_like(schedule.alpha_bar[s], x_t)
    ratio = ((1 - a_s) / (1 - a_t)).sqrt()
    return (x_s - ratio * x_t) / (a_s.sqrt() - ratio * a_t.sqrt())


def progressive_loss(
    student: StudentX0,
    teacher: Denoiser,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    m: torch.Tensor,
    s: torch.Tensor,
    step: TeacherStep = ddim_step,
) -> torch.Tensor:
    """Per-image ||x0_student(x_t, t) - x~0||^2 (mean over pixels) weighted by max(SNR(t), 1), Salimans & Ho's
    "truncated SNR" weighting, x_t = q_sample(x0, t, eps)."""
    x_t = schedule.q_sample(x0, t, eps)
    with torch.no_grad():
        target = progressive_target(teacher, schedule, x_t, t, m, s, step)
    error = (student(x_t, t).float() - target.float()).square().flatten(1).mean(dim=1)
    return error * schedule.snr(t).clamp(min=1).float()


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sqrt(||a - b||^2 + c^2) - c per image, c = 0.00054 sqrt(d) for d values per image (Song & Dhariwal 2023):
    l2 near zero, l1 for outliers."""
    c = 0.00054 * math.sqrt(a[0].numel())
    return ((a - b).square().flatten(1).sum(dim=1) + c * c).sqrt() - c


def consistency_loss(
    student: StudentX0,
    teacher: Denoiser,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    step: TeacherStep = ddim_step,
) -> torch.Tensor:
    """Per-image d(f(x_t, t), sg f(x^_s, s)) / (sigma_t - sigma_s): x_t = q_sample(x0, t, eps), x^_s the teacher's
    step from it, f = x0 prediction of the student (its own weights, without gradient, as the target: Song &
    Dhariwal 2023), f(x, 0) = x; d the pseudo-Huber distance, the weight that of Song & Dhariwal 2023 in the
    ODE's sigma = sqrt((1 - a_bar) / a_bar)."""
    x_t = schedule.q_sample(x0, t, eps)
    with torch.no_grad():
        x_s = step(teacher, schedule, x_t, t, s)
        target = torch.where(broadcast_like(s, x_t) > 0, student(x_s, s.clamp(min=1)), x_s)
    sigma_t, sigma_s = schedule.snr(t).rsqrt(), schedule.snr(s).rsqrt()  # sigma = sqrt((1 - a_bar) / a_bar)
    weight = 1 / (sigma_t - sigma_s)
    return pseudo_huber(student(x_t, t).float(), target.float()) * weight.float()
