"""The magnitude-preserving U-Net of EDM2 (Karras et al. 2024, "Analyzing and improving the training dynamics of
diffusion models", config G), the network of `UNetConfig(block="mp")`.

It has no normalisation layer on its activations and no biases. Instead every operation keeps unit-variance inputs at
unit variance: weights are used at unit norm per output channel (and reset to it while training: forced weight
normalisation), SiLU is rescaled, sums and concatenations are weighted so that their magnitude is kept, and pixel
normalisation holds the encoder's activations at unit RMS. On a CPU this removes GroupNorm, the step's slowest
kernel in channels-last layout (benchmarks/README.md, "Where the time goes").

Called as every network here, model(x_t, t, cond); of UNetConfig it reads the sizes, levels, blocks per level,
attention resolutions and heads, dropout and conditioning (the GroupNorm and ADM-only fields do not apply).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pixeldiffusion.errors import PixelDiffusionError
from pixeldiffusion.models.blocks import attend
from pixeldiffusion.models.embeddings import sinusoidal_embedding
from pixeldiffusion.models.unet import UNetConfig

SILU_RMS = 0.596  # sqrt(E[silu(z)^2]) for z ~ N(0, 1)
RESIDUAL_BALANCE = 0.3  # weight of a residual branch in its magnitude-preserving sum (EDM2's res_balance)
ATTENTION_BALANCE = 0.3
SKIP_BALANCE = 0.5  # weight of the encoder's skip in the decoder's concatenation
EMBEDDING_BALANCE = 0.5  # weight of the condition against the time in the embedding
ACTIVATION_CLIP = 256  # bounds activations so that bf16 never overflows


def normalize(x: torch.Tensor, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + rms(x)), the RMS over `dim` (default all but the first): rows of unit RMS (EDM2 eq. 47)."""
    dim = tuple(range(1, x.ndim)) if dim is None else dim
    rms = x.float().square().mean(dim=dim, keepdim=True).sqrt()
    return x / (eps + rms).to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU scaled to keep a standard normal input at unit RMS."""
    return F.silu(x) / SILU_RMS


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """((1 - t) a + t b) / sqrt((1 - t)^2 + t^2): a weighted sum that keeps the magnitude of independent unit-RMS
    inputs."""
    return a.lerp(b, t) / math.hypot(1 - t, t)


def mp_cat(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """The concatenation [a, b] along channels, weighted (1 - t) : t per tensor whatever their channel counts, and
    scaled to keep unit RMS."""
    n_a, n_b = a.shape[1], b.shape[1]
    scale = math.sqrt((n_a + n_b) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (scale * (1 - t) / math.sqrt(n_a)), b * (scale * t / math.sqrt(n_b))], dim=1)


class MPConv(nn.Module):
    """A bias-free convolution (or, with kernel 0, a linear map) whose weight is used as gain * w_i / ||w_i|| per
    output channel i: the output keeps the RMS of a white input. Training also resets the stored weight to unit RMS
    per channel after every step (`force_weight_norm_`), so Adam turns it at the rate the learning rate says and it
    never grows."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.weight = nn.Parameter(normalize(torch.randn((c_out, c_in, kernel, kernel) if kernel else (c_out, c_in))))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = normalize(self.weight) * (gain / math.sqrt(self.weight[0].numel()))
        if w.ndim == 2:
            return F.linear(x, w)
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


def normalized_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the MPConv layers of a network (none for an ADM U-Net)."""
    return [module.weight for module in model.modules() if isinstance(module, MPConv)]


@torch.no_grad()
def force_weight_norm_(weights: list[nn.Parameter]) -> None:
    """Forced weight normalisation (EDM2 section 2.3): reset each weight to unit RMS per output channel, in place.
    The training step calls it after the optimiser's, outside the compiled forward pass, where an in-place update of
    a parameter is lost."""
    for w in weights:
        w.copy_(normalize(w))


def resample(x: torch.Tensor, mode: str | None) -> torch.Tensor:
    """Halve the resolution by 2x2 averages ("down"), double it by repeating pixels ("up"), or keep it (None)."""
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":  # a broadcast, not F.interpolate, whose compiled bf16 gradient is zero on the CPU
        B, C, H, W = x.shape
        return x[:, :, :, None, :, None].expand(B, C, H, 2, W, 2).reshape(B, C, 2 * H, 2 * W)
    return x


class MPBlock(nn.Module):
    """A residual block, optionally resampling first and attending after: silu, 3x3 conv, times (1 + the
    embedding's per-channel gain), silu, dropout, 3x3 conv, magnitude-preserving residual sum. An encoder block
    ("enc") maps its input to c_out channels and pixel-normalises it before the branch; a decoder block ("dec") maps
    the skip path after it, since its input is a concatenation with the encoder's skip."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        embed_dim: int,
        *,
        flavor: str,
        resample: str | None = None,
        heads: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.encoder, self.resample, self.heads = flavor == "enc", resample, heads
        self.conv_res0 = MPConv(c_out if self.encoder else c_in, c_out, 3)
        self.emb_linear = MPConv(embed_dim, c_out, 0)
        self.emb_gain = nn.Parameter(torch.zeros([]))  # the embedding's effect starts at nothing
        self.conv_res1 = MPConv(c_out, c_out, 3)
        self.conv_skip = MPConv(c_in, c_out, 1) if c_in != c_out else None
        self.dropout = nn.Dropout(dropout)
        if heads:
            self.qkv = MPConv(c_out, 3 * c_out, 1)
            self.proj = MPConv(c_out, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample)
        if self.encoder:
            x = normalize(self.conv_skip(x) if self.conv_skip else x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        gain = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = self.conv_res1(self.dropout(mp_silu(y * gain[:, :, None, None].to(y.dtype))))
        if not self.encoder and self.conv_skip:
            x = self.conv_skip(x)
        x = mp_sum(x, y, RESIDUAL_BALANCE)
        if self.heads:
            x = mp_sum(x, self.attention(x), ATTENTION_BALANCE)
        return x.clamp(-ACTIVATION_CLIP, ACTIVATION_CLIP)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine attention: softmax(q k^T / sqrt(d)) v over the pixels, q, k and v each of unit RMS per head."""
        B, C, H, W = x.shape
        qkv = self.qkv(x).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = normalize(qkv, dim=3).transpose(-1, -2).unbind(1)  # (B, heads, HW, d) each
        h = attend(q.contiguous(), k.contiguous(), v.contiguous())
        return self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class MPUNet(nn.Module):
    """EDM2's U-Net: model(x_t, t, cond) -> prediction shaped like x_t. The time's sinusoids and the condition
    (a class's one-hot, or a context vector) enter through magnitude-preserving linear maps, are summed and go
    through SiLU into every block; the output's gain starts at zero, so the network starts by predicting zeros."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        widths = [c.base_channels * mult for mult in c.channel_mult]
        self.embed_dim = embed_dim = max(widths)
        self.emb_time = MPConv(c.base_channels, embed_dim, 0)
        # one-hot over the classes and "no class" (label -1), or the context with a "no context" flag
        n_cond = c.num_classes + 1 if c.num_classes else c.context_dim + 1 if c.context_dim else 0
        self.emb_cond = MPConv(n_cond, embed_dim, 0) if n_cond else None

        # a constant channel of ones lets the first convolution add an offset (the network has no biases)
        self.stem = MPConv(c.in_channels + 1, widths[0], 3)
        self.down, skips, c_now, resolution = nn.ModuleList(), [widths[0]], widths[0], c.image_size
        for level, width in enumerate(widths):
            if level:
                resolution //= 2
                self.down.append(self.block(c_now, c_now, "enc", resample="down"))
                skips.append(c_now)
            for _ in range(c.num_res_blocks):
                self.down.append(self.block(c_now, width, "enc", heads=self.heads_at(resolution)))
                c_now = width
                skips.append(c_now)
        heads = c.attention_heads if c.middle_attention else 0
        self.middle = nn.ModuleList([self.block(c_now, c_now, "dec", heads=heads), self.block(c_now, c_now, "dec")])
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            if level < len(widths) - 1:
                resolution *= 2
                self.up.append(self.block(c_now, c_now, "dec", resample="up"))
            for _ in range(c.num_res_blocks + 1):
                self.up.append(self.block(c_now + skips.pop(), width, "dec", heads=self.heads_at(resolution)))
                c_now = width
        self.head = MPConv(c_now, c.in_channels, 3)
        self.out_gain = nn.Parameter(torch.zeros([]))

    def block(self, c_in: int, c_out: int, flavor: str, **options) -> MPBlock:
        return MPBlock(c_in, c_out, self.embed_dim, flavor=flavor, dropout=self.config.dropout, **options)

    def heads_at(self, resolution: int) -> int:
        """The attention heads of the blocks at this resolution (pixels): none where it has no attention."""
        return self.config.attention_heads if resolution in self.config.attention_resolutions else 0

    def embed(self, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """The embedding of the time and condition, (B, max channels), unit RMS before its SiLU."""
        c = self.config
        features = sinusoidal_embedding(t + c.time_offset, c.base_channels, layout=c.time_embedding) * math.sqrt(2)
        emb = self.emb_time(features.to(self.stem.weight.dtype))
        if self.emb_cond is not None:
            if cond is None:
                raise PixelDiffusionError(f"this model is {c.conditioning}-conditional: pass a condition")
            if c.num_classes:
                onehot = F.one_hot(torch.where(cond < 0, c.num_classes, cond), c.num_classes + 1)
                cond = onehot.to(emb.dtype) * math.sqrt(c.num_classes + 1)
            else:
                missing = cond.isnan().any(dim=1, keepdim=True)
                cond = normalize(torch.cat([torch.nan_to_num(cond, nan=0.0), missing.to(cond.dtype)], dim=1))
            emb = mp_sum(emb, self.emb_cond(cond.to(emb.dtype)), EMBEDDING_BALANCE)
        return mp_silu(emb)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        c = self.config
        if x.shape[1:] != (c.in_channels, c.image_size, c.image_size):
            raise PixelDiffusionError(
                f"this model takes images of shape {(c.in_channels, c.image_size, c.image_size)}, "
                f"got {tuple(x.shape[1:])}"
            )
        emb = self.embed(t, cond)
        h = self.stem(torch.cat([x, torch.ones_like(x[:, :1])], dim=1))
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        for stage in self.middle:
            h = stage(h, emb)
        for stage in self.up:
            h = stage(h if stage.resample else mp_cat(h, skips.pop(), SKIP_BALANCE), emb)
        return self.head(h, gain=self.out_gain)
