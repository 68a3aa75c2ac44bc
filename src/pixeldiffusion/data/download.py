"""Verified downloads into the cache: official mirrors, published checksums, never a half-written file.

A file is streamed into a temporary file beside its final place, checked against its published checksum (MD5 for
the datasets, SHA-256 for network weights), and only then renamed into place; an interrupted, truncated or corrupt
transfer leaves nothing that looks like the file. Point `MIRRORS` or `WEIGHTS` elsewhere (e.g. an in-house mirror,
or a test server) by editing their lists.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from pixeldiffusion.data.cache import atomic_path, cache_dir
from pixeldiffusion.errors import PixelDiffusionError

MIRRORS: dict[str, list[str]] = {  # dataset -> base URLs, tried in order
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}

MD5: dict[str, dict[str, str]] = {  # dataset -> file name -> the checksum its publishers list
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
}

WEIGHTS: dict[str, tuple[list[str], str]] = {  # weights file -> (base URLs tried in order, its SHA-256)
    "pt_inception-2015-12-05-6726825d.pth": (  # pytorch-fid's port of the TensorFlow FID Inception
        ["https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"],
        "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    ),
}

TIMEOUT = 30  # seconds a mirror may stay silent before it counts as down
CHUNK = 1 << 20  # bytes read at a time


class _TransferFailed(Exception):
    """One mirror could not deliver a verified copy of one file."""


def download_dir(dataset: str) -> Path:
    """The directory that holds the downloaded files of a dataset."""
    return cache_dir() / "downloads" / dataset


def is_downloaded(dataset: str, names: Sequence[str]) -> bool:
    """Whether every named file of the dataset is already in the cache."""
    return all((download_dir(dataset) / name).exists() for name in names)


def fetch(dataset: str, names: Sequence[str]) -> list[Path]:
    """The cached copies of the named files of a dataset, downloading and verifying the missing ones first."""
    paths = [download_dir(dataset) / name for name in names]
    for path in paths:
        if not path.exists():
            _fetch_one(dataset, path, missing=[p.name for p in paths if not p.exists()])
    return paths


def _fetch_one(dataset: str, path: Path, *, missing: list[str]) -> None:
    failures = _from_mirrors(MIRRORS[dataset], path, algorithm="md5", checksum=MD5[dataset][path.name])
    if failures:
        raise PixelDiffusionError(
            f"cannot download {dataset} ({'; '.join(failures)}); fetch {', '.join(missing)} "
            f"from {' or '.join(MIRRORS[dataset])} into {path.parent}, or pass --data-dir DIR holding them"
        )


def weights_path(name: str) -> Path:
    """Where a pinned weights file is kept: CACHE/weights/NAME."""
    return cache_dir() / "weights" / name


def fetch_weights(name: str) -> Path:
    """The cached copy of a weights file of `WEIGHTS`, downloading it and checking its SHA-256 first if missing."""
    path = weights_path(name)
    if not path.exists():
        mirrors, sha256 = WEIGHTS[name]
        failures = _from_mirrors(mirrors, path, algorithm="sha256", checksum=sha256)
        if failures:
            raise PixelDiffusionError(
                f"cannot download {name} ({'; '.join(failures)}); fetch it from {' or '.join(mirrors)} into {path}"
            )
    return path


def _from_mirrors(mirrors: Sequence[str], path: Path, *, algorithm: str, checksum: str) -> list[str]:
    """Download path.name from the first mirror that delivers a verified copy; returns the failures if none does."""
    failures = []
    for mirror in mirrors:
        url = mirror + path.name
        try:
            _download(url, path, algorithm=algorithm, checksum=checksum)
            return []
        except _TransferFailed as e:
            failures.append(f"{url}: {e}")
    return failures


def _download(url: str, path: Path, *, algorithm: str, checksum: str) -> None:
    """Stream url into path through a temporary file, keeping it only if complete and its `algorithm` digest
    (a hashlib name) is `checksum`."""
    request = urllib.request.Request(url, headers={"User-Agent": "pixeldiffusion"})
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with atomic_path(path) as temporary:
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response, temporary.open("wb") as out:
                expected = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=expected, unit="B", unit_scale=True, desc=path.name, disable=None, leave=False) as bar:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                received = out.tell()
        except (OSError, http.client.HTTPException) as e:
            raise _TransferFailed(str(e)) from e
        if expected is not None and received != expected:
            raise _TransferFailed(f"transfer interrupted after {received} of {expected} bytes")
        if digest.hexdigest() != checksum:
            raise _TransferFailed(f"checksum mismatch: {algorithm} {digest.hexdigest()}, published {checksum}")
