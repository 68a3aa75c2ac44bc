"""pixeldiffusion: denoising diffusion models (DDPM, DDIM and descendants) for small image datasets."""

from pixeldiffusion.config import (
    DataConfig,
    DiffusionConfig,
    EvalConfig,
    LengthConfig,
    LogConfig,
    OptimConfig,
    RunConfig,
    RuntimeConfig,
    SampleConfig,
)
from pixeldiffusion.errors import PixelDiffusionError
from pixeldiffusion.models import UNet, UNetConfig, preset
from pixeldiffusion.pipeline import Pipeline, Samples
from pixeldiffusion.recipes import default_config
from pixeldiffusion.schedule import NoiseSchedule, ScheduleConfig
from pixeldiffusion.training import Trainer, train

__all__ = [
    "DataConfig",
    "DiffusionConfig",
    "EvalConfig",
    "LengthConfig",
    "LogConfig",
    "NoiseSchedule",
    "OptimConfig",
    "PixelDiffusionError",
    "Pipeline",
    "RunConfig",
    "RuntimeConfig",
    "SampleConfig",
    "Samples",
    "ScheduleConfig",
    "Trainer",
    "UNet",
    "UNetConfig",
    "default_config",
    "preset",
    "train",
]
__version__ = "0.1.0"
