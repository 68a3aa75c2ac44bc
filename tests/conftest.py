"""Shared fixtures: tiny configurations that train in seconds on a CPU."""

from dataclasses import replace
from pathlib import Path

import pytest

from pixeldiffusion.config import RunConfig, default_config

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


def tiny_config(**train) -> RunConfig:
    """The digits recipe shrunk to a model of ~60k parameters and a handful of steps."""
    cfg = default_config("digits")
    return replace(
        cfg,
        model=replace(cfg.model, base_channels=8, norm_groups=4, attention_heads=1),
        train=replace(
            cfg.train,
            **{
                "max_steps": 4,
                "batch_size": 16,
                "log_every": 1,
                "checkpoint_every": 2,
                "warmup_steps": 2,
                "precision": "fp32",
                **train,
            },
        ),
        sample=replace(cfg.sample, steps=3, n=4),
    )


@pytest.fixture
def tiny():
    return tiny_config
