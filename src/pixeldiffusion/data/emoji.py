"""Noto Color Emoji as a labelled colour dataset: seed 000's sprites in colour, built in.

Every emoji with a Google image and each of its skin-tone variants, except the category "Component" (bare skin-tone
swatches): 3,781 RGBA images, 16x16 (or 32x32), cut from emoji-datasource-google's "clean" sprite sheets. An image's
class is its category, in the order of categories.json (9 classes). Its attributes, the context, say what it shows,
multi-hot like the sprites' (human, non-human, food, spell, side-facing); they follow from category and subcategory
(* matches any text):

| attribute | category: subcategories |
| --- | --- |
| face | Smileys & Emotion: face-*, cat-face, monkey-face; People & Body: person (heads) |
| person | People & Body: all (people, hands, body parts) |
| animal | Animals & Nature: animal-*; Smileys & Emotion: cat-face, monkey-face |
| plant | Animals & Nature: plant-*; Food & Drink: food-fruit, food-vegetable |
| food | Food & Drink: food-*, drink |
| travel | Travel & Places: all (places, transport, sky & weather, time) |
| object | Objects, Activities: all; Food & Drink: dishware |
| symbol | Symbols, Flags: all; Smileys & Emotion: heart, emotion |

The package ships the 16 px images as emoji.npz, made by `python -m pixeldiffusion.data.emoji SHEET_DIR OUT.npz`
with the `read_sheet` that also reads sheets in --data-dir; EMOJI-LICENCE.txt beside it holds their licences.
"""

from __future__ import annotations

import argparse
import json
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixeldiffusion.data.imagedata import ImageData
from pixeldiffusion.errors import PixelDiffusionError

SHEET_SIZES = (16, 32)  # pixels per image of the sheets emoji-datasource makes
# a folder like shared/data/emoji, or the npm package emoji-datasource-google as unpacked
SHEET_NAMES = ("sheet-{size}.png", "img/google/sheets-clean/{size}.png")
METADATA = ("emoji.json", "categories.json")
SKIPPED = "Component"
BACKGROUND = 128  # mid-grey: white emoji (cloud, ghost) and black ones (flags, black heart) both stand out on it
LICENCE = "Noto Emoji images, Copyright Google Inc., Apache-2.0; labels: emoji-datasource, MIT (EMOJI-LICENCE.txt)"
ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {  # the docstring's table
    "face": {"Smileys & Emotion": ("face-*", "cat-face", "monkey-face"), "People & Body": ("person",)},
    "person": {"People & Body": ("*",)},
    "animal": {"Animals & Nature": ("animal-*",), "Smileys & Emotion": ("cat-face", "monkey-face")},
    "plant": {"Animals & Nature": ("plant-*",), "Food & Drink": ("food-fruit", "food-vegetable")},
    "food": {"Food & Drink": ("food-*", "drink")},
    "travel": {"Travel & Places": ("*",)},
    "object": {"Objects": ("*",), "Activities": ("*",), "Food & Drink": ("dishware",)},
    "symbol": {"Symbols": ("*",), "Flags": ("*",), "Smileys & Emotion": ("heart", "emotion")},
}


def attributes(category: str, subcategory: str) -> list[int]:
    """The multi-hot attribute vector (one 0/1 per ATTRIBUTES name) of an emoji's category and subcategory."""
    return [
        int(any(fnmatchcase(subcategory, pattern) for pattern in rule.get(category, ())))
        for rule in ATTRIBUTES.values()
    ]


def sheet_files(folder: Path, size: int) -> tuple[Path, Path, Path]:
    """The sheet of size x size images, emoji.json and categories.json in folder."""
    names = [name.format(size=size) for name in SHEET_NAMES]
    sheet = next((folder / name for name in names if (folder / name).is_file()), None)
    missing = [] if sheet else [" or ".join(names)]
    missing += [name for name in METADATA if not (folder / name).is_file()]
    if missing:
        raise PixelDiffusionError(f"emoji: {', '.join(missing)} not found in {folder}")
    return sheet, folder / METADATA[0], folder / METADATA[1]


def read_sheet(sheet: Path, emoji_json: Path, categories_json: Path, *, size: int) -> dict[str, np.ndarray]:
    """The emoji of a sprite sheet of size x size images, each in a cell with a 1 px transparent border.

    Returns images (N, size, size, 4) uint8 RGBA, labels (N,) uint8 (category index), attributes (N, 8) uint8,
    class_names and attribute_names (str arrays).
    """
    try:
        with Image.open(sheet) as picture:
            pixels = np.asarray(picture.convert("RGBA"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise PixelDiffusionError(f"{sheet}: cannot read as a picture ({e})") from e
    entries = _read_json(emoji_json)
    class_names = [name for name in _read_json(categories_json) if name != SKIPPED]
    cell = size + 2
    if pixels.shape[0] % cell or pixels.shape[1] % cell:
        raise PixelDiffusionError(f"{sheet}: {pixels.shape[1]}x{pixels.shape[0]} is no grid of {cell} px cells")
    images, labels, vectors = [], [], []
    try:
        for emoji in entries:
            if emoji.get("category") == SKIPPED or not emoji.get("has_img_google"):
                continue
            if emoji["category"] not in class_names:
                raise PixelDiffusionError(f"{emoji_json}: category {emoji['category']!r} not in {categories_json}")
            for image in (emoji, *emoji.get("skin_variations", {}).values()):
                if image.get("has_img_google"):
                    top, left = cell * image["sheet_y"] + 1, cell * image["sheet_x"] + 1
                    images.append(pixels[top : top + size, left : left + size])
                    labels.append(class_names.index(emoji["category"]))
                    vectors.append(attributes(emoji["category"], emoji["subcategory"]))
    except (KeyError, TypeError, AttributeError) as e:
        raise PixelDiffusionError(f"{emoji_json}: not emoji-datasource's emoji.json ({type(e).__name__}: {e})") from e
    if not images:
        raise PixelDiffusionError(f"{emoji_json}: no emoji with a Google image")
    if any(image.shape[:2] != (size, size) for image in images):
        raise PixelDiffusionError(f"{emoji_json}: cells outside {sheet}; a sheet of another version?")
    return {
        "images": np.stack(images),
        "labels": np.array(labels, dtype=np.uint8),
        "attributes": np.array(vectors, dtype=np.uint8),
        "class_names": np.array(class_names),
        "attribute_names": np.array(list(ATTRIBUTES)),
    }


def _read_json(path: Path) -> list | dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PixelDiffusionError(f"{path}: cannot read as JSON ({e})") from e


def read_packaged() -> dict[str, np.ndarray]:
    """The arrays of the 16 px images shipped in the package (emoji.npz), as `read_sheet` returns them."""
    with resources.files("pixeldiffusion.data").joinpath("emoji.npz").open("rb") as f, np.load(f) as archive:
        return dict(archive)


def image_data(arrays: dict[str, np.ndarray], *, background: int = BACKGROUND) -> ImageData:
    """The dataset of `read_sheet`'s arrays, each image laid over a plain background.

    rgb = a * rgb + (1 - a) * background, with a the alpha in [0, 1] (Porter & Duff 1984, "over").
    """
    rgba = torch.from_numpy(arrays["images"]).permute(0, 3, 1, 2).float()  # (N, 4, H, W)
    alpha = rgba[:, 3:] / 255
    rgb = alpha * rgba[:, :3] + (1 - alpha) * background
    return ImageData(
        name="emoji",
        images=rgb.round().to(torch.uint8),
        labels=torch.from_numpy(arrays["labels"].astype(np.int64)),
        context=torch.from_numpy(arrays["attributes"].astype(np.float32)),
        class_names=tuple(str(name) for name in arrays["class_names"]),
        context_names=tuple(str(name) for name in arrays["attribute_names"]),
        licence=LICENCE,
    )


def main(argv: list[str] | None = None) -> None:
    """Write a sheet folder's emoji to a compressed .npz (how the package's emoji.npz is made)."""
    parser = argparse.ArgumentParser(prog="python -m pixeldiffusion.data.emoji", description=main.__doc__)
    parser.add_argument("sheet_dir", type=Path, help="folder of sheet-SIZE.png, emoji.json and categories.json")
    parser.add_argument("out", type=Path, help="the .npz file to write")
    parser.add_argument("--size", type=int, choices=SHEET_SIZES, default=SHEET_SIZES[0], help="image size (px)")
    args = parser.parse_args(argv)
    arrays = read_sheet(*sheet_files(args.sheet_dir, args.size), size=args.size)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: {len(arrays['images'])} images, {args.out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
