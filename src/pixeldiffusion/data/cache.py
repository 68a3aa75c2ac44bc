"""The cache directory, files written atomically, and the cache of decoded datasets.

Loading a dataset takes two steps: a `Recipe` names the files it is made from, then decodes them. The decoded
result is kept as a safetensors file (tensors and a JSON header, no pickle) whose name hashes the dataset, its
options and the size and modification time of every source file: the second load reads that one file, and an
edited folder is decoded afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; concurrent decodes then both decode, and the atomic rename keeps one whole
    fcntl = None

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from pixeldiffusion.data.imagedata import ImageData
from pixeldiffusion.errors import PixelDiffusionError

CACHE_ENV = "PIXELDIFFUSION_CACHE"
FORMAT_VERSION = 1  # bump when decoding changes, so that older cached files are no longer found


def cache_dir() -> Path:
    """$PIXELDIFFUSION_CACHE, else $XDG_CACHE_HOME/pixeldiffusion, else ~/.cache/pixeldiffusion."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixeldiffusion"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside `path`: renamed onto it if the block succeeds, deleted if it fails or is interrupted."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as e:
        raise PixelDiffusionError(
            f"cannot write in {path.parent} ({e}); set {CACHE_ENV} to a writable directory"
        ) from e
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@dataclass(frozen=True)
class Recipe:
    """How a dataset is made: the files it is decoded from, and the decoding itself."""

    sources: tuple[Path, ...]  # none: nothing worth caching (built-in or in-memory data)
    decode: Callable[[], ImageData]


def decoded_path(name: str, options: dict[str, object], sources: Sequence[Path]) -> Path:
    """Where the decoded dataset made from these source files with these options is kept."""
    stamps = [(str(path.resolve()), stat.st_size, stat.st_mtime_ns) for path in sources for stat in [path.stat()]]
    key = json.dumps([FORMAT_VERSION, name, options, stamps], sort_keys=True, default=str)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[-60:]
    return cache_dir() / "decoded" / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


class Busy(PixelDiffusionError):
    """Another process holds the lock asked for without waiting."""


@contextmanager
def locked(directory: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on an existing directory (flock, where the OS has it): other processes wait at the same
    call, or, with wait=False, this one raises Busy. The OS releases it when the process ends, however it ends.

    Locking the directory itself leaves no lock file behind. Where the file system refuses locks (some network
    mounts), the block runs unlocked.
    """
    if fcntl is None:
        yield
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(f"{directory} is locked by another process") from None
        except OSError:  # no locks on this file system: proceed unlocked
            pass
        yield
    finally:
        os.close(handle)  # releases the lock


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """`locked` on a cache directory, made first: processes decoding into it take turns."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PixelDiffusionError(f"cannot write in {directory} ({e}); set {CACHE_ENV} to a writable directory") from e
    with locked(directory):
        yield


def cached(path: Path, build: Callable[[], ImageData]) -> ImageData:
    """The dataset kept at `path`; failing that, build it and keep it there.

    Processes that ask at once (torchrun ranks) build it once: one decodes under the lock, the others wait for it
    and then read its file.
    """
    if (data := _read_valid(path)) is not None:
        return data
    with exclusive(path.parent):
        if (data := _read_valid(path)) is not None:  # another process built it while this one waited
            return data
        data = build()
        with atomic_path(path) as temporary:
            _write(temporary, data)
    return data


def _read_valid(path: Path) -> ImageData | None:
    """The dataset kept at path; None when there is none, or a damaged one (deleted, to be decoded again)."""
    if not path.exists():
        return None
    try:
        return _read(path)
    except (SafetensorError, OSError, KeyError, ValueError):
        path.unlink(missing_ok=True)
        return None


def _write(path: Path, data: ImageData) -> None:
    tensors = {"images": data.images, "labels": data.labels, "context": data.context}
    metadata = {
        "name": data.name,
        "class_names": json.dumps(data.class_names),
        "context_names": json.dumps(data.context_names),
        "licence": data.licence,
    }
    save_file({k: v.contiguous() for k, v in tensors.items() if v is not None}, path, metadata=metadata)


def _read(path: Path) -> ImageData:
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
        tensors: dict[str, torch.Tensor] = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    return ImageData(
        name=metadata["name"],
        images=tensors["images"],
        labels=tensors.get("labels"),
        context=tensors.get("context"),
        class_names=tuple(json.loads(metadata["class_names"])),
        context_names=tuple(json.loads(metadata["context_names"])),
        licence=metadata["licence"],
    )
