"""Datasets by name: what each one is, where its files come from, and `load_dataset` to get it in memory.

Names: digits and emoji (built in), mnist, fashion-mnist, cifar10 (downloaded into the cache, or read from data_dir),
sprites (from data_dir), folder:PATH (a folder of pictures) and hf:NAME[@REVISION][:SPLIT] (the Hugging Face hub).
Every dataset is decoded once into one uint8 tensor; the result is cached on disk, so the next load is one read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from pixeldiffusion.data import emoji, formats
from pixeldiffusion.data.cache import Recipe, cached, decoded_path
from pixeldiffusion.data.download import MD5, fetch, is_downloaded
from pixeldiffusion.data.hub import hub_recipe
from pixeldiffusion.data.imagedata import ImageData, pad_to, resize
from pixeldiffusion.data.pictures import folder_recipe
from pixeldiffusion.errors import PixelDiffusionError

SPLITS = ("train", "test")
DEFAULT_IMAGE_SIZE = 64  # for folders and hub datasets, whose pictures come in any size
DIGIT_NAMES = tuple(str(d) for d in range(10))
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPRITE_FILES = ("sprites_1788_16x16.npy", "sprite_labels_nc_1788_16x16.npy")
SPRITE_CONTEXT = ("human", "non-human", "food", "spell", "side-facing")
SPRITE_SHAPES = {"images": "uint8, N x H x W x C", "labels": "numbers, N x D"}  # what each .npy holds
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR_FILE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"  # what the tarball unpacks to; data_dir may hold either


def _digits_recipe() -> Recipe:
    """The UCI optical handwritten digits (1,797 images 8x8, 17 grey levels), brought to 16x16.

    Shipped inside the package (the copy scikit-learn also ships). The whole set is one split:
    split="test" returns the same images, there is no held-out part.
    """

    def decode() -> ImageData:
        with resources.files("pixeldiffusion.data").joinpath("digits.npz").open("rb") as f, np.load(f) as d:
            images, labels = d["images"], d["labels"]
        images = torch.from_numpy(images.astype(np.float32) * (255 / 16)).round().to(torch.uint8)[:, None]
        return ImageData(
            name="digits",
            images=resize(images, 16),
            labels=torch.from_numpy(labels.astype(np.int64)),
            class_names=DIGIT_NAMES,
            licence="UCI ML optical recognition of handwritten digits (Alpaydin & Kaynak 1998), CC BY 4.0",
        )

    return Recipe(sources=(), decode=decode)


def _emoji_recipe(*, image_size: int, data_dir: str | Path | None = None) -> Recipe:
    """Noto Color Emoji (see `emoji`): the 16 px images shipped inside the package, or from data_dir the sheet of
    the size nearest above image_size (sheet-16.png, sheet-32.png) with emoji.json and categories.json.

    One split, as the digits: split="test" returns the same images.
    """
    if data_dir is None:
        return Recipe(sources=(), decode=lambda: emoji.image_data(emoji.read_packaged()))
    size = next((s for s in emoji.SHEET_SIZES if s >= image_size), emoji.SHEET_SIZES[-1])
    files = emoji.sheet_files(Path(data_dir).expanduser(), size)
    return Recipe(sources=files, decode=lambda: emoji.image_data(emoji.read_sheet(*files, size=size)))


def _local(data_dir: str | Path, names: tuple[str, ...], *, dataset: str) -> list[Path]:
    """The named files in data_dir, each also accepted without its .gz (decompressed)."""
    directory, found, missing = Path(data_dir).expanduser(), [], []
    for name in names:
        candidates = [directory / name, directory / name.removesuffix(".gz")]
        path = next((p for p in candidates if p.exists()), None)
        found.append(path)
        if path is None:
            missing.append(name)
    if missing:
        raise PixelDiffusionError(f"{dataset}: {', '.join(missing)} not found in {directory} (gzipped or not)")
    return found


def _idx_recipe(
    dataset: str, class_names: tuple[str, ...], licence: str, *, split: str, data_dir: str | Path | None = None
) -> Recipe:
    """MNIST-style IDX image and label files, from data_dir or downloaded (verified) into the cache.

    Checksums are those of the official archives, so they are checked on download only: a copy in data_dir may
    be gzipped differently; it is checked by its IDX header, sizes and label range instead.
    """
    names = IDX_FILES[split]
    images_path, labels_path = fetch(dataset, names) if data_dir is None else _local(data_dir, names, dataset=dataset)

    def decode() -> ImageData:
        images = formats.read_idx(images_path, ndim=3)
        labels = formats.read_idx(labels_path, ndim=1)
        if len(images) != len(labels):
            raise PixelDiffusionError(
                f"{labels_path}: {len(labels)} labels for the {len(images)} images of {images_path}"
            )
        if labels.max(initial=0) >= len(class_names):
            raise PixelDiffusionError(f"{labels_path}: labels beyond the {len(class_names)} classes of {dataset}")
        return ImageData(
            name=dataset,
            images=torch.from_numpy(images)[:, None],
            labels=torch.from_numpy(labels.astype(np.int64)),
            class_names=class_names,
            licence=licence,
        )

    return Recipe(sources=(images_path, labels_path), decode=decode)


def _cifar_recipe(*, split: str, data_dir: str | Path | None = None) -> Recipe:
    """CIFAR-10 from its python tarball (downloaded and verified, or in data_dir) or its unpacked folder."""
    if data_dir is None:
        (path,) = fetch("cifar10", [CIFAR_FILE])
    elif (Path(data_dir).expanduser() / CIFAR_FOLDER).is_dir():
        path = Path(data_dir).expanduser() / CIFAR_FOLDER
    else:
        (path,) = _local(data_dir, (CIFAR_FILE,), dataset="cifar10")
    sources = (path,) if path.is_file() else tuple(path / n for n in (*formats.CIFAR_BATCHES[split], "batches.meta"))

    def decode() -> ImageData:
        images, labels, class_names = formats.read_cifar(path, split)
        return ImageData(
            name="cifar10",
            images=torch.from_numpy(images),
            labels=torch.from_numpy(labels),
            class_names=class_names,
            licence="CIFAR-10 (Krizhevsky 2009, 'Learning Multiple Layers of Features from Tiny Images')",
        )

    return Recipe(sources=sources, decode=decode)


def _sprites_recipe(*, data_dir: str | Path | None = None, labels_path: str | Path | None = None) -> Recipe:
    """16x16 pixel-art sprites with 5-dim context vectors (the .npy pair of DeepLearning.AI's diffusion course).

    The context (human, non-human, food, spell, side-facing) conditions the model; there are no class labels.
    One split: split="test" reads the same sprites. Files as in `_sprite_files`.
    """
    if data_dir is None:
        raise PixelDiffusionError(f"sprites needs --data-dir DIR holding {' and '.join(SPRITE_FILES)}")
    images_path, labels_file = _sprite_files(Path(data_dir).expanduser(), labels_path)

    def decode() -> ImageData:
        images, context = formats.read_sprites(images_path, labels_file)
        if context.shape[1] != len(SPRITE_CONTEXT):
            raise PixelDiffusionError(f"{labels_file}: {context.shape[1]} columns, not {', '.join(SPRITE_CONTEXT)}")
        return ImageData(
            name="sprites",
            images=torch.from_numpy(images),
            context=torch.from_numpy(context),
            context_names=SPRITE_CONTEXT,
            licence="sprites by ElvGames, FrootsnVeggies and kyrise, via DeepLearning.AI; check their terms",
        )

    return Recipe(sources=(images_path, labels_file), decode=decode)


def _sprite_files(given: Path, labels_path: str | Path | None) -> tuple[Path, Path]:
    """The sprites' images and labels .npy: by their usual names (SPRITE_FILES), else the one .npy in the folder
    that looks like each (images: uint8 (N, H, W, C); labels: numbers (N, D)).

    given is the folder, or the images file itself; labels_path names the labels file when it lies elsewhere.
    """
    if not given.exists():
        raise PixelDiffusionError(f"sprites: --data-dir {given} does not exist")
    folder = given.parent if given.is_file() else given
    chosen = {
        "images": given if given.is_file() else folder / SPRITE_FILES[0],
        "labels": Path(labels_path).expanduser() if labels_path else folder / SPRITE_FILES[1],
    }
    if labels_path and not chosen["labels"].is_file():
        raise PixelDiffusionError(f"sprites: --labels-path {chosen['labels']} not found")
    kinds = {path: _npy_kind(path) for path in sorted(folder.glob("*.npy")) if path not in chosen.values()}
    for role, path in chosen.items():
        if path.is_file():
            continue
        candidates = [p for p, kind in kinds.items() if kind == role]
        if len(candidates) != 1:
            names = "".join(f", {p.name}" for p in candidates)
            raise PixelDiffusionError(
                f"sprites: no {path.name} in {folder}, and {len(candidates)} other .npy files there look like "
                f"{role} ({SPRITE_SHAPES[role]}){names}; pass --data-dir IMAGES.npy --labels-path LABELS.npy"
            )
        chosen[role] = candidates[0]
    return chosen["images"], chosen["labels"]


def _npy_kind(path: Path) -> str | None:
    """What a .npy holds, from its header: "images" (uint8, N x H x W x C), "labels" (numbers, N x D) or None."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.ndim == 4 and array.dtype == np.uint8:
        return "images"
    return "labels" if array.ndim == 2 and array.dtype.kind in "biuf" else None


@dataclass(frozen=True)
class Entry:
    """A dataset name the registry knows, what it holds (None: depends on the files) and how it is made."""

    name: str
    description: str
    recipe: Callable[..., Recipe]
    sizes: tuple[int, int] | None = None  # train and test images
    resolution: int | None = None
    channels: int | None = None
    classes: int | None = None
    downloads: tuple[str, ...] = ()  # files fetched into the cache
    built_in: bool = False  # shipped inside the package


MNIST_LICENCE = "MNIST (LeCun, Cortes & Burges), CC BY-SA 3.0"
FASHION_LICENCE = "Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, Zalando Research), MIT"
DATASETS = {
    entry.name: entry
    for entry in (
        Entry(
            "digits",
            "UCI handwritten digits, built in",
            _digits_recipe,
            sizes=(1797, 1797),
            resolution=16,
            channels=1,
            classes=10,
            built_in=True,
        ),
        Entry(
            "emoji",
            "Noto Color Emoji, 9 categories, 8 attributes; built in at 16 px (resized), 32 px from --data-dir sheets",
            _emoji_recipe,
            sizes=(3781, 3781),
            resolution=16,
            channels=3,
            classes=9,
            built_in=True,
        ),
        Entry(
            "mnist",
            "handwritten digits (LeCun et al.)",
            partial(_idx_recipe, "mnist", DIGIT_NAMES, MNIST_LICENCE),
            sizes=(60000, 10000),
            resolution=28,
            channels=1,
            classes=10,
            downloads=tuple(MD5["mnist"]),
        ),
        Entry(
            "fashion-mnist",
            "Zalando article pictures",
            partial(_idx_recipe, "fashion-mnist", FASHION_NAMES, FASHION_LICENCE),
            sizes=(60000, 10000),
            resolution=28,
            channels=1,
            classes=10,
            downloads=tuple(MD5["fashion-mnist"]),
        ),
        Entry(
            "cifar10",
            "tiny colour photos (Krizhevsky)",
            _cifar_recipe,
            sizes=(50000, 10000),
            resolution=32,
            channels=3,
            classes=10,
            downloads=(CIFAR_FILE,),
        ),
        Entry(
            "sprites",
            "16x16 pixel-art sprites with 5 context attributes, from --data-dir",
            _sprites_recipe,
            sizes=(89400, 89400),
            resolution=16,
            channels=3,
        ),
        Entry("folder:PATH", "PNG/JPEG/WebP pictures under PATH; subfolders are classes", folder_recipe),
        Entry(
            "hf:NAME[:SPLIT]",
            "a Hugging Face hub dataset (NAME@REVISION pins one), or a copy saved with save_to_disk",
            hub_recipe,
        ),
    )
}
PREFIXES = {"folder:": DATASETS["folder:PATH"], "hf:": DATASETS["hf:NAME[:SPLIT]"]}


def describe_datasets() -> list[dict]:
    """One row per dataset name, for listing them.

    Keys: name, size and test_size (images per split), resolution, channels, classes (each None when it depends on
    the files), cached (True when it loads with no download and no path) and description.
    """
    return [
        {
            "name": entry.name,
            "size": entry.sizes and entry.sizes[0],
            "test_size": entry.sizes and entry.sizes[1],
            "resolution": entry.resolution,
            "channels": entry.channels,
            "classes": entry.classes,
            "cached": entry.built_in or (bool(entry.downloads) and is_downloaded(entry.name, entry.downloads)),
            "description": entry.description,
        }
        for entry in DATASETS.values()
    ]


def native_resolution(name: str, *, count: int = 100) -> int:
    """The side of a dataset's pictures as they come: its registered resolution, or for a folder or a hub dataset
    the median shorter side of its first `count` pictures (read from their headers, without decoding them all)."""
    from contextlib import suppress

    from PIL import Image

    from pixeldiffusion.data import hub

    entry, target = _lookup(name)
    if entry.resolution:
        return entry.resolution
    sides = []
    if entry is PREFIXES["folder:"]:
        for path in folder_recipe(*target, image_size=DEFAULT_IMAGE_SIZE).sources[:count]:
            with suppress(OSError, ValueError, Image.DecompressionBombError), Image.open(path) as picture:
                sides.append(min(picture.size))  # an unreadable one is named when the dataset is loaded
    else:
        datasets = hub._import_datasets()
        spec, revision, split = hub.parse_spec(*target)
        rows = hub._open(datasets, spec, split or "train", revision=revision)
        column = next((c for c, f in rows.features.items() if isinstance(f, datasets.Image)), None)
        if column is None:  # loading it says what is wrong
            return DEFAULT_IMAGE_SIZE
        sides = [min(picture.size) for picture in rows.select(range(min(count, len(rows))))[column]]
    return sorted(sides)[len(sides) // 2] if sides else DEFAULT_IMAGE_SIZE


def load_dataset(
    name: str,
    *,
    split: str = "train",
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    pad: int | None = None,
    channels: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    labels_path: str | Path | None = None,
    cache: bool = True,
) -> ImageData:
    """Load a dataset by name (see `describe_datasets`), optionally padded (28 -> 32) and then resized.

    split: "train" or "test" (digits, emoji, sprites and folders have one split, returned for both).
    data_dir: a folder holding files you already have (mnist, fashion-mnist, cifar10, sprites, emoji); without it, the
        official files are downloaded into the cache ($PIXELDIFFUSION_CACHE, default ~/.cache/pixeldiffusion).
    image_size: side of the square images returned; folders and hub datasets default to 64 (shorter side scaled,
        centre cropped), the others keep their own size.
    pad: pad with black to pad x pad before resizing (e.g. 28 -> 32 for MNIST).
    channels: folders and hub datasets: 1 (greyscale) or 3 (RGB); by default 1 only if every picture is grey.
    image_column, label_column: hub datasets: the columns to read (default: the first Image, ClassLabel column).
    labels_path: sprites: the labels .npy file when it is not beside the images.
    cache: keep the decoded dataset in the cache, and read it from there next time.
    """
    entry, target = _lookup(name)
    if split not in SPLITS:
        raise PixelDiffusionError(f"unknown split {split!r}; choose 'train' or 'test'")
    options = {
        "data_dir": data_dir,
        "channels": channels,
        "image_column": image_column,
        "label_column": label_column,
        "labels_path": labels_path,
    }
    options = {key: value for key, value in options.items() if value is not None}
    accepted = inspect.signature(entry.recipe).parameters
    if unknown := [key for key in options if key not in accepted]:
        raise PixelDiffusionError(f"{entry.name} takes no option {', '.join(unknown)}")
    if "split" in accepted:
        options["split"] = split
    if "image_size" in accepted:
        options["image_size"] = image_size or entry.resolution or DEFAULT_IMAGE_SIZE
    recipe = entry.recipe(*target, **options)

    def build() -> ImageData:
        data = recipe.decode()
        images = pad_to(data.images, pad) if pad else data.images
        images = resize(images, image_size) if image_size else images
        return data if images is data.images else replace(data, images=images)

    if not cache or not recipe.sources:
        return build()
    key = {"split": split, "image_size": image_size, "pad": pad, **options}
    return cached(decoded_path(name, key, recipe.sources), build)


def _lookup(name: str) -> tuple[Entry, tuple[str, ...]]:
    """The registry entry for name, and the argument its recipe takes first (the PATH or NAME of a prefix)."""
    if name in DATASETS and ":" not in name:
        return DATASETS[name], ()
    for prefix, entry in PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return entry, (name.removeprefix(prefix),)
    known = ", ".join(DATASETS)
    raise PixelDiffusionError(f"unknown dataset {name!r}; choose one of {known}")
