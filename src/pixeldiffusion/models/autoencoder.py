"""The first stage of latent diffusion (Rombach et al. 2022, section 3.1): a convolutional autoencoder whose encoder
gives a diagonal Gaussian posterior q(z | x) over a latent of latent_channels channels, `factor` times smaller than
the image on each side, regularised towards N(0, I) by a small KL term ("KL-reg", their appendix G).

Its loss is the reconstruction error plus beta * KL only: no patch-GAN or perceptual (LPIPS) term, which would need a
pretrained VGG and a discriminator, and which matter for photographs' textures more than for small images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from pixeldiffusion.errors import ConfigError
from pixeldiffusion.models.blocks import Downsample, ResBlock, Upsample

FACTORS = (2, 4, 8)
RECONSTRUCTIONS = ("l1", "l2")
LOGVAR_RANGE = (-30.0, 20.0)  # the log-variance is clamped to it (as LDM's), so exp() neither under- nor overflows


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = field(default=1, metadata={"help": "1 for grey, 3 for RGB"})
    latent_channels: int = field(default=4, metadata={"help": "channels C_z of the latent"})
    factor: int = field(default=4, metadata={"help": "downsampling factor f: the latent is f times smaller (2, 4, 8)"})
    base_channels: int = field(
        default=32, metadata={"help": "channels at full resolution, doubled at each halving up to 4x"}
    )
    num_res_blocks: int = field(default=1, metadata={"help": "residual blocks per resolution"})
    norm_groups: int = field(default=8, metadata={"help": "GroupNorm groups"})

    def __post_init__(self):
        if self.factor not in FACTORS:
            raise ConfigError(f"unknown factor {self.factor}; choose one of {', '.join(map(str, FACTORS))}")
        for name in ("in_channels", "latent_channels", "base_channels", "norm_groups"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_res_blocks < 0:
            raise ConfigError(f"num_res_blocks must be at least 0, got {self.num_res_blocks}")
        if self.base_channels % self.norm_groups:
            raise ConfigError(f"{self.base_channels} base channels do not split into {self.norm_groups} groups")

    @property
    def widths(self) -> list[int]:
        """Channels at each resolution, full first: base, 2 base, 4 base, 4 base, ..."""
        return [self.base_channels * min(2**level, 4) for level in range(int(math.log2(self.factor)) + 1)]


class Autoencoder(nn.Module):
    """encode(x) -> (mean, logvar) of q(z | x), each (B, C_z, H / f, W / f); decode(z) -> x, unbounded."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = c = config
        widths = c.widths

        def block(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, 0, groups=c.norm_groups, dropout=0.0, injection="additive")

        def head(channels: int, out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.GroupNorm(c.norm_groups, channels), nn.SiLU(), nn.Conv2d(channels, out, 3, padding=1)
            )

        down: list[nn.Module] = [nn.Conv2d(c.in_channels, widths[0], 3, padding=1)]
        c_now = widths[0]
        for level, width in enumerate(widths):
            for _ in range(c.num_res_blocks):
                down.append(block(c_now, width))
                c_now = width
            if level < len(widths) - 1:
                down.append(Downsample(c_now))
        self.encoder = nn.Sequential(*down, block(c_now, c_now), head(c_now, 2 * c.latent_channels))

        c_now = widths[-1]
        up: list[nn.Module] = [nn.Conv2d(c.latent_channels, c_now, 3, padding=1), block(c_now, c_now)]
        for level in reversed(range(len(widths))):
            for _ in range(c.num_res_blocks):
                up.append(block(c_now, widths[level]))
                c_now = widths[level]
            if level > 0:
                up.append(Upsample(c_now))
        self.decoder = nn.Sequential(*up, head(c_now, c.in_channels))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and log-variance for images x in [-1, 1] (B, C, H, W)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # (B, C_z, H / f, W / f) each
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) of latents z, in about [-1, 1] (the loss does not bound them)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mean, logvar) of x through a sample z = mean + exp(logvar / 2) eps (reparameterised)."""
        mean, logvar = self.encode(x)
        return self.decode(mean + (0.5 * logvar).exp() * eps), mean, logvar


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar) over each latent (B,)
    (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def autoencoder_loss(
    x: torch.Tensor,
    reconstruction: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    *,
    loss: str,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, KL), each per image (B,): sum over pixels of |x - x_hat| (l1) or (x - x_hat)^2 (l2), plus beta * KL,
    both summed per image as LDM sums them, so that beta means what its kl_weight (1e-6) means."""
    if loss not in RECONSTRUCTIONS:
        raise ConfigError(f"unknown reconstruction loss {loss!r}; choose one of {', '.join(RECONSTRUCTIONS)}")
    error = (x - reconstruction).abs() if loss == "l1" else (x - reconstruction).square()
    kl = kl_divergence(mean, logvar)
    return error.flatten(1).sum(1) + beta * kl, kl
