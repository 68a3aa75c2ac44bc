"""Where a model comes from, and where it goes: `read_model` opens a training run, a checkpoint file, a pushed
repository, a diffusers folder, or any of these on the Hub (hf://user/repo), as one `Pretrained` (configuration,
weights, class names), so that `Pipeline.from_pretrained`, and through it `--run` of every command, accepts them
all; `export_diffusers` writes any of them as a diffusers folder, `initial_weights` starts a fine-tuning from one."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.config import DataConfig, DiffusionConfig, RunConfig, SampleConfig, from_dict
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.interop import diffusers, hub
from pixeldiffusion.models import build_unet
from pixeldiffusion.models.autoencoder import Autoencoder, AutoencoderConfig

HUB_PREFIX = "hf://"
REPO_NAME = re.compile(r"[\w.-]+/[\w.-]+(@\S+)?")  # user/repo[@revision]
UNKNOWN_DATASET = "unknown"  # the dataset of an imported model: diffusers does not record it
LATENT_NOTE = "a latent diffusion model has no diffusers pipeline counterpart (it would lose its autoencoder)"


@dataclass(frozen=True)
class Pretrained:
    """A model from anywhere, as pixeldiffusion runs it."""

    config: RunConfig
    state_dict: dict[str, torch.Tensor]  # weights of build_unet(config.model)
    class_names: tuple[str, ...] = ()
    context_names: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)  # a checkpoint's step and elapsed seconds
    autoencoder_state: dict[str, torch.Tensor] = field(default_factory=dict)  # a latent model's autoencoder

    def network(self) -> nn.Module:
        """The U-Net with these weights, on the CPU, in eval mode."""
        model = build_unet(self.config.model)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            raise ckpt.CheckpointError(f"the weights do not fit the configuration: {str(e).splitlines()[-1]}") from e
        return model.eval()

    def autoencoder(self) -> Autoencoder | None:
        """A latent model's autoencoder (on the CPU, in eval mode), None for a pixel-space model."""
        config = self.config.latent.autoencoder
        return load_autoencoder(config, self.autoencoder_state) if config else None


def load_autoencoder(config: AutoencoderConfig, state_dict: dict[str, torch.Tensor]) -> Autoencoder:
    """The autoencoder with these weights, on the CPU, in eval mode, without gradients."""
    model = Autoencoder(config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        raise ckpt.CheckpointError(
            f"the autoencoder's weights do not fit its configuration: {str(e).splitlines()[-1]}"
        ) from e
    return model.eval().requires_grad_(False)


def local_path(source: str | Path) -> Path:
    """The local path of a source: hf://user/repo[@revision], or user/repo that is no local path, is downloaded
    (or found in the Hub cache) first."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return hub.download(text[len(HUB_PREFIX) :])
    if not Path(text).exists() and REPO_NAME.fullmatch(text):
        try:
            return hub.download(text)
        except PixelDiffusionError as e:
            raise PixelDiffusionError(f"{text} is no local path, and on the Hub: {e}") from e
    return Path(source)


def read_model(source: str | Path, *, weights: str = "ema") -> Pretrained:
    """The model of a run directory (its latest checkpoint), a checkpoint file, a pushed repository, a diffusers
    folder, or a Hub repository holding one; weights="model" takes a run's raw weights instead of their EMA."""
    if weights not in ("ema", "model"):
        raise ConfigError(f"weights must be 'ema' or 'model', got {weights!r}")
    path = local_path(source)
    if (path / "checkpoints").is_dir():
        path = ckpt.latest_checkpoint(path)
    elif (path / hub.CHECKPOINT).is_file():  # our own format first: lossless, with every setting of the run
        path = path / hub.CHECKPOINT
    if path.is_file():
        return _from_checkpoint(path, weights)
    if diffusers.is_diffusers_folder(path):
        return _from_diffusers(path)
    if not path.exists():
        raise PixelDiffusionError(f"{source} does not exist (a Hub repository is written hf://user/repo)")
    raise PixelDiffusionError(f"{source} is neither a run directory, a checkpoint, a diffusers folder nor a Hub repo")


def _from_checkpoint(path: Path, weights: str) -> Pretrained:
    tensors, meta = ckpt.load_checkpoint(path)
    try:
        config = from_dict(RunConfig, meta["config"])
    except KeyError as e:
        raise ckpt.CheckpointError(f"{path} has no configuration") from e
    state = ckpt.split_prefix(tensors, weights)
    if not state:
        raise ckpt.CheckpointError(f"{path} holds no {weights} weights")
    names = {k: tuple(meta.get(k, ())) for k in ("class_names", "context_names")}
    autoencoder = ckpt.split_prefix(tensors, "autoencoder")
    meta = {k: meta[k] for k in ("step", "elapsed") if k in meta}
    return Pretrained(config, state, **names, meta=meta, autoencoder_state=autoencoder)


def _from_diffusers(folder: Path) -> Pretrained:
    """A diffusers folder: its UNet2DModel converted, its scheduler's schedule, prediction type, clipping and DDPM
    variance, and the sampler and steps of a run we exported; the other settings pixeldiffusion's defaults."""
    imported = diffusers.read_folder(folder)
    config = RunConfig(
        data=DataConfig(dataset=UNKNOWN_DATASET),
        model=imported.model,
        diffusion=DiffusionConfig(schedule=imported.schedule, prediction=imported.prediction),
        sample=SampleConfig(clip_x0=imported.clip_x0, variance=imported.variance, **imported.sampling),
    )
    return Pretrained(config, imported.state_dict, class_names=imported.class_names)


def export_diffusers(source: str | Path, out: str | Path) -> Path:
    """Write the model of `source` (anything `read_model` opens; a run's EMA weights) as a pipeline folder that
    diffusers loads; ConversionError, before writing, for a model that has no UNet2DModel counterpart."""
    found = read_model(source)
    if found.config.latent.autoencoder:
        raise diffusers.ConversionError(LATENT_NOTE)
    return diffusers.write_folder(
        out,
        found.network().state_dict(),
        found.config.model,
        found.config.diffusion.schedule,
        found.config.diffusion.prediction,
        clip_x0=found.config.sample.clip_x0,
        variance=found.config.sample.variance,
        sampler=found.config.sample.sampler,
        steps=found.config.sample.steps,
        class_names=found.class_names,
    )


def initial_weights(source: str | Path, config: RunConfig) -> tuple[RunConfig, nn.Module]:
    """Fine-tuning: the network of `source` (its EMA weights) to train from, and `config` with that network's
    architecture, noise schedule and prediction type, and its conditioning (no labels for an unconditional
    network); the optimizer and learning-rate schedule start afresh. The Trainer refuses data that does not fit."""
    found = read_model(source)
    model = found.config.model
    condition = model.conditioning if config.data.condition == "auto" else config.data.condition
    diffusion = found.config.diffusion
    config = replace(
        config,
        model=model,
        diffusion=replace(config.diffusion, schedule=diffusion.schedule, prediction=diffusion.prediction),
        data=replace(config.data, condition=condition),
    )
    return config, found.network().train()
