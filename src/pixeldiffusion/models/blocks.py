"""The building blocks of the U-Net: residual and ConvNeXt blocks, attention, resampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def zero_init(module: nn.Module) -> nn.Module:
    """Zero the weights and bias, so a residual branch starts as the identity (DDPM, ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class EmbeddingInjection(nn.Module):
    """Conditions feature maps on the embedding: h + W e ("additive"), or norm(h) (1 + scale) + shift
    ("scale_shift", FiLM as in Dhariwal & Nichol 2021, section 3); the norm is applied here in both cases.
    With embed_dim 0 there is no embedding, and only the norm (the autoencoder's blocks)."""

    def __init__(
        self, embed_dim: int, channels: int, norm: nn.Module, mode: str, *, activation: type[nn.Module] = nn.SiLU
    ):
        super().__init__()
        self.mode, self.norm = mode, norm
        self.proj = (
            nn.Sequential(activation(), nn.Linear(embed_dim, channels * (2 if mode == "scale_shift" else 1)))
            if embed_dim
            else None
        )

    def forward(self, h: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        if self.proj is None:
            return self.norm(h)
        e = self.proj(emb)[:, :, None, None]  # (B, C or 2C, 1, 1)
        if self.mode == "scale_shift":
            scale, shift = e.chunk(2, dim=1)
            return self.norm(h) * (1 + scale) + shift
        return self.norm(h + e)


class ResBlock(nn.Module):
    """GroupNorm, activation (SiLU unless told), 3x3 conv, time/condition injection, activation, dropout,
    zero-initialised 3x3 conv, skip."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        embed_dim: int,
        *,
        groups: int,
        dropout: float,
        injection: str,
        activation: type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, c_in), activation(), nn.Conv2d(c_in, c_out, 3, padding=1))
        norm = nn.GroupNorm(groups, c_out)
        self.inject = EmbeddingInjection(embed_dim, c_out, norm, injection, activation=activation)
        self.out_layers = nn.Sequential(
            activation(), nn.Dropout(dropout), zero_init(nn.Conv2d(c_out, c_out, 3, padding=1))
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inject(self.in_layers(x), emb)
        return self.skip(x) + self.out_layers(h)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022): 7x7 depthwise conv, injection, 1x1 expand x2, GELU, 1x1 project.
    `activation` is the injection's; the GELU is ConvNeXt's own."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        embed_dim: int,
        *,
        groups: int,
        dropout: float,
        injection: str,
        activation: type[nn.Module] = nn.SiLU,
    ):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 7, padding=3, groups=c_in)
        self.inject = EmbeddingInjection(embed_dim, c_in, nn.GroupNorm(1, c_in), injection, activation=activation)
        self.mlp = nn.Sequential(
            nn.Conv2d(c_in, 2 * c_out, 1),
            nn.GELU(),
            nn.GroupNorm(groups, 2 * c_out),
            nn.Dropout(dropout),
            zero_init(nn.Conv2d(2 * c_out, c_out, 1)),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.mlp(self.inject(self.depthwise(x), emb))


class Attention(nn.Module):
    """Multi-head self-attention over all pixels (Vaswani et al. 2017), pre-norm, zero-initialised output.

    The projections are Linear layers on the (B, HW, C) token matrix, and q, k, v come out of one matmul as
    contiguous (B, heads, HW, d) tensors: the layout the fused attention kernels and bf16 GEMMs want."""

    def __init__(self, channels: int, *, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = zero_init(nn.Linear(channels, channels))
        self._register_load_state_dict_pre_hook(_flatten_1x1_convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).reshape(B, H * W, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        h = attend(q, k, v).transpose(1, 2).reshape(B, H * W, C)
        return x + self.out(h).transpose(1, 2).reshape(B, C, H, W)


# Below this many elements per head (tokens x head dimension), bf16 attention on the CPU that needs a gradient
# runs in fp32.
SMALL_HEAD = 16384


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, L, d) tensors, in the fused attention kernel.

    On the CPU, small bf16 heads that need a gradient go through the fp32 kernel, whose backward is faster there
    (docs/decisions.md, "Attention picks its kernel by the size of a head")."""
    L, d = q.shape[-2:]
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad and L * d < SMALL_HEAD:
        return attend_in_fp32(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def attend_in_fp32(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention computed by the fp32 kernel whatever the inputs' dtype (and autocast), returned in their dtype."""
    with torch.autocast(q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)


def _flatten_1x1_convs(state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints written before the projections became Linear hold them as 1x1 convolutions (C_out, C_in, 1, 1)."""
    for name in ("qkv.weight", "out.weight"):
        weight = state_dict.get(prefix + name)
        if weight is not None and weight.dim() == 4:
            state_dict[prefix + name] = weight.flatten(1)


class LinearAttention(nn.Module):
    """Linear-cost attention (Shen et al. 2021): softmax over channels for q, over positions for k."""

    def __init__(self, channels: int, *, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        q = q.softmax(dim=-2) * (C // self.heads) ** -0.5
        k = k.softmax(dim=-1)
        context = k @ v.transpose(-1, -2)  # (B, heads, d, d)
        h = context.transpose(-1, -2) @ q  # (B, heads, d, HW)
        return x + self.out(h.reshape(B, C, H, W))


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 convolution, padded by one pixel on every side ("symmetric", ADM)
    or on the right and bottom only ("same": TensorFlow's SAME padding, which DDPM's own code used)."""

    def __init__(self, channels: int, *, padding: str = "symmetric"):
        super().__init__()
        self.same = padding == "same"
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.same else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.same else x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a broadcast, not F.interpolate, whose compiled bf16 gradient is zero on the CPU (docs/decisions.md)
        B, C, H, W = x.shape
        return self.conv(x[:, :, :, None, :, None].expand(B, C, H, 2, W, 2).reshape(B, C, 2 * H, 2 * W))
