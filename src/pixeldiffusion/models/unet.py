"""The noise-prediction U-Net of DDPM (Ho et al. 2020, appendix B), with the later options of ADM
(Dhariwal & Nichol 2021) and of the seeds: scale-shift conditioning, ConvNeXt blocks, linear attention or none,
a choice of activation, class labels and context vectors.

Every network in pixeldiffusion is called as ``model(x_t, t, cond)``: images (B, C, H, W), integer
time steps (B,) in {0, ..., T}, and a condition (B,) of class labels or (B, D) of context vectors, or
None. It returns the prediction named in the run's configuration (eps, x0, v, edm or flow), shaped like x_t.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.models.blocks import (
    Attention,
    ConvNeXtBlock,
    Downsample,
    LinearAttention,
    ResBlock,
    Upsample,
    zero_init,
)
from pixeldiffusion.models.embeddings import ClassEmbedding, ContextEmbedding, TimeEmbedding

BLOCKS = {"resnet": ResBlock, "convnext": ConvNeXtBlock}
MAGNITUDE_PRESERVING = "mp"  # the block of EDM2's network, which models/mp_unet.py builds instead of this one
ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "mish": nn.Mish}
INJECTIONS = ("additive", "scale_shift")
TIME_EMBEDDINGS = ("adm", "ddpm")
DOWNSAMPLE_PADDINGS = ("symmetric", "same")


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = field(default=16, metadata={"help": "height and width of the images, in pixels"})
    in_channels: int = field(default=1, metadata={"help": "1 for grey, 3 for RGB"})
    base_channels: int = field(default=32, metadata={"help": "channels at full resolution"})
    channel_mult: tuple[int, ...] = field(
        default=(1, 2, 2), metadata={"help": "channel multiplier per level; level i runs at size / 2^i"}
    )
    num_res_blocks: int = field(
        default=2, metadata={"help": "blocks per level on the way down (one more on the way up)"}
    )
    attention_resolutions: tuple[int, ...] = field(
        default=(4,), metadata={"help": "resolutions (pixels) with full self-attention ('' for none)"}
    )
    linear_attention_resolutions: tuple[int, ...] = field(
        default=(), metadata={"help": "resolutions with linear attention"}
    )
    middle_attention: bool = field(
        default=True,
        metadata={"help": "self-attention in the middle block; off, with no attention resolutions: no attention"},
    )
    attention_heads: int = field(default=4, metadata={"help": "heads of every attention layer"})
    norm_groups: int = field(default=8, metadata={"help": "GroupNorm groups"})
    block: str = field(
        default="resnet",
        metadata={"help": "residual block: resnet, convnext, or mp (EDM2's magnitude-preserving U-Net, no GroupNorm)"},
    )
    injection: str = field(
        default="scale_shift",
        metadata={"help": "how the time/condition embedding enters a block: additive or scale_shift"},
    )
    stem_kernel: int = field(default=3, metadata={"help": "kernel size of the first convolution (seed 002 uses 7)"})
    activation: str = field(
        default="silu",
        metadata={"help": "nonlinearity of the blocks, embedding MLPs and head: silu, gelu, relu or mish"},
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout probability inside the blocks"})
    num_classes: int = field(default=0, metadata={"help": "> 0: conditioned on class labels 0..num_classes-1"})
    context_dim: int = field(
        default=0, metadata={"help": "> 0: conditioned on real-valued context vectors of this length"}
    )
    # Details in which networks trained elsewhere (DDPM's TensorFlow code, diffusers) differ; see interop/diffusers.py.
    time_offset: int = field(
        default=0, metadata={"help": "added to t before its embedding: -1 for networks trained on diffusers' t - 1"}
    )
    time_embedding: str = field(
        default="adm",
        metadata={"help": "sinusoids of t: adm ([cos, sin], 10^(-4i/half)) or ddpm ([sin, cos], 10^(-4i/(half-1)))"},
    )
    downsample_padding: str = field(
        default="symmetric",
        metadata={"help": "of the stride-2 convolutions: symmetric, or same (right and bottom, TensorFlow's SAME)"},
    )
    norm_eps: float = field(default=1e-5, metadata={"help": "epsilon of every GroupNorm (DDPM's code: 1e-6)"})

    def __post_init__(self):
        if self.block not in (*BLOCKS, MAGNITUDE_PRESERVING):
            choices = ", ".join((*BLOCKS, MAGNITUDE_PRESERVING))
            raise ConfigError(f"unknown block {self.block!r}; choose one of {choices}")
        if self.injection not in INJECTIONS:
            raise ConfigError(f"unknown injection {self.injection!r}; choose one of {', '.join(INJECTIONS)}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise ConfigError(
                f"unknown time embedding {self.time_embedding!r}; choose one of {', '.join(TIME_EMBEDDINGS)}"
            )
        if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise ConfigError(
                f"unknown downsample padding {self.downsample_padding!r}; "
                f"choose one of {', '.join(DOWNSAMPLE_PADDINGS)}"
            )
        if self.block == MAGNITUDE_PRESERVING:
            for name, value, default in (
                ("linear_attention_resolutions", self.linear_attention_resolutions, ()),
                ("activation", self.activation, "silu"),
                ("stem_kernel", self.stem_kernel, 3),
            ):
                if value != default:
                    raise ConfigError(f"EDM2's network (block mp) has no {name} {value!r}; it keeps {default!r}")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps}")
        if self.num_classes and self.context_dim:
            raise ConfigError("a model is conditioned on class labels or on context vectors, not both")
        for name in ("image_size", "in_channels", "base_channels", "attention_heads", "norm_groups", "stem_kernel"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1 or self.num_res_blocks < 0:
            raise ConfigError(
                f"need channel_mult of positive numbers and num_res_blocks >= 0, got {self.channel_mult}, "
                f"{self.num_res_blocks}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ConfigError(
                f"image size {self.image_size} is not divisible by {factor} = 2^(levels - 1) for "
                f"channel_mult {self.channel_mult}; pad the images or use fewer levels"
            )
        for mult in self.channel_mult:
            c = self.base_channels * mult
            if (c % self.norm_groups and self.block != MAGNITUDE_PRESERVING) or c % self.attention_heads:
                raise ConfigError(
                    f"{c} channels do not split into {self.norm_groups} groups and {self.attention_heads} heads"
                )

    @property
    def conditioning(self) -> str:
        return "class" if self.num_classes else "context" if self.context_dim else "none"


class UNetEncoder(nn.Module):
    """The U-Net's way down: the time (and condition) embedding, the stem, the down path and the middle block. The
    U-Net continues it with the way up; the noisy classifier (`models/classifier.py`) with a pooling head."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        ch = c.base_channels
        self.embed_dim = embed_dim = 4 * ch
        act = ACTIVATIONS[c.activation]
        self.time_embedding = TimeEmbedding(
            ch, embed_dim, offset=c.time_offset, layout=c.time_embedding, activation=act
        )
        self.class_embedding = ClassEmbedding(c.num_classes, embed_dim) if c.num_classes else None
        self.context_embedding = ContextEmbedding(c.context_dim, embed_dim, activation=act) if c.context_dim else None

        self.stem = nn.Conv2d(c.in_channels, ch, c.stem_kernel, padding=c.stem_kernel // 2)
        self.down, self.skip_channels, resolution, c_now = nn.ModuleList(), [ch], c.image_size, ch
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                self.down.append(Stage(self.make_block(c_now, ch * mult), self.make_attention(ch * mult, resolution)))
                c_now = ch * mult
                self.skip_channels.append(c_now)
            if level < len(c.channel_mult) - 1:
                self.down.append(Stage(Downsample(c_now, padding=c.downsample_padding)))
                self.skip_channels.append(c_now)
                resolution //= 2

        # without the attention an Identity keeps the blocks at middle.0 and middle.2, as checkpoints with it name them
        attend = Attention(c_now, heads=c.attention_heads, groups=c.norm_groups) if c.middle_attention else None
        self.middle = nn.ModuleList(
            [self.make_block(c_now, c_now), attend or nn.Identity(), self.make_block(c_now, c_now)]
        )
        self.bottom_channels, self.bottom_resolution = c_now, resolution

    def make_block(self, c_in: int, c_out: int) -> nn.Module:
        """A block of the configured kind, conditioned on the embedding."""
        c = self.config
        return BLOCKS[c.block](
            c_in,
            c_out,
            self.embed_dim,
            groups=c.norm_groups,
            dropout=c.dropout,
            injection=c.injection,
            activation=ACTIVATIONS[c.activation],
        )

    def make_attention(self, channels: int, resolution: int) -> nn.Module | None:
        """The attention layer configured at this resolution, if any."""
        c = self.config
        if resolution in c.attention_resolutions:
            return Attention(channels, heads=c.attention_heads, groups=c.norm_groups)
        if resolution in c.linear_attention_resolutions:
            return LinearAttention(channels, heads=c.attention_heads, groups=c.norm_groups)
        return None

    def embed(self, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The embedding vector that conditions every block: time plus class or context, (B, 4 * base_channels)."""
        emb = self.time_embedding(t)
        if self.class_embedding is not None or self.context_embedding is not None:
            if cond is None:
                raise PixelDiffusionError(f"this model is {self.config.conditioning}-conditional: pass a condition")
            module = self.class_embedding if self.class_embedding is not None else self.context_embedding
            emb = emb + module(cond)
        return emb

    def encode(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The features after the middle block, and the activations of the way down (the U-Net's skips)."""
        size = self.config.image_size
        if x.shape[1:] != (self.config.in_channels, size, size):
            raise PixelDiffusionError(
                f"this model takes images of shape {(self.config.in_channels, size, size)}, got {tuple(x.shape[1:])}"
            )
        h = self.stem(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        return self.middle[2](self.middle[1](self.middle[0](h, emb)), emb), skips


class UNet(UNetEncoder):
    """A U-Net noise predictor: model(x_t, t, cond) -> prediction shaped like x_t."""

    def __init__(self, config: UNetConfig):
        super().__init__(config)
        c, ch = config, config.base_channels
        skips, resolution, c_now = list(self.skip_channels), self.bottom_resolution, self.bottom_channels
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                self.up.append(
                    Stage(self.make_block(c_now + skips.pop(), ch * mult), self.make_attention(ch * mult, resolution))
                )
                c_now = ch * mult
                if level > 0 and i == c.num_res_blocks:
                    self.up.append(Stage(Upsample(c_now)))
                    resolution *= 2

        self.head = nn.Sequential(
            nn.GroupNorm(c.norm_groups, c_now),
            ACTIVATIONS[c.activation](),
            zero_init(nn.Conv2d(c_now, c.in_channels, 3, padding=1)),
        )
        set_norm_eps(self, c.norm_eps)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(t, cond)
        h, skips = self.encode(x, emb)
        for stage in self.up:
            h = stage(h if stage.resample else torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)


def set_norm_eps(module: nn.Module, eps: float) -> None:
    """Give every GroupNorm of a network the configured epsilon (UNetConfig.norm_eps)."""
    for norm in module.modules():
        if isinstance(norm, nn.GroupNorm):
            norm.eps = eps


class Stage(nn.Module):
    """One step of the U-Net's path: a block (with the embedding) and optional attention, or a resampling."""

    def __init__(self, block: nn.Module, attention: nn.Module | None = None):
        super().__init__()
        self.block, self.attention = block, attention
        self.resample = isinstance(block, (Downsample, Upsample))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.block(h) if self.resample else self.block(h, emb)
        return self.attention(h) if self.attention is not None else h
