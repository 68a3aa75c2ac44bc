"""Embeddings of the time step and of the condition, added together into one vector per image.

A missing condition is spelled inside the condition tensor itself, so that one batched forward pass
can mix conditional and unconditional rows (classifier-free guidance, Ho & Salimans 2022):
class label -1 means "no class", and a context row of NaN means "no context". `null_like` makes them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def null_like(cond: torch.Tensor) -> torch.Tensor:
    """The unconditional version of a condition batch: labels -1, context vectors NaN."""
    if cond.is_floating_point():
        return torch.full_like(cond, float("nan"))
    return torch.full_like(cond, -1)


def drop_condition(cond: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Replace the rows of `cond` where the boolean `drop` (B,) is true by the null condition."""
    mask = drop.reshape(drop.shape + (1,) * (cond.ndim - 1))
    return torch.where(mask, null_like(cond), cond)


def sinusoidal_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10_000.0, *, layout: str = "adm"
) -> torch.Tensor:
    """Transformer position encoding of the time step: [cos(t w_i), sin(t w_i)], w_i = max_period^(-i/half)
    (layout "adm", Dhariwal & Nichol's code), or [sin(t w_i), cos(t w_i)], w_i = max_period^(-i/(half - 1))
    (layout "ddpm", Ho et al.'s code, and so the DDPM models converted to diffusers)."""
    half = dim // 2
    steps = half - 1 if layout == "ddpm" else half
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / steps)
    angles = t.float()[:, None] * freqs[None]  # (B, dim/2)
    pair = [torch.sin(angles), torch.cos(angles)] if layout == "ddpm" else [torch.cos(angles), torch.sin(angles)]
    return torch.cat(pair, dim=1)  # (B, dim)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t + offset through a two-layer MLP (DDPM appendix B); offset -1 serves networks
    trained on diffusers' 0-based time."""

    def __init__(
        self,
        base_dim: int,
        embed_dim: int,
        *,
        offset: int = 0,
        layout: str = "adm",
        activation: type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        self.base_dim, self.offset, self.layout = base_dim, offset, layout
        self.mlp = nn.Sequential(nn.Linear(base_dim, embed_dim), activation(), nn.Linear(embed_dim, embed_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = sinusoidal_embedding(t + self.offset, self.base_dim, layout=self.layout)
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # float64 features for a float64 network (tests)


class ClassEmbedding(nn.Module):
    """A learned vector per class plus one for "no class" (label -1)."""

    def __init__(self, num_classes: int, embed_dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, embed_dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(torch.where(labels < 0, self.num_classes, labels))


class ContextEmbedding(nn.Module):
    """A real-valued or multi-hot context vector through an MLP; a NaN row becomes a learned null token."""

    def __init__(self, context_dim: int, embed_dim: int, *, activation: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(context_dim, embed_dim), activation(), nn.Linear(embed_dim, embed_dim))
        self.null = nn.Parameter(torch.zeros(embed_dim))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        missing = context.isnan().any(dim=1, keepdim=True)  # (B, 1)
        return torch.where(missing, self.null, self.mlp(torch.nan_to_num(context, nan=0.0)))
