"""Noise-prediction networks: the U-Net, its blocks and named presets."""

from pixeldiffusion.models.embeddings import null_like
from pixeldiffusion.models.presets import PRESETS, preset
from pixeldiffusion.models.unet import UNet, UNetConfig

__all__ = ["PRESETS", "UNet", "UNetConfig", "null_like", "preset"]
