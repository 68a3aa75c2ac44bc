"""Datasets: every loader on small files in the real formats, the decoded cache, and bad input."""

import gzip
import io
import json
import multiprocessing
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixeldiffusion.data import (
    ImageData,
    describe_datasets,
    emoji,
    formats,
    hub,
    load_dataset,
    to_model_range,
    to_uint8,
)
from pixeldiffusion.errors import PixelDiffusionError

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist"
REAL_EMOJI = Path(__file__).resolve().parents[2] / "shared/data/emoji"
rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty cache directory."""
    monkeypatch.setenv("PIXELDIFFUSION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def files_in(directory: Path) -> list[str]:
    """Every file left under directory (temporary ones included), as relative paths."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


# --- small files in the real formats -------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes, gzip-compressed when its name ends in .gz."""
    raw = bytes((0, 0, 8, array.ndim)) + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_mnist(directory: Path, *, n: int = 5, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(directory / f"train-images-idx3-ubyte{suffix}", images)
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", labels)
    return images, labels


def cifar_pickle(value: object) -> bytes:
    """Pickled like the real CIFAR-10 batches, whose arrays name numpy.core.multiarray (written by numpy 1)."""
    return pickle.dumps(value, protocol=3).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_cifar(path: Path, *, per_batch: int = 2, n_test: int = 3, members: dict | None = None) -> dict:
    """A CIFAR-10 python tarball; returns the images and labels of each split as written."""
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    splits = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    written, contents = {}, {"batches.meta": cifar_pickle({"label_names": names, "num_vis": 3072})}
    for split, batches in splits.items():
        n = per_batch if split == "train" else n_test
        data = rng.integers(0, 256, (n * len(batches), 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n * len(batches)).tolist()
        written[split] = (data.reshape(-1, 3, 32, 32), labels)
        for i, batch in enumerate(batches):
            rows = slice(i * n, (i + 1) * n)
            contents[batch] = cifar_pickle({"data": data[rows], "labels": labels[rows], "batch_label": batch})
    contents.update(members or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in contents.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return written


def write_sprites(directory: Path, *, n: int = 6, n_labels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    labels = np.eye(5)[rng.integers(0, 5, n_labels or n)]
    np.save(directory / "sprites_1788_16x16.npy", images)
    np.save(directory / "sprite_labels_nc_1788_16x16.npy", labels)
    return images, labels


EMOJI_ENTRIES = [  # a face, a person with one skin tone drawn (and one not), a swatch and an emoji Google lacks
    {
        "category": "Smileys & Emotion",
        "subcategory": "face-smiling",
        "has_img_google": True,
        "sheet_x": 0,
        "sheet_y": 0,
    },
    {
        "category": "People & Body",
        "subcategory": "person",
        "has_img_google": True,
        "sheet_x": 1,
        "sheet_y": 0,
        "skin_variations": {
            "1F3FB": {"sheet_x": 2, "sheet_y": 0, "has_img_google": True},
            "1F3FC": {"sheet_x": 0, "sheet_y": 1, "has_img_google": False},
        },
    },
    {"category": "Component", "subcategory": "skin-tone", "has_img_google": True, "sheet_x": 1, "sheet_y": 1},
    {"category": "Flags", "subcategory": "country-flag", "has_img_google": False, "sheet_x": 2, "sheet_y": 1},
]
# what the three kept cells hold (RGBA), and the RGB each gives over the mid-grey background
EMOJI_CELLS = {(0, 0): (255, 0, 0, 255), (1, 0): (9, 9, 9, 0), (2, 0): (0, 0, 255, 128)}
EMOJI_RGB = [[255, 0, 0], [128, 128, 128], [64, 64, 192]]


def write_emoji(directory: Path, size: int) -> None:
    """An emoji-datasource folder: a 3 x 2 sheet of size x size images (green 1 px borders), emoji.json and
    categories.json."""
    cell = size + 2
    sheet = np.zeros((2 * cell, 3 * cell, 4), np.uint8)
    sheet[...] = (0, 255, 0, 255)  # borders and unlisted cells: never read
    for (x, y), rgba in EMOJI_CELLS.items():
        sheet[cell * y + 1 : cell * y + 1 + size, cell * x + 1 : cell * x + 1 + size] = rgba
    Image.fromarray(sheet).save(directory / f"sheet-{size}.png")
    (directory / "emoji.json").write_text(json.dumps(EMOJI_ENTRIES))
    categories = {"Smileys & Emotion": ["face-smiling"], "People & Body": ["person"], "Component": [], "Flags": []}
    (directory / "categories.json").write_text(json.dumps(categories))


def write_pictures(root: Path) -> None:
    """Two classes of pictures in mixed formats, sizes and modes, plus files that must be skipped."""
    (root / "cats/sub").mkdir(parents=True)
    (root / "dogs").mkdir()
    stripes = np.concatenate([np.full((10, 10, 3), c, np.uint8) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))])
    Image.fromarray(stripes).save(root / "cats/a.png")  # 10 wide, 30 tall: the centre crop is the green stripe
    Image.new("L", (40, 24), 100).save(root / "cats/sub/b.jpg")
    Image.new("RGBA", (33, 33), (255, 0, 0, 0)).save(root / "dogs/c.webp", lossless=True)  # transparent: white
    Image.new("P", (12, 12), 3).save(root / "dogs/d.png")
    (root / "dogs/.hidden.png").write_bytes(b"not a picture")
    (root / "dogs/notes.txt").write_text("not a picture either")


# --- loaders -------------------------------------------------------------------------------------------------


def test_digits_are_built_in_and_not_cached(cache):
    data = load_dataset("digits")
    assert data.shape == (1, 16, 16) and len(data) == 1797
    assert set(data.labels.tolist()) == set(range(10)) and data.class_names[3] == "3"
    assert not cache.exists()


def test_emoji_are_built_in_colour_with_categories_and_attributes(cache):
    data = load_dataset("emoji")
    assert data.shape == (3, 16, 16) and len(data) == 3781 and not cache.exists()
    assert data.class_names[:3] == ("Smileys & Emotion", "People & Body", "Animals & Nature")
    assert len(data.class_names) == 9 and "Component" not in data.class_names
    assert set(data.labels.tolist()) == set(range(9))
    assert data.context_names == ("face", "person", "animal", "plant", "food", "travel", "object", "symbol")
    assert set(data.context.unique().tolist()) == {0.0, 1.0} and data.context.sum(1).min() == 1  # multi-hot
    faces, people = data.context[:, 0] == 1, data.context[:, 1] == 1
    assert (faces & people).any() and (faces & ~people).any(), "heads of people are faces, smileys are not people"
    grey = (data.images == emoji.BACKGROUND).all(1).float().mean()
    assert 0.2 < grey < 0.5, "transparent pixels lie over mid-grey"
    assert torch.equal(load_dataset("emoji", split="test").images, data.images)  # one split
    assert load_dataset("emoji", image_size=32).shape == (3, 32, 32)  # resized from 16 px


def test_emoji_file_is_small_and_ships_with_its_licences():
    package = Path(emoji.__file__).parent
    assert (package / "emoji.npz").stat().st_size <= 2.1e6
    licences = (package / "EMOJI-LICENCE.txt").read_text()
    assert "Noto Emoji images, Copyright Google Inc., licensed under the Apache License, Version 2.0" in licences
    assert "Copyright (c) 2013 Cal Henderson" in licences and "END OF TERMS AND CONDITIONS" in licences


@pytest.mark.parametrize("size", [16, 32])
def test_emoji_sheet_of_the_size_asked_from_data_dir(tmp_path, size):
    write_emoji(tmp_path, 16)
    write_emoji(tmp_path, 32)
    data = load_dataset("emoji", data_dir=tmp_path, image_size=size)
    assert data.shape == (3, size, size)
    assert data.images.amin((2, 3)).tolist() == EMOJI_RGB == data.images.amax((2, 3)).tolist()  # no border
    assert data.labels.tolist() == [0, 1, 1] and data.class_names == ("Smileys & Emotion", "People & Body", "Flags")
    assert data.context[:, :2].tolist() == [[1, 0], [1, 1], [1, 1]] and data.context[:, 2:].sum() == 0


def test_emoji_script_writes_what_the_loader_reads(tmp_path):
    write_emoji(tmp_path, 16)
    emoji.main([str(tmp_path), str(tmp_path / "out.npz")])
    with np.load(tmp_path / "out.npz") as archive:
        written = emoji.image_data(dict(archive))
    assert torch.equal(written.images, load_dataset("emoji", data_dir=tmp_path).images)
    with pytest.raises(PixelDiffusionError, match=r"emoji: sheet-32.png or img/google/sheets-clean/32.png not found"):
        load_dataset("emoji", data_dir=tmp_path, image_size=32)


@pytest.mark.skipif(not REAL_EMOJI.is_dir(), reason="no emoji sheets in shared/data")
def test_packaged_emoji_are_the_real_sheet():
    packaged = emoji.read_packaged()
    made = emoji.read_sheet(*emoji.sheet_files(REAL_EMOJI, 16), size=16)
    assert packaged.keys() == made.keys()
    assert all(np.array_equal(packaged[key], made[key]) for key in made)
    assert load_dataset("emoji", data_dir=REAL_EMOJI, image_size=32).shape == (3, 32, 32)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_files_from_data_dir(tmp_path, name, gz):
    images, labels = write_mnist(tmp_path, gz=gz)
    data = load_dataset(name, data_dir=tmp_path)
    assert torch.equal(data.images, torch.from_numpy(images)[:, None])
    assert data.labels.tolist() == labels.tolist() and data.labels.dtype == torch.int64
    assert len(data.class_names) == 10
    assert data.class_names[0] == ("0" if name == "mnist" else "T-shirt/top")


def test_pad_then_resize(tmp_path):
    write_mnist(tmp_path)
    assert load_dataset("mnist", data_dir=tmp_path, pad=32).shape == (1, 32, 32)
    padded = load_dataset("mnist", data_dir=tmp_path, pad=32, image_size=16)
    assert padded.shape == (1, 16, 16) and padded.images.dtype == torch.uint8


def test_cifar_tarball_and_unpacked_folder(tmp_path):
    written = write_cifar(tmp_path / "cifar-10-python.tar.gz")
    for split, (images, labels) in written.items():
        data = load_dataset("cifar10", split=split, data_dir=tmp_path)
        assert torch.equal(data.images, torch.from_numpy(images)) and data.labels.tolist() == labels
        assert data.shape == (3, 32, 32) and data.class_names[-1] == "truck"
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    unpacked = load_dataset("cifar10", split="test", data_dir=tmp_path / "unpacked")
    assert torch.equal(unpacked.images, torch.from_numpy(written["test"][0]))


class RunsCode:
    """Unpickling this runs a shell command: the CIFAR reader must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_reader_refuses_to_run_code(tmp_path):
    marker = tmp_path / "ran"
    write_cifar(tmp_path / "cifar-10-python.tar.gz", members={"test_batch": pickle.dumps({"data": RunsCode(marker)})})
    with pytest.raises(PixelDiffusionError, match=r"test_batch: not a CIFAR-10 batch .*refusing to load \w+\.system"):
        load_dataset("cifar10", split="test", data_dir=tmp_path)
    assert not marker.exists()


def test_sprites_pair_by_folder_or_by_paths(tmp_path):
    images, labels = write_sprites(tmp_path)
    data = load_dataset("sprites", data_dir=tmp_path)
    assert torch.equal(data.images, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert data.context.dtype == torch.float32 and torch.equal(data.context, torch.from_numpy(labels).float())
    assert data.labels is None and data.class_names == ()
    assert data.context_names == ("human", "non-human", "food", "spell", "side-facing")
    assert torch.equal(data.condition("context"), data.context) and data.condition("none") is None
    moved = tmp_path / "elsewhere.npy"
    (tmp_path / "sprite_labels_nc_1788_16x16.npy").rename(moved)
    by_paths = load_dataset("sprites", data_dir=tmp_path / "sprites_1788_16x16.npy", labels_path=moved)
    assert torch.equal(by_paths.context, data.context)


def test_sprites_any_one_images_and_labels_pair_in_the_folder(tmp_path):
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    labels = np.eye(5)[rng.integers(0, 5, 6)]
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    (tmp_path / "z.npy").write_bytes(b"not an array")  # neither: ignored
    for data in (load_dataset("sprites", data_dir=tmp_path), load_dataset("sprites", data_dir=tmp_path / "x.npy")):
        assert torch.equal(data.images, torch.from_numpy(images).permute(0, 3, 1, 2))
        assert torch.equal(data.context, torch.from_numpy(labels).float())


@pytest.mark.parametrize(
    ("files", "options", "message"),
    [
        (
            ("a", "b", "labels"),
            {},
            r"and 2 other .npy files there look like images \(uint8, N x H x W x C\), a.npy, b",
        ),
        (("a",), {}, r"no sprite_labels_nc_1788_16x16.npy in .*, and 0 other .npy files there look like labels"),
        (("a", "labels"), {"labels_path": "absent.npy"}, r"sprites: --labels-path absent.npy not found"),
        ((), {"data_dir": "absent"}, r"sprites: --data-dir absent does not exist"),
    ],
)
def test_sprites_files_that_cannot_be_told_apart_name_the_flags(tmp_path, files, options, message):
    for name in files:
        shape = (2, 5) if name == "labels" else (2, 16, 16, 3)
        np.save(tmp_path / f"{name}.npy", np.zeros(shape, np.uint8))
    with pytest.raises(PixelDiffusionError, match=message) as error:
        load_dataset("sprites", **{"data_dir": tmp_path, **options})
    assert "_path" not in str(error.value).replace(str(tmp_path), "")  # CLI flags, not API arguments


def test_folder_of_mixed_pictures_with_class_subfolders(tmp_path):
    write_pictures(tmp_path / "pets")
    data = load_dataset(f"folder:{tmp_path / 'pets'}", image_size=8)
    assert data.shape == (3, 8, 8) and len(data) == 4
    assert data.class_names == ("cats", "dogs") and data.labels.tolist() == [0, 0, 1, 1]
    green = data.images[0].float().mean(dim=(1, 2))
    assert green[1] > 200 and green[0] < 50 and green[2] < 50
    assert data.images[2].min() == 255  # the transparent WebP laid over white
    grey = load_dataset(f"folder:{tmp_path / 'pets'}", image_size=8, channels=1)
    assert grey.shape == (1, 8, 8)


def test_folder_without_subfolders_is_unlabelled_and_grey_when_every_picture_is(tmp_path):
    Image.new("L", (20, 30), 7).save(tmp_path / "a.png")
    Image.new("L", (9, 9), 9).save(tmp_path / "b.PNG")
    data = load_dataset(f"folder:{tmp_path}")
    assert data.shape == (1, 64, 64) and data.labels is None and data.class_names == ()
    assert data.images[0].unique().tolist() == [7]


def test_hub_dataset_saved_locally(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"]), "kind": datasets.Value("string")}
    )
    pictures = [Image.new("L", (10 + i, 12), 40 * i) for i in range(4)]
    rows = {"img": pictures, "label": [0, 1, 1, 0], "kind": ["b", "a", "b", "b"]}
    splits = {"train": rows, "test": {key: values[:2] for key, values in rows.items()}}
    copy = tmp_path / "copy"
    saved = {split: datasets.Dataset.from_dict(columns, features=features) for split, columns in splits.items()}
    datasets.DatasetDict(saved).save_to_disk(copy)
    data = load_dataset(f"hf:{copy}", image_size=8)
    assert data.shape == (1, 8, 8) and len(data) == 4
    assert data.labels.tolist() == [0, 1, 1, 0] and data.class_names == ("cat", "dog")
    assert data.images[3].unique().tolist() == [120]
    assert len(load_dataset(f"hf:{copy}:test", image_size=8)) == 2
    by_kind = load_dataset(f"hf:{copy}", image_size=8, channels=3, image_column="img", label_column="kind")
    assert by_kind.shape == (3, 8, 8) and by_kind.class_names == ("a", "b") and by_kind.labels.tolist() == [1, 0, 1, 1]
    with pytest.raises(PixelDiffusionError, match="no column 'species'"):
        load_dataset(f"hf:{copy}", label_column="species")
    with pytest.raises(PixelDiffusionError, match="no split 'validation'"):
        load_dataset(f"hf:{copy}:validation")


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("org/name", ("org/name", None, None)),
        ("org/name:test", ("org/name", None, "test")),
        ("org/name@v1.0", ("org/name", "v1.0", None)),
        ("org/name@0123abc:test", ("org/name", "0123abc", "test")),
    ],
)
def test_hub_spec_names_a_revision_and_a_split(spec, parsed):
    assert hub.parse_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["org/name@", "org/name:", "@v1", "org/name@:test"])
def test_hub_spec_malformed(spec):
    with pytest.raises(PixelDiffusionError, match=f"hf:{spec}: expected hf:NAME, optionally @REVISION"):
        hub.parse_spec(spec)


def test_hub_datasets_load_pinned_and_never_run_their_code(monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    rows = {"image": [Image.new("L", (4, 4), 9), Image.new("L", (4, 4), 200)], "label": [0, 1]}
    table = datasets.Dataset.from_dict(rows, features=features)
    calls = []

    def with_scripts(path, *, split=None, revision=None, trust_remote_code=None):  # datasets 2.16 to 3.x
        calls.append((path, {"split": split, "revision": revision, "trust_remote_code": trust_remote_code}))
        return table

    def without_scripts(path, **options):  # datasets 4: no trust_remote_code argument at all
        calls.append((path, options))
        return table

    monkeypatch.setattr(datasets, "load_dataset", with_scripts)
    data = load_dataset("hf:org/name@v1.0:test", image_size=4)
    assert data.labels.tolist() == [0, 1] and data.name == "hf:org/name@v1.0:test"
    load_dataset("hf:org/name", image_size=4)
    monkeypatch.setattr(datasets, "load_dataset", without_scripts)
    load_dataset("hf:org/name@main", split="test", image_size=4)
    assert calls == [
        ("org/name", {"split": "test", "revision": "v1.0", "trust_remote_code": False}),
        ("org/name", {"split": "train", "revision": None, "trust_remote_code": False}),
        ("org/name", {"split": "test", "revision": "main"}),
    ]


def test_real_mnist_from_data_dir():
    if not REAL_MNIST.is_dir():
        pytest.skip(f"{REAL_MNIST} is absent")
    for split, size in (("train", 60000), ("test", 10000)):
        data = load_dataset("mnist", split=split, data_dir=REAL_MNIST, cache=False)
        assert len(data) == size and data.shape == (1, 28, 28)
        assert data.labels.unique().tolist() == list(range(10))


# --- the decoded cache ---------------------------------------------------------------------------------------


def test_second_load_reads_the_cache_and_an_edited_source_is_decoded_again(tmp_path, cache, monkeypatch):
    images, _ = write_mnist(tmp_path)
    first = load_dataset("mnist", data_dir=tmp_path, pad=32)
    assert len(files_in(cache / "decoded")) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(formats, "read_idx", no_decoding)
        again = load_dataset("mnist", data_dir=tmp_path, pad=32)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert (again.name, again.class_names, again.licence) == (first.name, first.class_names, first.licence)
    edited = images.copy()
    edited[0] = 0
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", edited)
    os.utime(tmp_path / "train-images-idx3-ubyte.gz", ns=(1, 1))  # a new timestamp even on a coarse clock
    assert load_dataset("mnist", data_dir=tmp_path).images[0].max() == 0


def decode_at_once(barrier, data_dir: Path) -> None:
    """One of two processes loading the same dataset at the same moment (as torchrun's ranks do)."""
    barrier.wait()
    load_dataset("mnist", data_dir=data_dir)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the test forks; flock is POSIX")
def test_processes_loading_at_once_decode_once(tmp_path, cache, monkeypatch):
    images, _ = write_mnist(tmp_path)
    log, read_idx = tmp_path / "decoded-by", formats.read_idx

    def slow_read(path, *, ndim):
        with log.open("a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # time for the other process to look for the cache entry meanwhile
        return read_idx(path, ndim=ndim)

    monkeypatch.setattr(formats, "read_idx", slow_read)  # inherited by the forked processes
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    workers = [context.Process(target=decode_at_once, args=(barrier, tmp_path)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert len(set(log.read_text().split())) == 1, "one process decoded, the other read its cache entry"
    assert len(files_in(cache / "decoded")) == 1
    assert torch.equal(load_dataset("mnist", data_dir=tmp_path).images[:, 0], torch.from_numpy(images))


def test_describe_datasets_lists_every_name():
    rows = {row["name"]: row for row in describe_datasets()}
    names = {"digits", "emoji", "mnist", "fashion-mnist", "cifar10", "sprites", "folder:PATH", "hf:NAME[:SPLIT]"}
    assert names == set(rows)
    assert rows["cifar10"] == {
        "name": "cifar10",
        "size": 50000,
        "test_size": 10000,
        "resolution": 32,
        "channels": 3,
        "classes": 10,
        "cached": False,
        "description": rows["cifar10"]["description"],
    }
    assert rows["digits"]["cached"] and rows["emoji"]["cached"] and not rows["mnist"]["cached"]


def test_model_range_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = to_model_range(pixels)
    assert x.min() == -1 and x.max() == 1 and torch.equal(to_uint8(x), pixels)


# --- bad input: a clear message naming the file, and nothing left in the cache -------------------------------


def truncated(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def bad_idx_gz(d: Path) -> None:
    write_mnist(d)
    truncated(d / "train-images-idx3-ubyte.gz")


def bad_idx_raw(d: Path) -> None:
    write_mnist(d, gz=False)
    truncated(d / "train-images-idx3-ubyte", keep=0.9)


def wrong_magic(d: Path) -> None:
    write_mnist(d)
    write_idx(d / "train-images-idx3-ubyte.gz", np.zeros(5, np.uint8))


def labels_do_not_match(d: Path) -> None:
    write_mnist(d)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))


def labels_out_of_range(d: Path) -> None:
    write_mnist(d)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.full(5, 10, np.uint8))


def bad_cifar_tarball(d: Path) -> None:
    write_cifar(d / "cifar-10-python.tar.gz")
    truncated(d / "cifar-10-python.tar.gz")


def cifar_without_meta(d: Path) -> None:
    with tarfile.open(d / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("cifar-10-batches-py/readme.html"), io.BytesIO())


def sprites_do_not_match(d: Path) -> None:
    write_sprites(d, n=6, n_labels=5)


def sprites_too_narrow(d: Path) -> None:
    write_sprites(d)
    np.save(d / "sprite_labels_nc_1788_16x16.npy", np.zeros((6, 4)))


def sprites_pickled(d: Path) -> None:
    write_sprites(d)
    np.save(d / "sprites_1788_16x16.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


def corrupt_picture(d: Path) -> None:
    Image.new("RGB", (8, 8)).save(d / "fine.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")


def truncated_picture(d: Path) -> None:
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "cut.jpg", quality=95)
    truncated(d / "cut.jpg", keep=0.3)


def emoji_json_cut_short(d: Path) -> None:
    write_emoji(d, 16)
    (d / "emoji.json").write_text(json.dumps(EMOJI_ENTRIES)[:50])


def emoji_cell_beyond_the_sheet(d: Path) -> None:
    write_emoji(d, 16)
    (d / "emoji.json").write_text(json.dumps([{**EMOJI_ENTRIES[0], "sheet_x": 3}]))


def emoji_sheet_of_other_cells(d: Path) -> None:
    write_emoji(d, 16)
    Image.new("RGBA", (32, 32)).save(d / "sheet-16.png")


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("mnist", bad_idx_gz, r"train-images-idx3-ubyte.gz: cannot read \(.*\); fetch the file again"),
        ("mnist", bad_idx_raw, r"train-images-idx3-ubyte: truncated IDX file \(\d+ of 3920 bytes\)"),
        ("mnist", wrong_magic, r"train-images-idx3-ubyte.gz: wrong magic number 2049 \(expected 2051 for images\)"),
        ("mnist", labels_do_not_match, r"train-labels-idx1-ubyte.gz: 4 labels for the 5 images of .*images-idx3"),
        ("fashion-mnist", labels_out_of_range, r"train-labels-idx1-ubyte.gz: labels beyond the 10 classes"),
        ("mnist", lambda d: None, r"mnist: train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz not found in "),
        ("cifar10", bad_cifar_tarball, r"cifar-10-python.tar.gz: cannot read .*; fetch the file again"),
        ("cifar10", cifar_without_meta, r"cifar-10-python.tar.gz: data_batch_1, .*, batches.meta missing"),
        ("sprites", sprites_do_not_match, r"sprite_labels_nc_1788_16x16.npy: 5 label vectors for the 6 images"),
        ("sprites", sprites_too_narrow, r"sprite_labels_nc_1788_16x16.npy: 4 columns, not human, non-human, food"),
        ("sprites", sprites_pickled, r"sprites_1788_16x16.npy: cannot read as a .npy array"),
        ("emoji", emoji_json_cut_short, r"emoji.json: cannot read as JSON \(Expecting value"),
        ("emoji", emoji_cell_beyond_the_sheet, r"emoji.json: cells outside .*sheet-16.png; a sheet of another"),
        ("emoji", emoji_sheet_of_other_cells, r"sheet-16.png: 32x32 is no grid of 18 px cells"),
        ("folder:{d}", corrupt_picture, r"broken.png: not a readable image"),
        ("folder:{d}", truncated_picture, r"cut.jpg: cannot decode \(image file is truncated"),
        ("folder:{d}", lambda d: None, r"no PNG, JPEG or WebP images in it or its subfolders"),
        ("folder:{d}/absent", lambda d: None, r"absent: not a directory of images"),
    ],
)
def test_bad_input_is_named_and_leaves_no_file(tmp_path, cache, name, make, message):
    make(tmp_path)
    options = {} if name.startswith("folder:") else {"data_dir": tmp_path}
    for _ in range(2):  # the second attempt fails the same way: nothing was half-kept
        with pytest.raises(PixelDiffusionError, match=message):
            load_dataset(name.format(d=tmp_path), **options)
    assert files_in(cache) == []


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("imagenet", {}, r"unknown dataset 'imagenet'; choose one of digits, emoji, mnist"),
        ("folder:", {}, r"unknown dataset 'folder:'"),
        ("mnist", {"split": "validation"}, r"unknown split 'validation'"),
        ("mnist", {"channels": 1}, r"mnist takes no option channels"),
        ("digits", {"data_dir": "x"}, r"digits takes no option data_dir"),
        ("sprites", {}, r"sprites needs --data-dir DIR"),
        ("emoji", {"data_dir": "absent"}, r"emoji: sheet-16.png or .*, emoji.json, categories.json not found in"),
    ],
)
def test_impossible_requests(name, options, message):
    with pytest.raises(PixelDiffusionError, match=message):
        load_dataset(name, **options)


def test_image_data_checks_its_own_shape():
    with pytest.raises(PixelDiffusionError, match="3 images but 2 labels"):
        ImageData("toy", torch.zeros(3, 1, 4, 4, dtype=torch.uint8), labels=torch.zeros(2))
