"""Pictures in common file formats (PNG, JPEG, WebP...) decoded with Pillow, and folders of them.

Every picture is brought to one size the usual way: scale its shorter side to the size, then crop the centre.
Modes are converted (palette, CMYK, 16-bit...), and transparent pixels are laid over white.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from pixeldiffusion.data.cache import Recipe
from pixeldiffusion.data.imagedata import ImageData
from pixeldiffusion.errors import PixelDiffusionError

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})

Picture = tuple[str, Path | bytes]  # where it comes from (for messages), and its file or its encoded bytes


def decode_pictures(pictures: Sequence[Picture], *, size: int, channels: int | None = None) -> np.ndarray:
    """Decode pictures into one uint8 array (N, channels, size, size).

    channels: 3 for RGB, 1 for greyscale; None chooses 1 when every picture is greyscale, else 3.
    """
    if channels is None:
        channels = 1 if all(_mode(picture) in GREY_MODES for picture in pictures) else 3
    if channels not in (1, 3):
        raise PixelDiffusionError(f"channels must be 1 (greyscale) or 3 (RGB), not {channels}")
    out = np.empty((len(pictures), channels, size, size), dtype=np.uint8)
    for i, picture in enumerate(tqdm(pictures, desc="decoding images", unit="img", disable=None, leave=False)):
        pixels = np.asarray(_decode(picture, size=size, mode="L" if channels == 1 else "RGB"))
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out


def _open(picture: Picture) -> Image.Image:
    where, source = picture
    try:
        return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise PixelDiffusionError(f"{where}: not a readable image ({e}); remove or replace it") from e


def _mode(picture: Picture) -> str:
    with _open(picture) as image:  # reads the header only
        return image.mode


def _decode(picture: Picture, *, size: int, mode: str) -> Image.Image:
    with _open(picture) as image:
        try:
            image.draft(mode, (size, size))  # JPEG: let the decoder shrink by 2, 4 or 8 on the way
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
            return ImageOps.fit(image.convert(mode), (size, size), Image.Resampling.BICUBIC)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise PixelDiffusionError(f"{picture[0]}: cannot decode ({e}); remove or replace it") from e


def folder_recipe(path: str | Path, *, image_size: int, channels: int | None = None) -> Recipe:
    """Every PNG/JPEG/WebP picture under path, recursively (hidden files skipped).

    When every picture lies inside a subfolder of path, those first-level subfolders are the classes: labels are
    their indices in name order, class_names their names. The folder is one split (split="test" reads it too).
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise PixelDiffusionError(f"{root}: not a directory of images")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise PixelDiffusionError(f"{root}: no PNG, JPEG or WebP images in it or its subfolders")
    folders = [p.relative_to(root).parts[0] if p.parent != root else None for p in files]
    class_names = tuple(sorted(set(folders))) if None not in folders else ()

    def decode() -> ImageData:
        images = decode_pictures([(str(p), p) for p in files], size=image_size, channels=channels)
        index = {name: i for i, name in enumerate(class_names)}
        return ImageData(
            name=f"folder:{root}",
            images=torch.from_numpy(images),
            labels=torch.tensor([index[folder] for folder in folders]) if class_names else None,
            class_names=class_names,
            licence=f"pictures from {root}; their terms are yours to check",
        )

    return Recipe(sources=tuple(files), decode=decode)
