"""Sample-quality evaluation end to end: `eval --run` and `eval --images`, cached reference statistics, evaluation
during training with the best checkpoint, the FID Inception's weights file (key names, safe loading, download)."""

import functools
import hashlib
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from pixeldiffusion.checkpoint import list_checkpoints, load_checkpoint
from pixeldiffusion.cli import main
from pixeldiffusion.data import download, load_dataset
from pixeldiffusion.errors import PixelDiffusionError
from pixeldiffusion.evaluation import callback, classifier, statistics
from pixeldiffusion.evaluation.classifier import train_classifier
from pixeldiffusion.evaluation.evaluate import as_uint8_images, data_labels, evaluate_images, read_arrays
from pixeldiffusion.evaluation.inception import WEIGHTS_FILE, FIDInception, load_inception
from pixeldiffusion.evaluation.reference import Reference
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.training import train

DIGITS = "digits:all (one split, no held-out images) at 16x16"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache holding a narrow classifier of the digits at 16x16, trained for the default epochs (98% held out)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIXELDIFFUSION_CACHE", str(path))
        assert train_classifier("digits", widths=(16, 32)).info.test_accuracy >= classifier.MIN_ACCURACY
        yield path


@pytest.fixture(scope="module")
def run(cache, tmp_path_factory):
    """A class-conditional run of four steps of the tiny model."""
    path = tmp_path_factory.mktemp("evaluation") / "run"
    train(tiny_config(max_steps=4, checkpoint_every=4), path)
    return path


def eval_lines(run_dir):
    return [
        r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "eval"
    ]


def fails(capsys, *args) -> str:
    """The one-line message of a command that must fail as a user error."""
    assert main(list(args)) == 2
    message = capsys.readouterr().err
    assert message.startswith("pixeldiffusion: error: ") and message.count("\n") == 1, message
    return message


def test_eval_run_logs_one_line_and_prints_a_table(run, capsys):
    assert main(["eval", "--run", str(run), "--n", "40", "--steps", "3", "--guidance", "2"]) == 0
    record = eval_lines(run)[-1]
    _, meta = load_checkpoint(list_checkpoints(run)[-1])
    assert record["step"] == meta["step"] == 4 and record["elapsed_s"] == round(meta["elapsed"], 2)
    assert record["n"] == 40 and record["extractor"] == "classifier digits-16" and record["reference"] == DIGITS
    assert record["sampling"] == {"sampler": "ddim", "steps": 3, "guidance": 2.0, "eta": 0.0, "seed": 0}
    for name in ("fd", "kid", "kid_std", "precision", "recall", "accuracy", "class_entropy", "classes_present"):
        assert math.isfinite(record[name]), name
    assert 0 <= record["memorisation_fraction"] <= 1 and record["memorisation_train_median"] > 0
    assert record["warnings"] == []  # 40 samples > 32 features of this classifier
    out = capsys.readouterr().out
    assert f"{run} at step 4 ({meta['elapsed'] / 60:.1f} training minutes); sampler ddim, steps 3, guidance 2.0" in out
    assert f"40 images, features: classifier digits-16, reference: {DIGITS}" in out
    for row in (
        "Frechet distance",
        "KID",
        "precision / recall",
        "class accuracy",
        "class coverage",
        "nearest training",
    ):
        assert f"\n  {row}" in out
    assert out.endswith(f"appended to {run / 'metrics.jsonl'}\n")


def test_reference_statistics_are_cached_per_extractor_reference_and_geometry(cache, monkeypatch):
    calls = []
    compute = statistics.compute_statistics
    monkeypatch.setattr(statistics, "compute_statistics", lambda *a, **k: calls.append(a) or compute(*a, **k))

    class Pixels:  # a stand-in extractor: the first 8 pixels
        name, fingerprint = "pixels", "f1"

        def embed(self, x):
            return x.flatten(1)[:, :8]

    cpu = torch.device("cpu")
    digits, digits8 = Reference.of_dataset("digits"), Reference.of_dataset("digits", image_size=8)
    first = statistics.reference_statistics(Pixels(), digits, device=cpu)
    again = statistics.reference_statistics(Pixels(), digits, device=cpu)
    assert len(calls) == 1 and torch.equal(first.sigma, again.sigma) and again.count == 1797
    assert (again.extractor, again.reference) == ("pixels", "digits:all (one split, no held-out images)")
    other = Pixels()
    other.fingerprint = "f2"
    statistics.reference_statistics(other, digits, device=cpu)
    statistics.reference_statistics(Pixels(), digits8, device=cpu)
    assert len(calls) == 3


def test_eval_images_from_npz_and_png_folder(run, tmp_path, capsys, monkeypatch):
    npz = tmp_path / "s.npz"
    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--n",
                "30",
                "--steps",
                "3",
                "--npz",
                str(npz),
                "--out",
                str(tmp_path / "s.png"),
            ]
        )
        == 0
    )
    before = (run / "metrics.jsonl").read_text()
    calls = []
    compute = statistics.compute_statistics
    monkeypatch.setattr(statistics, "compute_statistics", lambda *a, **k: calls.append(a) or compute(*a, **k))
    capsys.readouterr()
    assert main(["eval", "--images", str(npz), "--dataset", "digits"]) == 0
    from_npz = capsys.readouterr().out
    assert from_npz.startswith(f"30 images, features: classifier digits-16, reference: {DIGITS}\n")
    assert "class accuracy" in from_npz  # the npz holds the requested labels
    folder = tmp_path / "pngs"
    folder.mkdir()
    with np.load(npz) as arrays:
        for i, image in enumerate(arrays["images"]):
            Image.fromarray(image[..., 0]).save(folder / f"{i:03d}.png")
    assert main(["eval", "--images", str(folder), "--dataset", "digits"]) == 0
    from_pngs = capsys.readouterr().out
    assert from_pngs.splitlines()[1] == from_npz.splitlines()[1]  # same pixels, same Frechet distance
    assert "class accuracy" not in from_pngs
    assert calls == [], "the run's evaluation already cached the statistics of digits under this classifier"
    assert (run / "metrics.jsonl").read_text() == before, "scoring files writes no run's log"


def test_user_errors_are_one_line(run, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "no-images.npz"
    np.savez(empty, pictures=np.zeros((2, 16, 16, 1), np.uint8), masks=np.zeros(2))
    assert "has no array named 'images' or 'arr_0' (it has: pictures, masks)" in fails(
        capsys, "eval", "--images", str(empty), "--dataset", "digits"
    )
    picture = tmp_path / "grid.jpg"
    picture.write_bytes(b"not an array")
    message = fails(capsys, "eval", "--images", str(picture), "--dataset", "digits")
    assert "grid.jpg: --images takes an .npz, an .npy or a folder of PNGs" in message
    ambiguous = tmp_path / "ambiguous.npy"
    np.save(ambiguous, np.zeros((4, 3, 3, 3), np.uint8))
    message = fails(capsys, "eval", "--images", str(ambiguous), "--dataset", "digits")
    assert "ambiguous.npy: uint8 (4, 3, 3, 3): cannot tell which axis holds the channels" in message
    small = tmp_path / "small.npz"
    np.savez(small, images=np.zeros((4, 8, 8, 1), np.uint8))
    weak = tmp_path / "digits-16.safetensors"
    assert main(["train-classifier", "--dataset", "digits", "--epochs", "1", "--out", str(weak)]) == 0
    message = fails(capsys, "eval", "--images", str(small), "--dataset", "digits", "--classifier", str(weak))
    assert f"{weak} was trained on digits at 16x16, not on digits at 8x8" in message
    weights = tmp_path / "cache" / "weights" / WEIGHTS_FILE
    monkeypatch.setenv("PIXELDIFFUSION_CACHE", str(tmp_path / "cache"))
    message = fails(capsys, "eval", "--run", str(run), "--features", "inception")
    assert f"no Inception weights at {weights}: run `pixeldiffusion download-inception`" in message
    message = fails(capsys, "eval", "--run", str(run), "--features", "inception", "--inception-weights", "w.pth")
    assert "no Inception weights at w.pth: download https://github.com/mseitzer/pytorch-fid/releases/" in message


def test_a_classifier_below_the_minimum_accuracy_is_refused(run, tmp_path, capsys):
    weak = tmp_path / "weak.safetensors"
    accuracy = train_classifier("digits", epochs=1, widths=(8, 16), out=weak).info.test_accuracy
    assert accuracy < classifier.MIN_ACCURACY
    images = tmp_path / "s.npy"
    np.save(images, load_dataset("digits").images[:8].numpy())
    message = fails(capsys, "eval", "--images", str(images), "--dataset", "digits", "--classifier", str(weak))
    assert message.endswith(
        f"{weak} classifies {accuracy:.1%} of digits: 1/6 held out (one split) correctly, below the 95% needed to "
        f"score with it; train a better one with: pixeldiffusion train-classifier --dataset digits --image-size 16 "
        f"--out {weak}\n"
    )
    assert "below the 95%" in fails(capsys, "eval", "--run", str(run), "--n", "4", "--classifier", str(weak))


def test_evaluation_samples_the_classes_in_the_datas_proportions():
    emoji = Reference.of_dataset("emoji")
    labels = torch.tensor(data_labels(1000, emoji, emoji.held_out.class_names))
    share = torch.bincount(emoji.held_out.labels) / len(emoji.held_out.labels)
    assert (torch.bincount(labels) - 1000 * share).abs().max() <= 1  # people & body: 598 of 1000
    digits = Reference.of_dataset("digits")
    assert torch.bincount(torch.tensor(data_labels(100, digits, digits.held_out.class_names))).tolist() == [10] * 10
    assert data_labels(10, digits, ("cat", "dog")) is None  # a model of other classes: each in turn


def test_a_classifier_trains_long_enough_by_default():
    assert classifier.default_epochs(Reference.of_dataset("digits")) == 21
    assert classifier.default_epochs(Reference.of_dataset("emoji")) == 20  # semantic classes: 84% held out


def test_evaluation_with_no_classifier_trains_one_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIXELDIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(classifier, "fit_classifier", functools.partial(classifier.fit_classifier, widths=(16, 32)))
    callback.evaluation_callback(tiny_config(eval_every=2))  # what `train --eval-every` sets up before training
    kept = tmp_path / "cache" / "classifiers" / "digits-16.safetensors"
    assert capsys.readouterr().out == (
        f"no classifier of digits at 16x16 to score with yet: training one (21 epochs, under a CPU minute), kept as "
        f"{kept}\n"
    )
    images = tmp_path / "s.npy"
    np.save(images, load_dataset("digits").images[:8].numpy())
    assert main(["eval", "--images", str(images), "--dataset", "digits"]) == 0
    assert "no classifier" not in capsys.readouterr().out, "the classifier trained once is kept"


def test_eval_images_reads_every_layout_and_value_range(cache, tmp_path):
    pixels = load_dataset("digits").images[:40]  # uint8 (N, 1, 16, 16)
    nchw, nhwc = pixels.numpy(), pixels.permute(0, 2, 3, 1).numpy()
    as_float = nchw.astype(np.float32)
    forms = {  # file -> array(s), and how it is read (after the file's name)
        "nchw.npy": (nchw, ": uint8 (40, 1, 16, 16) read as NCHW, pixels 0..255"),
        "nhwc.npz": ({"images": nhwc}, " 'images': uint8 (40, 16, 16, 1) read as NHWC, pixels 0..255"),
        "grey.npz": ({"arr_0": nchw[:, 0]}, " 'arr_0': uint8 (40, 16, 16) read as (N, H, W) grey, pixels 0..255"),
        "unit.npy": (as_float / 255, ": float32 (40, 1, 16, 16) read as NCHW, floats taken as [0, 1]"),
        "signed.npy": (as_float / 127.5 - 1, ": float32 (40, 1, 16, 16) read as NCHW, floats in [-1, 1]"),
        "nhwc64.npy": (nhwc / 255, ": float64 (40, 16, 16, 1) read as NHWC, floats taken as [0, 1]"),
    }
    distances = set()
    for name, (array, read_as) in forms.items():
        path = tmp_path / name
        if isinstance(array, dict):
            np.savez(path, **array)
        else:
            np.save(path, array)
        evaluation = evaluate_images(path, dataset="digits", device="cpu")
        assert evaluation.read_as == f"{path}{read_as}"
        assert f"\n  read as                 {evaluation.read_as}" in evaluation.table()
        distances.add(evaluation.fd)
    assert len(distances) == 1, "the same pixels, however written, score the same"
    np.savez(tmp_path / "labelled.npz", nhwc, np.arange(40) % 10)  # arr_0 and arr_1, as guided-diffusion writes
    assert torch.equal(read_arrays(tmp_path / "labelled.npz")[1], torch.arange(40) % 10)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 3, 3, 3), np.uint8), "cannot tell which axis holds the channels"),
        (np.zeros((4, 16, 16, 4), np.uint8), "cannot tell which axis holds the channels; expected (N, H, W, C)"),
        (np.zeros((4, 16), np.uint8), "expected (N, H, W, C) or (N, C, H, W) with C 1 or 3, or (N, H, W) grey"),
        (np.zeros((0, 16, 16)), "no images"),
        (np.full((4, 1, 8, 8), 1.5), "floats from 1.5 to 1.5; expected [0, 1] or [-1, 1] (or uint8 0..255)"),
        (np.full((4, 1, 8, 8), np.nan), "some values are NaN or infinite"),
        (np.full((4, 1, 8, 8), 256), "integers from 256 to 256, not pixels 0..255"),
        (np.full((4, 1, 8, 8), "a"), "not numbers"),
    ],
)
def test_eval_images_refuses_what_it_cannot_read_in_one_line(array, message):
    with pytest.raises(PixelDiffusionError, match=re.escape(message)):
        as_uint8_images(array, where="x.npy")


def test_training_evaluates_keeps_the_best_checkpoint_and_keeps_to_its_budget(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(callback, "BUDGET", math.inf)
    monkeypatch.setattr(callback, "FAST", {"sampler": "dpmpp_2m", "steps": 2})
    path = tmp_path / "run"
    config = tiny_config(max_steps=4, checkpoint_every=2, keep=1, eval_every=2, eval_samples=20)
    train(config, path, callbacks=(callback.evaluation_callback(config),))
    lines = eval_lines(path)
    assert [(r["step"], r["n"], r["sampling"]["sampler"], r["sampling"]["steps"]) for r in lines] == [
        (2, 20, "dpmpp_2m", 2),
        (4, 20, "dpmpp_2m", 2),
    ]
    assert all(r["extractor"] == "classifier digits-16" and r["reference"] == DIGITS for r in lines)
    best = path / "checkpoints" / "best.safetensors"
    assert [p.name for p in list_checkpoints(path)] == ["step-00000004.safetensors"], (
        "best is neither pruned nor latest"
    )
    _, meta = load_checkpoint(best)
    winner = min(lines, key=lambda r: r["fd"])
    assert meta["eval"] == winner and meta["step"] == winner["step"]
    assert Pipeline.from_checkpoint(best).sample(2, steps=2).images.shape == (2, 1, 16, 16)

    monkeypatch.setattr(callback, "BUDGET", 0.0)  # after the first evaluation, any more would exceed it
    capsys.readouterr()
    config = tiny_config(max_steps=2, eval_every=1, eval_samples=20)
    train(config, tmp_path / "frugal", callbacks=(callback.evaluation_callback(config),))
    assert [r["step"] for r in eval_lines(tmp_path / "frugal")] == [1]
    assert "step 2: evaluation skipped, evaluating has taken" in capsys.readouterr().out


def conv(name: str, c_out: int, c_in: int, kh: int, kw: int | None = None) -> dict:
    """torchvision's BasicConv2d: conv (no bias) and BatchNorm2d."""
    bn = {f"{name}.bn.{k}": (c_out,) for k in ("weight", "bias", "running_mean", "running_var")}
    return {f"{name}.conv.weight": (c_out, c_in, kh, kw or kh), **bn, f"{name}.bn.num_batches_tracked": ()}


def pytorch_fid_keys() -> dict[str, tuple]:
    """Names and shapes of the tensors in pytorch-fid's weights file: torchvision's Inception3(num_classes=1008,
    aux_logits=False) with FIDInceptionA/C/E blocks, as pytorch-fid 0.3.0's inception.py builds it."""
    keys = {}
    for name, c_out, c_in, k in [("1a_3x3", 32, 3, 3), ("2a_3x3", 32, 32, 3), ("2b_3x3", 64, 32, 3),
                                 ("3b_1x1", 80, 64, 1), ("4a_3x3", 192, 80, 3)]:  # fmt: skip
        keys |= conv(f"Conv2d_{name}", c_out, c_in, k)
    for m, c_in, pool in [("5b", 192, 32), ("5c", 256, 64), ("5d", 288, 64)]:
        p = f"Mixed_{m}.branch"
        keys |= conv(f"{p}1x1", 64, c_in, 1) | conv(f"{p}5x5_1", 48, c_in, 1) | conv(f"{p}5x5_2", 64, 48, 5)
        keys |= conv(f"{p}3x3dbl_1", 64, c_in, 1) | conv(f"{p}3x3dbl_2", 96, 64, 3) | conv(f"{p}3x3dbl_3", 96, 96, 3)
        keys |= conv(f"{p}_pool", pool, c_in, 1)
    p = "Mixed_6a.branch"
    keys |= conv(f"{p}3x3", 384, 288, 3) | conv(f"{p}3x3dbl_1", 64, 288, 1)
    keys |= conv(f"{p}3x3dbl_2", 96, 64, 3) | conv(f"{p}3x3dbl_3", 96, 96, 3)
    for m, c7 in [("6b", 128), ("6c", 160), ("6d", 160), ("6e", 192)]:
        p = f"Mixed_{m}.branch"
        keys |= conv(f"{p}1x1", 192, 768, 1) | conv(f"{p}7x7_1", c7, 768, 1) | conv(f"{p}7x7_2", c7, c7, 1, 7)
        keys |= conv(f"{p}7x7_3", 192, c7, 7, 1) | conv(f"{p}7x7dbl_1", c7, 768, 1)
        keys |= conv(f"{p}7x7dbl_2", c7, c7, 7, 1) | conv(f"{p}7x7dbl_3", c7, c7, 1, 7)
        keys |= conv(f"{p}7x7dbl_4", c7, c7, 7, 1) | conv(f"{p}7x7dbl_5", 192, c7, 1, 7)
        keys |= conv(f"{p}_pool", 192, 768, 1)
    p = "Mixed_7a.branch"
    keys |= conv(f"{p}3x3_1", 192, 768, 1) | conv(f"{p}3x3_2", 320, 192, 3) | conv(f"{p}7x7x3_1", 192, 768, 1)
    keys |= conv(f"{p}7x7x3_2", 192, 192, 1, 7) | conv(f"{p}7x7x3_3", 192, 192, 7, 1)
    keys |= conv(f"{p}7x7x3_4", 192, 192, 3)
    for m, c_in in [("7b", 1280), ("7c", 2048)]:
        p = f"Mixed_{m}.branch"
        keys |= conv(f"{p}1x1", 320, c_in, 1) | conv(f"{p}3x3_1", 384, c_in, 1)
        keys |= conv(f"{p}3x3_2a", 384, 384, 1, 3) | conv(f"{p}3x3_2b", 384, 384, 3, 1)
        keys |= conv(f"{p}3x3dbl_1", 448, c_in, 1) | conv(f"{p}3x3dbl_2", 384, 448, 3)
        keys |= conv(f"{p}3x3dbl_3a", 384, 384, 1, 3) | conv(f"{p}3x3dbl_3b", 384, 384, 3, 1)
        keys |= conv(f"{p}_pool", 192, c_in, 1)
    return keys | {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


class NotWeights:
    """Pickled by reference: a weights-only load must refuse it."""


def test_inception_loads_pytorch_fids_key_names_and_shapes_and_embeds_to_2048(tmp_path, monkeypatch):
    keys = pytorch_fid_keys()
    assert len(keys) == 566  # the entries of pytorch-fid's file
    mine = {k: tuple(v.shape) for k, v in FIDInception().state_dict().items()}
    assert mine == {k: v for k, v in keys.items() if not k.startswith("fc.")}
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in keys.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(0)
        elif name.endswith("running_var") or name.endswith("bn.weight"):
            state[name] = torch.ones(shape)
        elif len(shape) == 4:
            state[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:
            state[name] = torch.zeros(shape)
    monkeypatch.setenv("PIXELDIFFUSION_CACHE", str(tmp_path / "cache"))
    default = download.weights_path(WEIGHTS_FILE)
    default.parent.mkdir(parents=True)
    torch.save(state, default)
    inception = load_inception()  # the cache's copy
    assert inception.path == default and inception.fingerprint == hashlib.sha256(default.read_bytes()).hexdigest()
    assert (
        inception.name.startswith(f"inception-v3 {WEIGHTS_FILE} (sha256 ")
        and "not pytorch-fid's file" in inception.name
    )
    features = inception.embed(torch.rand(2, 1, 16, 16) * 2 - 1)  # grey, 16 x 16: to 3 channels at 299 x 299
    assert features.shape == (2, 2048) and torch.isfinite(features).all()

    renamed = dict(state)
    renamed["Mixed_5b.branch_pool.conv.weight_"] = renamed.pop("Mixed_5b.branch_pool.conv.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(PixelDiffusionError, match="does not hold the FID Inception's weights .*Missing key"):
        load_inception(tmp_path / "renamed.pth")
    torch.save({"weights": NotWeights()}, tmp_path / "code.pth")
    with pytest.raises(PixelDiffusionError, match="is not a loadable PyTorch weights file"):
        load_inception(tmp_path / "code.pth")


def test_download_inception_checks_the_pinned_sha256(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIXELDIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(download, "TIMEOUT", 5)
    payload = bytes(range(256)) * 64
    server.files[f"/fid/{WEIGHTS_FILE}"] = payload
    monkeypatch.setitem(download.WEIGHTS, WEIGHTS_FILE, ([f"{server.url}/fid/"], "0" * 64))
    message = fails(capsys, "download-inception")
    assert (
        f"{WEIGHTS_FILE}: checksum mismatch: sha256 {hashlib.sha256(payload).hexdigest()}, published {'0' * 64}"
        in message
    )
    assert not (tmp_path / "cache" / "weights").exists() or not any((tmp_path / "cache" / "weights").iterdir())
    monkeypatch.setitem(download.WEIGHTS, WEIGHTS_FILE, ([f"{server.url}/fid/"], hashlib.sha256(payload).hexdigest()))
    assert main(["download-inception"]) == 0 and main(["download-inception"]) == 0
    path = tmp_path / "cache" / "weights" / WEIGHTS_FILE
    assert path.read_bytes() == payload and server.requests == [f"/fid/{WEIGHTS_FILE}"] * 2  # the failed one, then one
    assert capsys.readouterr().out.splitlines()[-1] == f"Inception weights (SHA-256 checked): {path}"


def test_pinned_weights_are_pytorch_fids_file():
    mirrors, sha256 = download.WEIGHTS[WEIGHTS_FILE]
    assert [m + WEIGHTS_FILE for m in mirrors] == [
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
    ]
    assert sha256.startswith("6726825d") and len(sha256) == 64  # torch.hub names files by their SHA-256 prefix


@pytest.mark.parametrize("command", ["eval", "train-classifier", "download-inception", "train"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0 and ("--eval-every" in capsys.readouterr().out) == (command == "train")
