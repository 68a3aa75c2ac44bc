"""pixeldiffusion: denoising diffusion models (DDPM, DDIM and descendants) for small image datasets."""

from pixeldiffusion.config import DataConfig, RunConfig, SampleConfig, TrainConfig, default_config
from pixeldiffusion.errors import PixelDiffusionError
from pixeldiffusion.models import UNet, UNetConfig, preset
from pixeldiffusion.pipeline import Pipeline, Samples
from pixeldiffusion.schedule import NoiseSchedule, ScheduleConfig
from pixeldiffusion.training import Trainer, train

__all__ = [
    "DataConfig",
    "NoiseSchedule",
    "PixelDiffusionError",
    "Pipeline",
    "RunConfig",
    "SampleConfig",
    "Samples",
    "ScheduleConfig",
    "TrainConfig",
    "Trainer",
    "UNet",
    "UNetConfig",
    "default_config",
    "preset",
    "train",
]
__version__ = "0.1.0"
