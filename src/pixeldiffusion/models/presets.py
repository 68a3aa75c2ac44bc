"""Named U-Net sizes. A preset fixes the architecture; conditioning is added by the caller."""

from __future__ import annotations

from dataclasses import replace

from pixeldiffusion.errors import ConfigError
from pixeldiffusion.models.unet import UNetConfig

PRESETS: dict[str, UNetConfig] = {
    # 16x16 grey digits (the built-in dataset): 3 levels 16/8/4, one block per level, attention at 4x4
    "digits": UNetConfig(
        image_size=16,
        in_channels=1,
        base_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
    ),
    # 16x16 RGB sprites of seed 000, with its 5-dimensional context vector
    "sprites": UNetConfig(
        image_size=16,
        in_channels=3,
        base_channels=64,
        channel_mult=(1, 2, 2),
        attention_resolutions=(4,),
        context_dim=5,
    ),
    # 28x28 MNIST / Fashion-MNIST (32x32 when padded): 3 levels 28/14/7
    "mnist": UNetConfig(
        image_size=28,
        in_channels=1,
        base_channels=64,
        channel_mult=(1, 2, 2),
        attention_resolutions=(7,),
        norm_groups=16,
    ),
    # 32x32 CIFAR-10, the 35.7M-parameter network of the DDPM paper (appendix B)
    "cifar10": UNetConfig(
        image_size=32,
        in_channels=3,
        base_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        attention_heads=1,
        norm_groups=32,
        injection="additive",
        dropout=0.1,
    ),
}


def preset(name: str, **overrides) -> UNetConfig:
    """The named U-Net configuration with some fields replaced, e.g. preset("mnist", num_classes=10)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
