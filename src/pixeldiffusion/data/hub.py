"""Image datasets of the Hugging Face hub, or local copies of them saved with `datasets`' save_to_disk.

Needs the optional `datasets` package: pip install 'pixeldiffusion[hub]'. A hub dataset's own loading code is never
run: only its data files are read (`trust_remote_code=False`, where the installed `datasets` still has scripts).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from pixeldiffusion.data.cache import Recipe
from pixeldiffusion.data.imagedata import ImageData
from pixeldiffusion.data.pictures import Picture, decode_pictures
from pixeldiffusion.errors import PixelDiffusionError


def hub_recipe(
    spec: str,
    *,
    split: str,
    image_size: int,
    channels: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> Recipe:
    """A hub dataset "NAME[@REVISION][:SPLIT]" (e.g. "uoft-cs/cifar10:test"; REVISION, a branch, tag or commit,
    pins its files), or the directory of a saved copy "DIR[:SPLIT]".

    A split in spec wins over split. The images come from image_column, by default the first column of type
    Image; the labels from label_column, by default the first ClassLabel column (if any). A named label column
    of any other type works too: its distinct values, sorted, become the classes.
    """
    name, revision, named_split = parse_spec(spec)
    datasets = _import_datasets()
    dataset = _open(datasets, name, named_split or split, revision=revision)
    columns = dataset.features
    image_column = image_column or next((c for c, f in columns.items() if isinstance(f, datasets.Image)), None)
    label_column = label_column or next((c for c, f in columns.items() if isinstance(f, datasets.ClassLabel)), None)
    for column in (image_column, label_column):
        if column is not None and column not in columns:
            raise PixelDiffusionError(f"{name}: no column {column!r}; columns are {', '.join(columns)}")
    if image_column is None or not isinstance(columns[image_column], datasets.Image):
        raise PixelDiffusionError(f"{name}: no image column among {', '.join(columns)}; name one with image_column")

    def decode() -> ImageData:
        cells = dataset.cast_column(image_column, datasets.Image(decode=False))[image_column]
        pictures = [_picture(f"{name} row {i}", cell) for i, cell in enumerate(cells)]
        labels, class_names = _labels(datasets, dataset, label_column) if label_column else (None, ())
        return ImageData(
            name=f"hf:{spec}",
            images=torch.from_numpy(decode_pictures(pictures, size=image_size, channels=channels)),
            labels=labels,
            class_names=class_names,
            licence=f"{name} (Hugging Face hub); its dataset card states the terms",
        )

    return Recipe(sources=tuple(Path(f["filename"]) for f in dataset.cache_files), decode=decode)


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """Split a spec NAME[@REVISION][:SPLIT] into (NAME, REVISION or None, SPLIT or None)."""
    rest, colon, split = spec.partition(":")
    name, at, revision = rest.partition("@")
    if not name or (at and not revision) or (colon and not split):
        raise PixelDiffusionError(f"hf:{spec}: expected hf:NAME, optionally @REVISION, then optionally :SPLIT")
    return name, revision or None, split or None


def _import_datasets():
    try:
        import datasets
    except ImportError as e:
        raise PixelDiffusionError("hf: datasets need the datasets package: pip install 'pixeldiffusion[hub]'") from e
    return datasets


def _open(datasets, name: str, split: str, *, revision: str | None = None):
    """The split of a saved copy (when name is a directory) or of a hub dataset (downloaded by `datasets`, at
    revision when given)."""
    saved_copy = Path(name).expanduser().is_dir()
    if saved_copy and revision:
        raise PixelDiffusionError(f"{name} is a saved copy, which has no revisions; drop @{revision}")
    try:
        if not saved_copy:
            consent = {}
            if "trust_remote_code" in inspect.signature(datasets.load_dataset).parameters:
                consent["trust_remote_code"] = False  # datasets 2.16 to 3.x can run a dataset's script; 4.0 cannot
            return datasets.load_dataset(name, split=split, revision=revision, **consent)
        saved = datasets.load_from_disk(str(Path(name).expanduser()))
    except Exception as e:  # the hub client raises many unrelated types (network, auth, missing split...)
        raise PixelDiffusionError(
            f"cannot load {name!r} ({type(e).__name__}: {' '.join(str(e).split())}); check the name and split, "
            "or save a copy with datasets' save_to_disk and pass its directory"
        ) from e
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise PixelDiffusionError(f"{name}: no split {split!r}; it has {', '.join(saved)}")
        return saved[split]
    return saved


def _picture(where: str, cell: dict | None) -> Picture:
    if cell and cell.get("bytes"):
        return where, cell["bytes"]
    if cell and cell.get("path"):
        return where, Path(cell["path"])
    raise PixelDiffusionError(f"{where}: no image")


def _labels(datasets, dataset, column: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Class indices and names: a ClassLabel column's own, or else the sorted distinct values of the column."""
    values = np.asarray(dataset[column])
    feature = dataset.features[column]
    if isinstance(feature, datasets.ClassLabel):
        if np.any(values < 0):
            raise PixelDiffusionError(f"{column}: some rows have no label (-1); pick a labelled split")
        return torch.from_numpy(values.astype(np.int64)), tuple(feature.names)
    classes, labels = np.unique(values, return_inverse=True)
    return torch.from_numpy(labels.astype(np.int64)), tuple(str(c) for c in classes)
