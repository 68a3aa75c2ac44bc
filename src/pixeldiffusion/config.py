"""Run configuration: one frozen dataclass per concern, gathered in `RunConfig`, written as JSON beside
every run and inside every checkpoint, so that a run or checkpoint is loaded without any flags.

Defaults and help texts live only in these dataclasses (each field's metadata["help"]), and per dataset in
`recipes`; the CLI derives its flags from the fields.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixeldiffusion.data import ImageData, load_dataset
from pixeldiffusion.distillation import TEACHER_SOLVERS
from pixeldiffusion.errors import ConfigError
from pixeldiffusion.models.autoencoder import RECONSTRUCTIONS, AutoencoderConfig
from pixeldiffusion.models.presets import preset
from pixeldiffusion.models.unet import UNetConfig
from pixeldiffusion.objectives import T_SAMPLINGS, check_objective
from pixeldiffusion.process import DEVICES
from pixeldiffusion.sampling import SPACINGS
from pixeldiffusion.schedule import PREDICTIONS, ScheduleConfig

CONDITIONS = ("auto", "none", "class", "context")
LR_DECAYS = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(valid)}")


def _at_least(config: Any, low: float, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and not value >= low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = field(default="digits", metadata={"help": "dataset name (see `pixeldiffusion datasets`)"})
    data_dir: str | None = field(
        default=None, metadata={"help": "directory holding the dataset's files (default: the download cache)"}
    )
    pad: bool = field(
        default=False, metadata={"help": "pad with black up to the model's size (e.g. 28 -> 32) instead of resizing"}
    )
    hflip: bool = field(default=False, metadata={"help": "random horizontal flips during training"})
    condition: str = field(
        default="auto",
        metadata={
            "help": "what the model is conditioned on: auto (the dataset's labels if any), none, class, context"
        },
    )
    channels: int | None = field(
        default=None,
        metadata={"help": "folders and hub datasets: 1 (grey) or 3 (RGB) (default: grey only if all pictures are)"},
    )
    image_column: str | None = field(
        default=None, metadata={"help": "hub datasets: the column of images (default: the first image column)"}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "hub datasets: the column of labels (default: the first class-label column)"}
    )
    labels_path: str | None = field(
        default=None, metadata={"help": "sprites: the labels .npy (default: the one beside the images)"}
    )

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
class DiffusionConfig:
    """The forward process and what the network learns of it: schedule, prediction target, loss and its weighting."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: str = field(
        default="eps",
        metadata={
            "help": "what the network predicts: eps, x0, v, edm (EDM's preconditioned output F, Karras et al. 2022) "
            "or flow (the velocity eps - x0 of rectified flow, Liu et al. 2023)"
        },
    )
    loss: str = field(default="l2", metadata={"help": "l2, l1 or huber"})
    weighting: str = field(
        default="none", metadata={"help": "loss weighting over t: none or min_snr (Hang et al. 2023)"}
    )
    min_snr_gamma: float = field(default=5.0, metadata={"help": "gamma of min_snr: the SNR is clipped at it"})
    t_sampling: str = field(
        default="uniform",
        metadata={
            "help": "how training draws t: uniform over 1..T (DDPM) or lognormal, the t nearest a noise level "
            "sigma = sqrt(1 / SNR) with ln sigma ~ N(p_mean, p_std^2) (EDM, Karras et al. 2022; on the flow schedule "
            "p_mean 0, p_std 1 is SD3's logit-normal, Esser et al. 2024)"
        },
    )
    p_mean: float = field(default=-1.2, metadata={"help": "mean of ln sigma for lognormal t_sampling (EDM's)"})
    p_std: float = field(default=1.2, metadata={"help": "standard deviation of ln sigma for lognormal t_sampling"})

    def __post_init__(self):
        _choice("prediction", self.prediction, PREDICTIONS)
        check_objective(self.loss, self.weighting)
        _choice("t sampling", self.t_sampling, T_SAMPLINGS)
        if not self.min_snr_gamma > 0:
            raise ConfigError(f"min_snr_gamma must be positive, got {self.min_snr_gamma}")
        if not self.p_std > 0:
            raise ConfigError(f"p_std must be positive, got {self.p_std}")


@dataclass(frozen=True)
class OptimConfig:
    batch_size: int = field(default=128, metadata={"help": "images per optimiser step, over all processes"})
    grad_accum: int = field(
        default=1, metadata={"help": "split each batch into this many sequential micro-batches (same result)"}
    )
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate of AdamW"})
    adam_beta2: float = field(
        default=0.999, metadata={"help": "AdamW's decay of the squared gradients' average (EDM2 trains with 0.99)"}
    )
    warmup_steps: int = field(default=200, metadata={"help": "linear learning-rate warm-up, in steps"})
    lr_decay: str = field(
        default="cosine", metadata={"help": "decay after warm-up, to zero at the end: cosine, linear or constant"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW's decoupled weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this (0: no clipping)"})
    nonfinite: str = field(
        default="stop", metadata={"help": "a NaN/inf loss or gradient: stop (the last good checkpoint stays) or skip"}
    )
    cond_dropout: float = field(
        default=0.1, metadata={"help": "probability of replacing the condition by the null one (for guidance)"}
    )
    ema_halflife: float = field(default=500.0, metadata={"help": "half-life of the EMA of the weights, in steps"})
    ema_rampup: float = field(
        default=0.1, metadata={"help": "early on, the EMA half-life is at most this fraction of the steps (EDM)"}
    )
    ema_snapshot_every: int = field(
        default=0,
        metadata={
            "help": "post-hoc EMA: steps between snapshots of two power-function EMAs, from which `pixeldiffusion "
            "ema` makes the EMA of any length after training (0: none)"
        },
    )

    def __post_init__(self):
        _choice("lr decay", self.lr_decay, LR_DECAYS)
        _choice("nonfinite action", self.nonfinite, ("stop", "skip"))
        if self.batch_size < 1 or self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch size {self.batch_size} must be a positive multiple of grad_accum {self.grad_accum}"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        _at_least(self, 0, "warmup_steps", "weight_decay", "grad_clip", "ema_rampup", "ema_snapshot_every")
        if not self.ema_halflife > 0:
            raise ConfigError(f"ema_halflife must be positive, got {self.ema_halflife}")
        if not 0 < self.adam_beta2 < 1:
            raise ConfigError(f"adam_beta2 must be in (0, 1), got {self.adam_beta2}")
        if not 0 <= self.cond_dropout < 1:
            raise ConfigError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")


@dataclass(frozen=True)
class LengthConfig:
    """When a run stops: the first of its stop conditions reached."""

    max_steps: int | None = field(default=4000, metadata={"help": "stop after this many optimiser steps"})
    epochs: float | None = field(default=None, metadata={"help": "or after this many passes over the data"})
    minutes: float | None = field(
        default=None,
        metadata={
            "help": "or after this much wall-clock time (the learning rate then decays with it, and the recipe may "
            "adapt its batch size to it)"
        },
    )

    def __post_init__(self):
        if self.max_steps is None and self.epochs is None and self.minutes is None:
            raise ConfigError("set at least one of max_steps, epochs and minutes")
        for name in ("max_steps", "epochs", "minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class LogConfig:
    log_every: int = field(default=50, metadata={"help": "steps between progress updates and lines of metrics.jsonl"})
    checkpoint_every: int = field(default=1000, metadata={"help": "steps between checkpoints (and one at the end)"})
    keep: int = field(default=3, metadata={"help": "checkpoints kept (the latest ones)"})
    sample_every: int = field(
        default=0, metadata={"help": "steps between sample grids written to RUN/samples/ (0: only at the end)"}
    )

    def __post_init__(self):
        _at_least(self, 1, "log_every", "checkpoint_every", "keep")
        _at_least(self, 0, "sample_every")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how a run computes; none of it changes the maths, so all of it may change on resuming."""

    device: str = field(default="auto", metadata={"help": "auto (a GPU when present), cpu, cuda or mps"})
    precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 autocast on CUDA and on CPUs with bf16 instructions), fp32, bf16"},
    )
    compile: bool | None = field(
        default=None, metadata={"help": "torch.compile the network (default: where it pays, see README, Speed)"}
    )
    channels_last: bool | None = field(
        default=None, metadata={"help": "NHWC activations (default: where they are faster, see README, Speed)"}
    )

    def __post_init__(self):
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class EvalConfig:
    every: int = field(
        default=0,
        metadata={"help": "steps between evaluations of sample quality with the dataset's classifier (0: none)"},
    )
    samples: int = field(
        default=500, metadata={"help": "images per evaluation (evaluating takes at most about 1/20 of training)"}
    )

    def __post_init__(self):
        if self.every < 0 or self.samples < 2:
            raise ConfigError(f"eval every must be >= 0 and eval samples >= 2, got {self.every}, {self.samples}")


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = field(
        default="ddim", metadata={"help": "ddpm, ddim, dpmpp_2m, heun or consistency (a consistency model's)"}
    )
    steps: int = field(default=50, metadata={"help": "number of network evaluations (grid steps from T to 0)"})
    eta: float = field(
        default=0.0, metadata={"help": "DDIM noise: sigma = eta * sqrt(posterior variance); 0 deterministic"}
    )
    spacing: str = field(
        default="trailing", metadata={"help": "which times a shorter grid visits: trailing, leading, linspace, karras"}
    )
    variance: str = field(default="posterior", metadata={"help": "DDPM's variance: posterior (beta tilde) or beta"})
    guidance: float = field(
        default=1.0, metadata={"help": "classifier-free guidance scale s: 1 conditional, 0 unconditional, >1 stronger"}
    )
    clip_x0: bool = field(default=True, metadata={"help": "clip the predicted x0 to [-1, 1] at every step"})
    n: int = field(default=64, metadata={"help": "number of images"})
    seed: int = field(default=0, metadata={"help": "seed of the sampling noise"})
    batch_size: int = field(
        default=256,
        metadata={"help": "images per forward pass (larger requests are split, halved if memory runs out)"},
    )
    precision: str = field(
        default="auto", metadata={"help": "the network: auto (bf16 where the device has it), fp32 or bf16"}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the network (CUDA graphs on a GPU)"})
    channels_last: bool | None = field(
        default=None, metadata={"help": "NHWC weights and activations (default: where they are faster)"}
    )

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
class LatentConfig:
    """Latent diffusion (Rombach et al. 2022): the U-Net diffuses z = scale_factor * the mean of the autoencoder's
    posterior q(z | x), and samples are decoded to pixels; without an autoencoder it diffuses the pixels."""

    source: str | None = field(
        default=None, metadata={"help": "the autoencoder run it came from (a record: checkpoints carry the weights)"}
    )
    autoencoder: AutoencoderConfig | None = field(default=None, metadata={"help": "the autoencoder's architecture"})
    scale_factor: float = field(
        default=1.0, metadata={"help": "1 / std of the latents of training images (Stable Diffusion's scale factor)"}
    )

    def __post_init__(self):
        if not self.scale_factor > 0:
            raise ConfigError(f"the latent scale factor must be positive, got {self.scale_factor}")


DISTILLATIONS = ("progressive", "consistency")
# the default teacher grids: progressive, twice the student's steps and at least 8 (few stages fit CPU minutes: one
# beat two and three for a 4-step student, docs/decisions.md); consistency, 16 (near Song et al.'s 18 on CIFAR-10)
PROGRESSIVE_GRID = 8
CONSISTENCY_GRID = 16


@dataclass(frozen=True)
class DistillConfig:
    """A distilled run (`pixeldiffusion distill`): a student that learns in few steps what its teacher does in many,
    initialised from the teacher's EMA weights; without a teacher the run is an ordinary diffusion model."""

    teacher: str | None = field(
        default=None, metadata={"help": "the run the student learns from (a record: checkpoints carry the student)"}
    )
    method: str = field(
        default="progressive",
        metadata={
            "help": "progressive (Salimans & Ho 2022: halve the DDIM steps stage by stage) or consistency "
            "(Song et al. 2023: f(x_t, t) = f(x_s, s) along the teacher's ODE)"
        },
    )
    steps: int = field(default=4, metadata={"help": "the student's network evaluations per image: 1, 2, 4 or 8"})
    teacher_steps: int | None = field(
        default=None,
        metadata={
            "help": "progressive: the teacher's DDIM steps at the first stage, steps times a power of 2 (default "
            f"twice steps, at least {PROGRESSIVE_GRID}); consistency: the grid of times the teacher's ODE steps join "
            f"(default {CONSISTENCY_GRID}, a multiple of 8 so that every student's grid lies on it)"
        },
    )
    teacher_solver: str = field(
        default="dpm_solver_2",
        metadata={
            "help": "the teacher's step: dpm_solver_2 (DPM-Solver++(2S), second order: a more accurate teacher for "
            "twice its evaluations) or ddim (first order, as Salimans & Ho)"
        },
    )
    guidance: float = field(
        default=1.0,
        metadata={
            "help": "the teacher's classifier-free guidance, which the student learns in one pass (Meng et al.)"
        },
    )
    teacher_prediction: str | None = field(
        default=None,
        metadata={
            "help": "what the first teacher predicts where the student predicts otherwise (an eps teacher has a v "
            "student: eps is ill-conditioned at t = T, Salimans & Ho 2022, section 4); none: as the student"
        },
    )

    def __post_init__(self):
        _choice("distillation method", self.method, DISTILLATIONS)
        _choice("teacher solver", self.teacher_solver, tuple(TEACHER_SOLVERS))
        if self.teacher_prediction is not None:
            _choice("teacher prediction", self.teacher_prediction, PREDICTIONS)
        if self.steps not in (1, 2, 4, 8):
            raise ConfigError(f"a student samples in 1, 2, 4 or 8 steps, got {self.steps}")
        n = self.grid_steps
        ratio = n // self.steps
        if self.method == "progressive" and (n % self.steps or ratio < 2 or ratio & (ratio - 1)):
            raise ConfigError(
                f"progressive distillation halves the steps: teacher_steps must be steps times a power of 2 "
                f"(at least 2), got {n} for {self.steps}"
            )
        if n < 2:
            raise ConfigError(f"teacher_steps must be at least 2, got {n}")
        if not (self.guidance >= 0 and self.guidance < float("inf")):
            raise ConfigError(f"guidance must be a finite number >= 0, got {self.guidance}")

    @property
    def grid_steps(self) -> int:
        """The teacher's grid: teacher_steps, or the method's default."""
        if self.teacher_steps is not None:
            return self.teacher_steps
        return max(PROGRESSIVE_GRID, 2 * self.steps) if self.method == "progressive" else CONSISTENCY_GRID

    @property
    def stages(self) -> int:
        """Progressive distillation's stages, teacher_steps -> teacher_steps / 2 -> ... -> steps; consistency's 1."""
        return (self.grid_steps // self.steps).bit_length() - 1 if self.method == "progressive" else 1


@dataclass(frozen=True)
class RunConfig:
    seed: int = field(default=0, metadata={"help": "seed of the initial weights, the data order and every noise draw"})
    data: DataConfig = field(default_factory=DataConfig)
    model: UNetConfig = field(default_factory=lambda: preset("digits"))
    latent: LatentConfig = field(default_factory=LatentConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    length: LengthConfig = field(default_factory=LengthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self):
        if self.latent.autoencoder and self.sample.clip_x0:
            raise ConfigError("clip_x0 must be off in latent space: latents are not bounded to [-1, 1]")

    @property
    def pixel_size(self) -> int:
        """Height and width of the images: the U-Net's, or its latents' times the autoencoder's factor."""
        return self.model.image_size * (self.latent.autoencoder.factor if self.latent.autoencoder else 1)

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


@dataclass(frozen=True)
class AutoencoderRunConfig:
    """A run of `train-autoencoder`: the first stage of latent diffusion, its data, loss and optimisation."""

    seed: int = field(
        default=0, metadata={"help": "seed of the initial weights, the held-out images, the data order and the noise"}
    )
    data: DataConfig = field(default_factory=DataConfig)
    image_size: int | None = field(
        default=None, metadata={"help": "height and width of the images, in pixels (default: the dataset's recipe)"}
    )
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    loss: str = field(default="l1", metadata={"help": "reconstruction error: l1 or l2"})
    beta: float = field(default=1e-6, metadata={"help": "weight of the KL term, per image (LDM's kl_weight)"})
    batch_size: int = field(default=64, metadata={"help": "images per optimiser step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate of AdamW"})
    warmup_steps: int = field(default=100, metadata={"help": "linear learning-rate warm-up, in steps"})
    lr_decay: str = field(
        default="cosine", metadata={"help": "decay after warm-up, to zero at the end: cosine, linear or constant"}
    )
    length: LengthConfig = field(default_factory=LengthConfig)
    device: str = field(default="auto", metadata={"help": "auto (a GPU when present), cpu, cuda or mps"})

    def __post_init__(self):
        _choice("reconstruction loss", self.loss, RECONSTRUCTIONS)
        _choice("lr decay", self.lr_decay, LR_DECAYS)
        _choice("device", self.device, DEVICES)
        _at_least(self, 1, "image_size", "batch_size")
        _at_least(self, 0, "beta", "warmup_steps")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.image_size and self.image_size % self.model.factor:
            raise ConfigError(f"image size {self.image_size} is not divisible by the factor {self.model.factor}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


# Where the fields of the old `train` group went: (group, field), "" meaning RunConfig itself.
TRAIN_FIELDS = {
    "seed": ("", "seed"),
    "eval_every": ("eval", "every"),
    "eval_samples": ("eval", "samples"),
    **{
        name: (group, name)
        for group, cls in (
            ("diffusion", DiffusionConfig),
            ("optim", OptimConfig),
            ("length", LengthConfig),
            ("log", LogConfig),
            ("runtime", RuntimeConfig),
        )
        for name in (f.name for f in dataclasses.fields(cls))
    },
}


def migrate(values: dict[str, Any]) -> dict[str, Any]:
    """A RunConfig dict of an older version in the current layout; a current dict is returned as it is."""
    return _first_students(_regrouped(values))


FIRST_GRIDS = {"progressive": 32, "consistency": 16}  # the teacher grids of the first students (stop 29)


def _first_students(values: dict[str, Any]) -> dict[str, Any]:
    """A student from before `teacher_solver` existed keeps what it was trained with: DDIM teacher steps and the
    first default grids, so that it resumes exactly."""
    distill = values.get("distill") if isinstance(values, dict) else None
    if not isinstance(distill, dict) or not distill.get("teacher") or "teacher_solver" in distill:
        return values
    distill = {**distill, "teacher_solver": "ddim"}
    if distill.get("teacher_steps") is None:
        distill["teacher_steps"] = FIRST_GRIDS.get(distill.get("method", "progressive"), 32)
    return {**values, "distill": distill}


def _regrouped(values: dict[str, Any]) -> dict[str, Any]:
    """A RunConfig dict in the layout before the regrouping (top-level prediction, schedule and train) in the
    current one."""
    if not isinstance(values, dict) or not {"prediction", "schedule", "train"} & set(values):
        return values
    values = dict(values)
    diffusion = dict(values.get("diffusion", {}))
    for name in ("prediction", "schedule"):
        if name in values:
            diffusion[name] = values.pop(name)
    new: dict[str, Any] = {"diffusion": diffusion}
    train = values.pop("train", {})
    if not isinstance(train, dict):
        raise ConfigError(f"expected a JSON object for the train group, got {type(train).__name__}")
    for name, value in train.items():
        if name not in TRAIN_FIELDS:
            raise ConfigError(f"unknown TrainConfig field(s): {name}")
        group, new_name = TRAIN_FIELDS[name]
        if group:
            new.setdefault(group, {})[new_name] = value
        else:
            new[new_name] = value
    return {**values, **new}


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a (nested) config dataclass from the dict `dataclasses.asdict` made of it; lists become tuples.
    A RunConfig in the old layout is migrated first."""
    if cls is RunConfig:
        values = migrate(values)
    if not isinstance(values, dict):
        raise ConfigError(f"expected a JSON object for {cls.__name__}, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in values.items():
        kind = field_type(cls, name)  # a dataclass also when optional (LatentConfig.autoencoder)
        if dataclasses.is_dataclass(kind) and value is not None:
            value = from_dict(kind, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def with_fields(config: Any, values: dict[str, Any]) -> Any:
    """The config with fields replaced, each named by its dotted path: {"optim.lr": 1e-4, "seed": 1}."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    top.update({head: with_fields(getattr(config, head), sub) for head, sub in nested.items()})
    return dataclasses.replace(config, **top)


def field_type(cls: type, name: str) -> type:
    """The plain type of a config field: int for `int | None`, tuple for `tuple[int, ...]`."""
    kind = typing.get_type_hints(cls)[name]
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    return typing.get_origin(kind) or kind
