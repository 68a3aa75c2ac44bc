"""The noisy classifier of classifier guidance (Dhariwal & Nichol 2021, section 4): p_phi(y | x_t, t), trained on
images noised by q(x_t | x_0) at every t of one noise schedule, whose gradient steers a sampler towards a class
(`sampling.classifier_guided`).

It is the U-Net's way down (ADM's EncoderUNetModel, simplified): the same down path and middle block with the same
time embedding, then GroupNorm, activation, global average pooling and a linear layer to the logits. It is saved
as a checkpoint: safetensors with a JSON header naming its architecture, classes and schedule.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixeldiffusion.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_atomic
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.models.unet import ACTIVATIONS, UNetConfig, UNetEncoder, set_norm_eps
from pixeldiffusion.schedule import ScheduleConfig

KIND = "pixeldiffusion.noisy_classifier.v1"
FILE_NAME = "classifier.safetensors"  # in the folder `train-classifier --noisy` writes


class NoisyClassifier(UNetEncoder):
    """classifier(x_t, t) -> logits (B, classes) of p(y | x_t, t), for x_t at time t of `schedule`."""

    def __init__(self, config: UNetConfig, *, class_names: tuple[str, ...], schedule: ScheduleConfig):
        if config.conditioning != "none":
            raise ConfigError("a noisy classifier sees x_t and t alone: its UNetConfig has no classes or context")
        if len(class_names) < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {len(class_names)}")
        super().__init__(config)
        self.class_names, self.schedule = tuple(class_names), schedule
        c = self.bottom_channels
        self.head = nn.Sequential(
            nn.GroupNorm(config.norm_groups, c),
            ACTIVATIONS[config.activation](),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (B, C)
            nn.Linear(c, len(class_names)),  # (B, classes)
        )
        set_norm_eps(self, config.norm_eps)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h, _ = self.encode(x, self.embed(t, None))
        return self.head(h)

    def check_fits(self, model: UNetConfig, schedule: ScheduleConfig) -> None:
        """Refuse to guide a model of other images or another noise schedule, or one conditioned on another number of
        classes: the classifier's gradient would point nowhere useful."""
        c, wrong = self.config, []
        if (c.in_channels, c.image_size) != (model.in_channels, model.image_size):
            wrong.append(
                f"{c.in_channels}x{c.image_size}x{c.image_size} images (the model's: "
                f"{model.in_channels}x{model.image_size}x{model.image_size})"
            )
        if schedule != self.schedule:
            wrong.append(f"the schedule {describe(self.schedule)} (the model's: {describe(schedule)})")
        if model.num_classes and model.num_classes != len(self.class_names):
            wrong.append(f"{len(self.class_names)} classes (the model's: {model.num_classes})")
        if wrong:
            raise PixelDiffusionError(f"the classifier does not fit this model: it has {'; '.join(wrong)}")

    def save(self, path: str | Path, **record: Any) -> Path:
        """Write the weights and, in the header, what rebuilds the network plus `record` (JSON-able facts); the
        header also goes beside, as PATH.json, for people to read."""
        meta = {
            "kind": KIND,
            "model": asdict(self.config),
            "class_names": list(self.class_names),
            "schedule": asdict(self.schedule),
            **record,
        }
        path = save_checkpoint(path, self.state_dict(), meta)
        write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2).encode())
        return path


def describe(schedule: ScheduleConfig) -> str:
    """E.g. "linear, T = 1000, beta 0.0001..0.02"."""
    text = f"{schedule.kind}, T = {schedule.timesteps}"
    if schedule.kind == "cosine":
        return f"{text}, s = {schedule.cosine_s}"
    return f"{text}, beta {schedule.beta_start}..{schedule.beta_end}"


def load_noisy_classifier(path: str | Path, *, device: str | torch.device = "cpu") -> NoisyClassifier:
    """A noisy classifier written by `NoisyClassifier.save`, from its file or the folder holding FILE_NAME; in eval
    mode, its weights frozen (guidance differentiates it with respect to x_t only)."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise PixelDiffusionError(f"no noisy classifier at {path}; train one with: train-classifier --noisy --run RUN")
    tensors, meta = load_checkpoint(path)
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a noisy classifier (train-classifier --noisy writes them)")
    try:
        model = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["model"].items()})
        network = NoisyClassifier(
            model, class_names=tuple(meta["class_names"]), schedule=ScheduleConfig(**meta["schedule"])
        )
        network.load_state_dict(tensors)
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not describe its network: {str(e).splitlines()[0]}") from e
    return network.to(device).eval().requires_grad_(False)
