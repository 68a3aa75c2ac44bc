"""Readers of the real file formats: IDX (MNIST, Fashion-MNIST), CIFAR-10 python batches, sprite .npy pairs.

Each returns numpy arrays with images as (N, C, H, W) uint8, and raises PixelDiffusionError naming the file
when the file is not what it should be.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from math import prod
from pathlib import Path

import numpy as np

from pixeldiffusion.errors import PixelDiffusionError

GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ndim dimensions (3 for images, 1 for labels), gzip-compressed or not.

    Layout: magic 0x00 0x00 0x08 ndim (2051 for images, 2049 for labels), ndim big-endian uint32 sizes, data.
    """
    try:
        with path.open("rb") as f:
            compressed = f.read(2) == GZIP_MAGIC
        with (gzip.open if compressed else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise PixelDiffusionError(f"{path}: cannot read ({e}); fetch the file again") from e
    magic, expected = int.from_bytes(raw[:4], "big"), 0x800 + ndim
    if magic != expected:
        what = "images" if ndim == 3 else "labels"
        raise PixelDiffusionError(f"{path}: wrong magic number {magic} (expected {expected} for {what}); wrong file?")
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[i : i + 4], "big") for i in range(4, header, 4))
    if len(raw) - header != prod(shape):
        raise PixelDiffusionError(
            f"{path}: truncated IDX file ({max(len(raw) - header, 0)} of {prod(shape)} bytes); fetch the file again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def read_cifar(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images (N, 3, 32, 32), labels and class names of a CIFAR-10 split.

    path is the python tarball (cifar-10-python.tar.gz) or the folder it unpacks to (cifar-10-batches-py).
    The pickled batches are read by a restricted unpickler that only rebuilds plain data and numpy arrays.
    """
    batches = _cifar_members(path, (*CIFAR_BATCHES[split], "batches.meta"))
    meta = _unpickle(batches.pop("batches.meta"), f"{path}:batches.meta")
    images, labels = [], []
    for member, raw in batches.items():
        batch = _unpickle(raw, f"{path}:{member}")
        data, batch_labels = batch.get("data"), batch.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3 * 32 * 32,):
            raise PixelDiffusionError(f"{path}:{member}: no uint8 'data' array of 32x32 RGB rows; not CIFAR-10 python")
        if not isinstance(batch_labels, list) or len(batch_labels) != len(data):
            raise PixelDiffusionError(f"{path}:{member}: {len(data)} images but labels do not match")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    class_names = tuple(meta.get("label_names", ()))
    labels = np.concatenate(labels)
    if not class_names or np.any((labels < 0) | (labels >= len(class_names))):
        raise PixelDiffusionError(f"{path}: labels outside the {len(class_names)} classes of batches.meta")
    return np.concatenate(images), labels, class_names


def _cifar_members(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The bytes of the named members of the tarball (or files of the folder), in the order of names."""
    found: dict[str, bytes] = {}
    try:
        if path.is_dir():
            found = {name: (path / name).read_bytes() for name in names if (path / name).is_file()}
        else:
            with tarfile.open(path) as tar:
                for member in tar:
                    name = member.name.rsplit("/", 1)[-1]
                    if name in names and member.isfile():
                        found[name] = tar.extractfile(member).read()
                        if len(found) == len(names):
                            break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise PixelDiffusionError(f"{path}: cannot read ({e}); fetch the file again") from e
    missing = [name for name in names if name not in found]
    if missing:
        raise PixelDiffusionError(f"{path}: {', '.join(missing)} missing; is it the CIFAR-10 python version?")
    return {name: found[name] for name in names}


class _PlainDataUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, numbers and numpy arrays; refuses every other global, so no code can run."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # as written by numpy 1 (the CIFAR-10 files)
        ("numpy._core.multiarray", "_reconstruct"),  # the same function as written by numpy 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        value = _PlainDataUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # a malformed pickle can raise almost any exception (see the pickle docs)
        raise PixelDiffusionError(f"{where}: not a CIFAR-10 batch ({type(e).__name__}: {e})") from e
    if not isinstance(value, dict):
        raise PixelDiffusionError(f"{where}: not a CIFAR-10 batch (a {type(value).__name__}, not a dict)")
    return value


def read_sprites(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Sprite images (N, H, W, C) uint8 as (N, C, H, W), and their label vectors (N, D) as float32."""
    images, labels = _load_npy(images_path), _load_npy(labels_path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise PixelDiffusionError(
            f"{images_path}: expected uint8 images (N, H, W, 1 or 3), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 2 or labels.dtype.kind not in "biuf":
        raise PixelDiffusionError(
            f"{labels_path}: expected numeric label vectors (N, D), got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise PixelDiffusionError(
            f"{labels_path}: {len(labels)} label vectors for the {len(images)} images of {images_path}"
        )
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.float32)


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise PixelDiffusionError(f"{path}: cannot read as a .npy array ({e})") from e
    if not isinstance(array, np.ndarray):
        array.close()
        raise PixelDiffusionError(f"{path}: an .npz archive, not a single .npy array")
    return array
