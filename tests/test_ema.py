"""Post-hoc EMA: the power-function EMA's closed forms, the reconstruction of other lengths from snapshots, and
runs that keep snapshots (resumed exactly, reconstructed by `pixeldiffusion ema`)."""

import os
import signal

import numpy as np
import pytest
import torch

from conftest import TINY_FLAGS, run_cli
from pixeldiffusion.checkpoint import latest_checkpoint, load_checkpoint, split_prefix
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.training import Interrupted, train
from pixeldiffusion.training.ema import (
    SIGMA_REL_MAX,
    TRACKED,
    combination,
    gamma_of,
    halflife_of_sigma_rel,
    power_decay,
    reconstruct,
    sigma_rel_of,
    sigma_rel_of_halflife,
)


def test_gamma_and_sigma_rel_are_inverse_with_the_papers_values():
    assert gamma_of(0.05) == pytest.approx(16.97, abs=0.01) and gamma_of(0.10) == pytest.approx(6.94, abs=0.01)
    for sigma in (0.01, 0.05, 0.1, 0.2, SIGMA_REL_MAX):
        assert sigma_rel_of(gamma_of(sigma)) == pytest.approx(sigma, rel=1e-9)
    for bad in (0.0, -0.1, 0.3):
        with pytest.raises(ConfigError, match="sigma_rel must be in"):
            gamma_of(bad)
    # an exponential EMA's profile has deviation halflife / ln 2
    assert sigma_rel_of_halflife(500 * np.log(2), 5000) == pytest.approx(0.1)
    assert halflife_of_sigma_rel(sigma_rel_of_halflife(300, 4000), 4000) == pytest.approx(300)


def power_ema(trajectory: np.ndarray, gamma: float) -> np.ndarray:
    """The power-function EMA after every step of a trajectory of weights (steps 1, 2, ...)."""
    average, out = 0.0, []
    for step, theta in enumerate(trajectory, 1):
        beta = power_decay(step, gamma)
        average = beta * average + (1 - beta) * theta
        out.append(average)
    return np.array(out)


def test_the_power_ema_of_gamma_0_is_the_running_mean():
    trajectory = np.random.default_rng(0).normal(size=50)
    np.testing.assert_allclose(power_ema(trajectory, 0.0), np.cumsum(trajectory) / np.arange(1, 51), rtol=1e-12)


def test_snapshots_of_two_lengths_rebuild_the_ema_of_others():
    """A wandering weight, two power EMAs snapshotted every 100 of 2,000 steps: the least-squares combination gives
    the EMA of other lengths (run directly over every step) to a few thousandths of the weight's wander."""
    rng = np.random.default_rng(0)
    steps = 2000
    trajectory = np.cumsum(rng.normal(size=steps)) + 5 * np.sin(np.arange(steps) / 50)
    tracked = {sigma: power_ema(trajectory, gamma_of(sigma)) for sigma in TRACKED}
    at = np.arange(100, steps + 1, 100)
    snap_steps = np.repeat(at, len(TRACKED))
    snap_gammas = np.tile([gamma_of(s) for s in TRACKED], len(at))
    values = np.stack([tracked[s][at - 1] for s in TRACKED], axis=1).ravel()
    wander = trajectory[-400:].std()
    for sigma in (0.03, 0.05, 0.08, 0.15, 0.25):
        coefficients = combination(snap_steps, snap_gammas, steps, gamma_of(sigma))
        direct = power_ema(trajectory, gamma_of(sigma))[-1]
        assert abs(coefficients @ values - direct) < 2e-3 * wander, sigma
        assert coefficients.sum() == pytest.approx(1, abs=0.02)  # an average of averages
    one_hot = combination(snap_steps, snap_gammas, 1000, gamma_of(0.10))  # a tracked length at a snapshot
    expected = np.zeros(len(one_hot))
    expected[list(zip(snap_steps, snap_gammas, strict=True)).index((1000, gamma_of(0.10)))] = 1
    np.testing.assert_allclose(one_hot, expected, atol=1e-6)


def test_a_run_with_snapshots_resumes_exactly_and_rebuilds_its_tracked_emas(tmp_path, tiny):
    cfg = tiny(max_steps=5, checkpoint_every=2, ema_snapshot_every=2)
    train(cfg, tmp_path / "straight")

    def terminate_after_2(run):
        if run.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "resumed", callbacks=(terminate_after_2,))
    train(cfg, tmp_path / "resumed", resume=True)
    for run in ("straight", "resumed"):  # every snapshot_every steps, and where the run ends
        names = sorted(p.name for p in (tmp_path / run / "ema-snapshots").iterdir())
        assert names == [f"step-0000000{s}.safetensors" for s in (2, 4, 5)], run
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / r))[0] for r in ("straight", "resumed"))
    assert a.keys() == b.keys() and any(k.startswith("power1/") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "the power EMAs continue exactly"
    for i, sigma in enumerate(TRACKED):  # a tracked length at the last snapshot is that snapshot
        state, info = reconstruct(tmp_path / "straight", sigma)
        assert info["step"] == 5 and info["snapshots"] == [2, 4, 5] and len(info["coefficients"]) == 6
        tracked = split_prefix(a, f"power{i}")
        assert all(torch.allclose(state[k], tracked[k], atol=1e-5) for k in tracked)
    with pytest.raises(PixelDiffusionError, match="no EMA snapshots up to step 1: train it with --ema-snapshot-every"):
        reconstruct(tmp_path / "straight", 0.1, step=1)


def test_the_ema_command_writes_checkpoints_that_sample(tmp_path):
    run = tmp_path / "run"
    trained = run_cli("train", "--out", str(run), "--max-steps", "4", "--ema-snapshot-every", "2", *TINY_FLAGS)
    assert trained.returncode == 0, trained.stderr
    made = run_cli("ema", "--run", str(run), "--sigma-rel", "0.07,0.2")
    assert made.returncode == 0, made.stderr
    assert "sigma_rel 0.070 (an EMA of half-life 0.2 steps at step 4)" in made.stdout
    assert "the run's own EMA (half-life 0.4 steps at step 4) has sigma_rel 0.144" in made.stdout
    path = run / "ema" / "sigma_rel-0.200.safetensors"
    meta = load_checkpoint(path)[1]
    assert meta["posthoc_ema"]["sigma_rel"] == 0.2 and meta["posthoc_ema"]["snapshots"] == [2, 4]
    assert Pipeline.from_pretrained(path, device="cpu").sample(2, steps=2).images.shape == (2, 1, 16, 16)
    sampled = run_cli("sample", "--run", str(path), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.png"))
    assert sampled.returncode == 0, sampled.stderr
    plain = tmp_path / "plain"
    assert run_cli("train", "--out", str(plain), "--max-steps", "2", *TINY_FLAGS).returncode == 0
    refused = run_cli("ema", "--run", str(plain), "--sigma-rel", "0.1")
    assert refused.returncode == 2 and "has no EMA snapshots: train it with --ema-snapshot-every N" in refused.stderr
    too_long = run_cli("ema", "--run", str(run), "--sigma-rel", "0.5")
    assert too_long.returncode == 2 and "sigma_rel must be in (0, 0.2887]" in too_long.stderr
