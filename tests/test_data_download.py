"""Verified downloads, against an HTTP server on 127.0.0.1 that each test starts and stops itself."""

import hashlib
import socket
from pathlib import Path

import pytest

from conftest import Server
from pixeldiffusion.data import describe_datasets, download, load_dataset
from pixeldiffusion.errors import PixelDiffusionError

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache, and a short timeout so that no test can hang on the network."""
    monkeypatch.setenv("PIXELDIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "TIMEOUT", 5)
    return tmp_path / "cache"


def serve_toy(monkeypatch, server: Server, *mirrors: str, md5: str = hashlib.md5(PAYLOAD).hexdigest()) -> None:
    """A dataset "toy" with one file, payload.bin, published at server/toy/ and checked against md5."""
    server.files["/toy/payload.bin"] = PAYLOAD
    monkeypatch.setitem(download.MIRRORS, "toy", list(mirrors) or [f"{server.url}/toy/"])
    monkeypatch.setitem(download.MD5, "toy", {"payload.bin": md5})


def files_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_is_verified_kept_and_not_fetched_twice(monkeypatch, server, cache):
    serve_toy(monkeypatch, server)
    (path,) = download.fetch("toy", ["payload.bin"])
    assert path == cache / "downloads/toy/payload.bin" and path.read_bytes() == PAYLOAD
    assert download.fetch("toy", ["payload.bin"]) == [path] and server.requests == ["/toy/payload.bin"]
    assert files_in(cache) == ["downloads/toy/payload.bin"]


def test_a_missing_or_dead_mirror_falls_through_to_the_next(monkeypatch, server):
    serve_toy(monkeypatch, server, f"http://127.0.0.1:{free_port()}/", f"{server.url}/absent/", f"{server.url}/toy/")
    (path,) = download.fetch("toy", ["payload.bin"])
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_keeps_nothing(monkeypatch, server, cache):
    serve_toy(monkeypatch, server, md5="0" * 32)
    with pytest.raises(
        PixelDiffusionError, match=r"payload.bin: checksum mismatch: md5 [0-9a-f]{32}, published 0{32}"
    ):
        download.fetch("toy", ["payload.bin"])
    assert files_in(cache) == []


def test_interrupted_transfer_keeps_nothing(monkeypatch, server, cache):
    serve_toy(monkeypatch, server)
    server.cut_short.add("/toy/payload.bin")
    with pytest.raises(PixelDiffusionError, match=r"payload.bin: transfer interrupted after 524288 of 1048576 bytes"):
        download.fetch("toy", ["payload.bin"])
    assert files_in(cache) == []


def test_offline_message_names_the_files_and_the_directory(monkeypatch, cache):
    dead = f"http://127.0.0.1:{free_port()}/mnist/"
    monkeypatch.setitem(download.MIRRORS, "mnist", [dead])
    with pytest.raises(PixelDiffusionError) as error:
        load_dataset("mnist", split="test")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cannot download mnist ({dead}t10k-images-idx3-ubyte.gz: ")
    target = cache / "downloads/mnist"
    assert f"fetch t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from {dead} into {target}" in message
    assert message.endswith("or pass --data-dir DIR holding them")
    assert files_in(cache) == []


def test_mnist_end_to_end_through_the_download_path(monkeypatch, server, cache):
    if not REAL_MNIST.is_dir():
        pytest.skip(f"{REAL_MNIST} is absent")
    names = sorted(path.name for path in REAL_MNIST.glob("*-ubyte.gz"))
    for name in names:  # this copy was gzipped anew: its checksums are not the official ones
        server.files[f"/mnist/{name}"] = (REAL_MNIST / name).read_bytes()
    monkeypatch.setitem(download.MIRRORS, "mnist", [f"{server.url}/mnist/"])
    md5s = {name: hashlib.md5(server.files[f"/mnist/{name}"]).hexdigest() for name in names}
    monkeypatch.setitem(download.MD5, "mnist", md5s)
    assert not {row["name"]: row["cached"] for row in describe_datasets()}["mnist"]
    assert [len(load_dataset("mnist", split=split)) for split in ("train", "test")] == [60000, 10000]
    assert files_in(cache / "downloads") == [f"mnist/{name}" for name in names]
    assert {row["name"]: row["cached"] for row in describe_datasets()}["mnist"]
