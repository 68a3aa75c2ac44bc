"""The exponential moving averages of the weights: the run's own (`update_ema`), and post-hoc EMA (Karras et al.
2024, "Analyzing and improving the training dynamics of diffusion models", section 3), which chooses the length of
the average after training instead of before.

For post-hoc EMA, training keeps two power-function EMAs beside the run's own and saves snapshots of them. A
power-function EMA at step t averages the weights theta_tau, tau <= t, in proportion to tau^gamma; it updates as
ema <- beta_t ema + (1 - beta_t) theta_t, beta_t = (1 - 1/t)^(gamma + 1). Its length is sigma_rel, the standard
deviation of that profile relative to t: sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3)). The EMA of any
other sigma_rel at a snapshot's step is the least-squares combination of the snapshots whose profiles best match
its profile (the inner products of two profiles have a closed form, `profile_dot`).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.errors import ConfigError, PixelDiffusionError

TRACKED = (0.05, 0.10)  # the sigma_rel of the two EMAs kept during training (the paper's pair)
SIGMA_REL_MAX = math.sqrt(1 / 12)  # gamma = 0, the uniform average of every step
SNAPSHOTS = "ema-snapshots"  # the run directory's folder of snapshots


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, keep: torch.Tensor | None = None) -> None:
    """ema <- decay * ema + (1 - decay) * model, for parameters; buffers are copied. `keep`, a 0-dim tensor
    on the device, scales the update (0 leaves the EMA as it is) without a host synchronisation."""
    weight = 1.0 - decay if keep is None else keep * (1.0 - decay)
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], weight)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


def gamma_of(sigma_rel: float) -> float:
    """The exponent gamma >= 0 of the power-function EMA of length sigma_rel: the root of
    sigma_rel^2 (gamma + 2)^2 (gamma + 3) = gamma + 1."""
    if not 0 < sigma_rel <= SIGMA_REL_MAX:
        raise ConfigError(f"sigma_rel must be in (0, {SIGMA_REL_MAX:.4f}], got {sigma_rel}")
    s2 = sigma_rel**2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9 and r.real >= -1e-9))


def sigma_rel_of(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_of_halflife(halflife: float, step: int) -> float:
    """The sigma_rel of an exponential EMA of `halflife` steps at `step` (its profile's deviation is halflife / ln 2),
    to compare the run's own EMA with post-hoc ones."""
    return halflife / math.log(2) / step


def halflife_of_sigma_rel(sigma_rel: float, step: int) -> float:
    """The half-life in steps of the exponential EMA whose profile has the deviation sigma_rel at `step`."""
    return sigma_rel * math.log(2) * step


def power_decay(step: int, gamma: float) -> float:
    """beta_t = (1 - 1/t)^(gamma + 1): 0 at the first step, whose weights the EMA starts from."""
    return (1 - 1 / step) ** (gamma + 1)


def profile_dot(t_a: np.ndarray, gamma_a: np.ndarray, t_b: np.ndarray, gamma_b: np.ndarray) -> np.ndarray:
    """The inner product of two power-function profiles p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1), 0 < tau <= t:
    (gamma_a + 1) (gamma_b + 1) min(t_a, t_b)^(gamma_a + gamma_b + 1) / ((gamma_a + gamma_b + 1) t_a^(gamma_a + 1)
    t_b^(gamma_b + 1)), written with ratios so that large exponents do not overflow."""
    t_min = np.minimum(t_a, t_b)
    ratio = (t_min / t_a) ** (gamma_a + 1) * (t_min / t_b) ** (gamma_b + 1)
    return (gamma_a + 1) * (gamma_b + 1) * ratio / ((gamma_a + gamma_b + 1) * t_min)


def combination(steps: np.ndarray, gammas: np.ndarray, step: int, gamma: float) -> np.ndarray:
    """The coefficients x of the snapshots (their steps and gammas) whose sum sum_i x_i p_i is closest in L2 to the
    profile of (step, gamma): the solution of the normal equations A x = b, A_ij = <p_i, p_j>, b_i = <p_i, p>."""
    steps, gammas = np.asarray(steps, dtype=np.float64), np.asarray(gammas, dtype=np.float64)
    a = profile_dot(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])
    b = profile_dot(steps, gammas, np.float64(step), np.float64(gamma))
    return np.linalg.lstsq(a, b, rcond=None)[0]


class PowerEMAs:
    """The power-function EMAs of the TRACKED lengths, updated after every optimiser step, saved in checkpoints
    (resume continues them exactly) and as snapshots."""

    def __init__(self, model: nn.Module):
        self.gammas = tuple(gamma_of(s) for s in TRACKED)
        self.averages = [copy.deepcopy(model).eval().requires_grad_(False) for _ in TRACKED]

    def update(self, model: nn.Module, step: int, keep: torch.Tensor | None = None) -> None:
        for average, gamma in zip(self.averages, self.gammas, strict=True):
            update_ema(average, model, power_decay(step, gamma), keep)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"power{i}/{k}": v for i, a in enumerate(self.averages) for k, v in a.state_dict().items()}

    def load(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        for i, average in enumerate(self.averages):
            found = ckpt.split_prefix(tensors, f"power{i}")
            if not found:
                raise ckpt.CheckpointError(f"{path} holds no post-hoc EMAs, which this run keeps")
            average.load_state_dict(found)

    def save_snapshot(self, run_dir: Path, step: int) -> Path:
        buffers = [name for name, _ in self.averages[0].named_buffers()]  # copied, not combined
        meta = {"step": step, "sigma_rel": list(TRACKED), "gamma": list(self.gammas), "buffers": buffers}
        return ckpt.save_checkpoint(run_dir / SNAPSHOTS / ckpt.checkpoint_name(step), self.tensors(), meta)


def snapshots(run_dir: str | Path, until: int | None = None) -> list[Path]:
    """The run's snapshot files up to step `until` (default: all), oldest first."""
    folder = Path(run_dir) / SNAPSHOTS
    found = sorted(folder.glob("step-*.safetensors")) if folder.is_dir() else []
    found = [p for p in found if until is None or int(p.stem.removeprefix("step-")) <= until]
    if not found:
        raise PixelDiffusionError(
            f"{run_dir} has no EMA snapshots{f' up to step {until}' if until is not None else ''}: "
            "train it with --ema-snapshot-every N"
        )
    return found


def reconstruct(
    run_dir: str | Path, sigma_rel: float, step: int | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """The EMA of length sigma_rel at `step` (default: the last snapshot's), as a state dict combined from the run's
    snapshots up to that step, and what it was made of: {"sigma_rel", "step", "snapshots", "coefficients"}. The
    snapshots are read twice, for their steps and then one at a time into the sum, so memory holds one of them."""
    paths = snapshots(run_dir, step)
    metas = [ckpt.load_checkpoint(path)[1] for path in paths]
    steps = [meta["step"] for meta in metas for _ in meta["gamma"]]
    gammas = [gamma for meta in metas for gamma in meta["gamma"]]
    target = steps[-1] if step is None else step
    coefficients = combination(np.array(steps), np.array(gammas), target, gamma_of(sigma_rel))
    weights = iter(coefficients.tolist())
    total: dict[str, torch.Tensor] = {}
    for path, meta in zip(paths, metas, strict=True):
        tensors = ckpt.load_checkpoint(path)[0]
        for i in range(len(meta["gamma"])):
            c = next(weights)
            for name, value in ckpt.split_prefix(tensors, f"power{i}").items():
                total[name] = total.get(name, 0.0) + c * value.double()
    last, buffers = ckpt.split_prefix(tensors, "power0"), metas[-1]["buffers"]
    # buffers as the EMA copies them, from the last snapshot
    state = {name: value if name in buffers else total[name].to(value.dtype) for name, value in last.items()}
    info = {
        "sigma_rel": sigma_rel,
        "step": target,
        "snapshots": sorted(set(steps)),
        "coefficients": coefficients.tolist(),
    }
    return state, info


def write_posthoc(
    run_dir: str | Path, sigma_rel: float, out: str | Path, step: int | None = None
) -> tuple[Path, dict]:
    """A checkpoint file at `out` holding the run's configuration and, as its EMA weights, the post-hoc EMA of
    length sigma_rel (`reconstruct`), which `sample`, `eval` and `Pipeline.from_pretrained` open like any
    checkpoint; returns its path and what it was made of. A latent run's autoencoder comes along."""
    state, info = reconstruct(run_dir, sigma_rel, step)
    tensors, meta = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir))
    kept = {k: meta[k] for k in ("config", "class_names", "context_names") if k in meta}
    tensors = {f"ema/{k}": v for k, v in state.items()} | {
        f"autoencoder/{k}": v for k, v in ckpt.split_prefix(tensors, "autoencoder").items()
    }
    return ckpt.save_checkpoint(out, tensors, {**kept, "step": info["step"], "posthoc_ema": info}), info
