"""Run configuration: one frozen dataclass per concern, gathered in `RunConfig`, written as JSON beside
every run and inside every checkpoint, so that a run or checkpoint is loaded without any flags.

Defaults live only in these dataclasses (and in the per-dataset recipes of `default_config`); the CLI
derives its flags from the fields and their comments.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pixeldiffusion.data import ImageData, load_dataset
from pixeldiffusion.errors import ConfigError
from pixeldiffusion.models.presets import preset
from pixeldiffusion.models.unet import UNetConfig
from pixeldiffusion.objectives import check_objective
from pixeldiffusion.sampling import SPACINGS
from pixeldiffusion.schedule import PREDICTIONS, ScheduleConfig

CONDITIONS = ("auto", "none", "class", "context")
DEVICES = ("auto", "cpu", "cuda")
LR_DECAYS = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(valid)}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"  # dataset name (see `pixeldiffusion datasets`)
    data_dir: str | None = None  # directory holding the dataset's files, instead of the download cache
    pad: bool = False  # pad images with black up to the model's size (e.g. 28 -> 32) instead of resizing
    hflip: bool = False  # random horizontal flips during training (off for digits)
    condition: str = (
        "auto"  # what the model is conditioned on: auto (the dataset's labels if any), none, class, context
    )
    channels: int | None = (
        None  # folders and hub datasets: 1 (grey) or 3 (RGB); default: grey only if all pictures are
    )
    image_column: str | None = None  # hub datasets: the column of images (default: the first image column)
    label_column: str | None = None  # hub datasets: the column of labels (default: the first class-label column)
    labels_path: str | None = None  # sprites: the labels .npy when it is not beside the images

    def load(self, split: str, image_size: int) -> ImageData:
        """The dataset at the model's resolution (padded with black first when `pad`)."""
        options = {k: getattr(self, k) for k in ("channels", "image_column", "label_column", "labels_path")}
        return load_dataset(
            self.dataset,
            split=split,
            data_dir=self.data_dir,
            image_size=image_size,
            pad=image_size if self.pad else None,
            **{k: v for k, v in options.items() if v is not None},
        )

    def __post_init__(self):
        _choice("condition", self.condition, CONDITIONS)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0  # seed of the initial weights, the data order and every noise draw
    batch_size: int = 128  # images per optimiser step, over all processes
    grad_accum: int = 1  # split each batch into this many sequential micro-batches (same result, less memory)
    lr: float = 1e-3  # peak learning rate of AdamW
    warmup_steps: int = 200  # linear learning-rate warm-up, in steps
    lr_decay: str = "cosine"  # decay after warm-up, to zero at the end of the run: cosine, linear or constant
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    grad_clip: float = 1.0  # clip the global gradient norm to this value (0: no clipping)
    nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop (the last good checkpoint stays) or skip the step
    max_steps: int | None = 4000  # stop after this many optimiser steps
    epochs: float | None = None  # or after this many passes over the data
    minutes: float | None = None  # or after this much wall-clock time
    loss: str = "l2"  # l2, l1 or huber
    weighting: str = "none"  # loss weighting over t: none or min_snr (Hang et al. 2023, gamma 5)
    cond_dropout: float = 0.1  # probability of replacing the condition by the null one (for guidance)
    ema_halflife: float = 500.0  # half-life of the EMA of the weights, in steps
    ema_rampup: float = 0.1  # early on the half-life is at most this fraction of the steps taken (EDM)
    log_every: int = 50  # steps between progress updates and lines of metrics.jsonl
    checkpoint_every: int = 1000  # steps between checkpoints (and one at the end)
    sample_every: int = 0  # steps between sample grids written to samples/ (0: only at the end)
    eval_every: int = 0  # steps between evaluations of sample quality with the dataset's classifier (0: none)
    eval_samples: int = 500  # images per evaluation (evaluating takes at most about 1/20 of the training time)
    keep: int = 3  # checkpoints kept (the latest ones)
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA and on CPUs with bf16 instructions), fp32 or bf16
    compile: bool | None = None  # torch.compile the network: on, off, or unset: on where it pays (see README, Speed)
    channels_last: bool | None = None  # NHWC activations: on, off, or unset: where they are faster (README, Speed)

    def __post_init__(self):
        _choice("lr decay", self.lr_decay, LR_DECAYS)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("nonfinite action", self.nonfinite, ("stop", "skip"))
        check_objective(self.loss, self.weighting)
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch size {self.batch_size} must be a positive multiple of grad_accum {self.grad_accum}"
            )
        if not 0 <= self.cond_dropout < 1:
            raise ConfigError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.max_steps is None and self.epochs is None and self.minutes is None:
            raise ConfigError("set at least one of max_steps, epochs and minutes")
        for name in ("log_every", "checkpoint_every", "keep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.eval_samples < 2:
            raise ConfigError(f"eval_every must be >= 0 and eval_samples >= 2: {self.eval_every}, {self.eval_samples}")


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = "ddim"  # ddpm, ddim, dpmpp_2m or heun (see sampling.SAMPLERS)
    steps: int = 50  # number of network evaluations (grid steps from T to 0)
    eta: float = 0.0  # DDIM noise: sigma = eta * sqrt(posterior variance); 0 deterministic, 1 DDPM-like
    spacing: str = "trailing"  # which time steps a shorter grid visits: trailing, leading or linspace
    variance: str = "posterior"  # DDPM's variance: posterior (beta tilde) or beta
    guidance: float = 1.0  # classifier-free guidance scale s: 1 conditional, 0 unconditional, >1 stronger
    clip_x0: bool = True  # clip the predicted x0 to [-1, 1] at every step
    n: int = 64  # number of images
    seed: int = 0  # seed of the sampling noise
    batch_size: int = 256  # images per forward pass (larger requests are split, and halved if memory runs out)
    precision: str = "auto"  # the network: auto (bf16 on CUDA and on CPUs with bf16 instructions), fp32 or bf16
    compile: bool = False  # torch.compile the network for sampling (CUDA graphs on a GPU)
    channels_last: bool | None = None  # NHWC weights and activations: on, off, or unset: where they are faster

    def __post_init__(self):
        from pixeldiffusion.sampling import SAMPLERS

        _choice("precision", self.precision, PRECISIONS)
        _choice("sampler", self.sampler, tuple(SAMPLERS))
        _choice("spacing", self.spacing, SPACINGS)
        _choice("variance", self.variance, ("posterior", "beta"))
        if not (self.guidance >= 0 and self.guidance < float("inf")):
            raise ConfigError(f"guidance must be a finite number >= 0, got {self.guidance}")
        if not self.eta >= 0:
            raise ConfigError(f"eta must be >= 0, got {self.eta}")
        if self.n < 1 or self.steps < 1 or self.batch_size < 1:
            raise ConfigError("n, steps and batch_size must be at least 1")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig = field(default_factory=lambda: preset("digits"))
    prediction: str = "eps"  # what the network predicts: eps, x0 or v
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self):
        _choice("prediction", self.prediction, PREDICTIONS)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            return from_dict(cls, json.loads(text))
        except (json.JSONDecodeError, TypeError) as e:
            raise ConfigError(f"not a pixeldiffusion configuration: {e}") from e

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        try:
            return cls.from_json(Path(path).read_text())
        except OSError as e:
            raise ConfigError(f"cannot read configuration {path}: {e.strerror}") from e


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from the dict `dataclasses.asdict` made of it; lists become tuples."""
    if not isinstance(values, dict):
        raise ConfigError(f"expected a JSON object for {cls.__name__}, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def field_type(cls: type, name: str) -> type:
    """The plain type of a config field: int for `int | None`, tuple for `tuple[int, ...]`."""
    kind = typing.get_type_hints(cls)[name]
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return typing.get_origin(kind) or kind


# The recipe of each dataset: which U-Net preset, resolution, objective and training length suit it. MNIST and
# Fashion-MNIST default to the digits network at 28 pixels (1.1M parameters, about 250 images/s on 2 CPU cores): the
# 6.9M-parameter "mnist" preset trains about 8x slower on a CPU and is the one to choose on a GPU (--preset mnist).
# Their objective is v-prediction with min-SNR weighting: after 5 CPU minutes it scored a classifier Frechet distance
# of 3.78 against 132 for eps-prediction, and after 30 minutes 0.292 against 0.281 (README, "MNIST in 30 CPU minutes").
# Their sampler is DDPM at 50 steps: on the 30-minute MNIST run it scored 0.157 at n = 10,000, against 0.218 for
# DPM-Solver++(2M) at 10 steps (the pick for speed) and 0.292 at 20 (README, "Fewer steps at the same quality").
_SMALL_IMAGES: dict[str, Any] = {
    "preset": "digits",
    "model": {"image_size": 28},
    "prediction": "v",
    "train": {"lr": 1e-3, "weighting": "min_snr", "max_steps": 20000},
    "sample": {"sampler": "ddpm", "steps": 50},
}
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"preset": "digits", "train": {"batch_size": 64, "lr": 1e-3, "max_steps": 2000}},
    "mnist": _SMALL_IMAGES,
    "fashion-mnist": {**_SMALL_IMAGES, "data": {"hflip": True}},
    "cifar10": {"preset": "cifar10", "data": {"hflip": True}, "train": {"lr": 2e-4, "max_steps": 800_000}},
    "sprites": {"preset": "sprites", "train": {"lr": 1e-3}},
}


def default_config(dataset: str = "digits", *, model_preset: str | None = None) -> RunConfig:
    """The recommended configuration for a dataset (its recipe), with the named model preset if given."""
    recipe = RECIPES.get(dataset, {"preset": "digits"})
    return RunConfig(
        data=replace(DataConfig(dataset=dataset), **recipe.get("data", {})),
        model=preset(model_preset) if model_preset else preset(recipe["preset"], **recipe.get("model", {})),
        prediction=recipe.get("prediction", "eps"),
        train=replace(TrainConfig(), **recipe.get("train", {})),
        sample=replace(SampleConfig(), **recipe.get("sample", {})),
    )
