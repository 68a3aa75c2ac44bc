"""Noise-prediction networks: the U-Nets, their blocks and named presets."""

from torch import nn

from pixeldiffusion.models.embeddings import null_like
from pixeldiffusion.models.mp_unet import MPUNet
from pixeldiffusion.models.presets import PRESETS, preset
from pixeldiffusion.models.unet import MAGNITUDE_PRESERVING, UNet, UNetConfig


def build_unet(config: UNetConfig) -> nn.Module:
    """The network a configuration describes: EDM2's magnitude-preserving U-Net for block "mp", else DDPM's and
    ADM's."""
    return MPUNet(config) if config.block == MAGNITUDE_PRESERVING else UNet(config)


__all__ = ["PRESETS", "MPUNet", "UNet", "UNetConfig", "build_unet", "null_like", "preset"]
