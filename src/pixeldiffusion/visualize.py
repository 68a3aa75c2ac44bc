"""Pictures: sample grids with row labels, and animations of the denoising."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pixeldiffusion.checkpoint import write_atomic


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    """uint8 (N, C, H, W) -> PIL images (grey or RGB)."""
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def image_grid(
    images: torch.Tensor,
    nrow: int,
    *,
    scale: int = 1,
    pad: int = 2,
    row_labels: list[str] | None = None,
    caption: str | None = None,
) -> Image.Image:
    """Tile uint8 images (N, C, H, W) into rows of `nrow`, enlarged `scale` times (nearest neighbour),
    with optional labels left of each row and a caption above."""
    tiles = _to_pil(images)
    h, w = images.shape[-2] * scale, images.shape[-1] * scale
    rows = (len(tiles) + nrow - 1) // nrow
    font = ImageFont.load_default()
    left = (max(int(font.getlength(label)) for label in row_labels) + 6) if row_labels else 0
    top = 14 if caption else 0
    mode = "L" if images.shape[1] == 1 else "RGB"
    canvas = Image.new(
        mode, (left + pad + nrow * (w + pad), top + pad + rows * (h + pad)), color=255 if mode == "L" else (255,) * 3
    )
    draw = ImageDraw.Draw(canvas)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, nrow)
        canvas.paste(tile.resize((w, h), Image.NEAREST), (left + pad + c * (w + pad), top + pad + r * (h + pad)))
    ink = 0 if mode == "L" else (0, 0, 0)
    for r, label in enumerate(row_labels or []):
        draw.text((3, top + pad + r * (h + pad) + h // 2 - 5), label, fill=ink, font=font)
    if caption:
        draw.text((left + pad, 1), caption, fill=ink, font=font)
    return canvas


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG or GIF atomically (format from the suffix)."""
    path = Path(path)
    buffer = io.BytesIO()
    image.save(buffer, format=path.suffix.lstrip(".").upper() or "PNG")
    write_atomic(path, buffer.getvalue())
    return path


def save_animation(frames: list[Image.Image], path: str | Path, *, frame_ms: int = 80, hold_ms: int = 1500) -> Path:
    """An animated GIF looping over frames, holding the last one; palette shared so colours do not flicker."""
    path = Path(path)
    frames = [f.convert("RGB") for f in frames]
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0, optimize=False
    )
    write_atomic(path, buffer.getvalue())
    return path


def auto_scale(size: int, target: int = 64) -> int:
    """An integer enlargement that shows a size-pixel image at about `target` pixels."""
    return max(1, target // size)


def as_uint8_numpy(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) tensor -> (N, H, W, C) numpy, the layout of .npz sample files."""
    return images.permute(0, 2, 3, 1).cpu().numpy()
