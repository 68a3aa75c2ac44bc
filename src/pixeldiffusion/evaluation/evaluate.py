"""Sample quality, end to end: images (sampled from a run, or read from a file) scored against a dataset's held-out
split in one feature space, the API behind `pixeldiffusion eval`.

Every score names the extractor and the reference set it was measured with and its sample count, and comes with
warnings when the count is too small for it to be compared. A run's scores are appended to its metrics.jsonl as
one line with "kind": "eval", at the step and training time of the checkpoint that was sampled.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pixeldiffusion import checkpoint as ckpt
from pixeldiffusion.config import SampleConfig
from pixeldiffusion.data import to_model_range, to_uint8
from pixeldiffusion.data.pictures import SUFFIXES, decode_pictures
from pixeldiffusion.errors import ConfigError, PixelDiffusionError
from pixeldiffusion.evaluation.classifier import TrainedClassifier, classifier_for, classifier_path
from pixeldiffusion.evaluation.inception import load_inception
from pixeldiffusion.evaluation.metrics import (
    Memorisation,
    class_coverage,
    frechet_distance,
    kernel_inception_distance,
    mean_and_covariance,
    memorisation,
    precision_recall,
)
from pixeldiffusion.evaluation.reference import Reference
from pixeldiffusion.evaluation.statistics import Extractor, batched, reference_statistics
from pixeldiffusion.pipeline import Pipeline
from pixeldiffusion.process import Process, resolve_device

FEATURES = ("classifier", "inception")


@dataclass(frozen=True)
class Evaluation:
    """Scores of n images against a reference set, in one extractor's feature space."""

    n: int
    extractor: str
    reference: str
    fd: float  # Frechet distance
    kid: float  # KID: mean of the unbiased MMD^2 over subsets
    kid_std: float  # and its standard deviation over the subsets
    precision: float
    recall: float
    memorisation: Memorisation
    accuracy: float | None = None  # class-conditional images: the classifier's accuracy on the requested classes
    class_entropy: float | None = None  # entropy (nats) of the predicted classes
    classes_present: int | None = None
    num_classes: int | None = None
    read_as: str | None = None  # images from a file: how they were read (layout, value range assumed)
    warnings: tuple[str, ...] = ()

    def record(self) -> dict:
        """The JSON fields: the memorisation flattened (memorisation_median, ...), scores not measured left out."""
        fields = {k: v for k, v in asdict(self).items() if v is not None and k not in ("memorisation", "num_classes")}
        return {**fields, **{f"memorisation_{k}": v for k, v in asdict(self.memorisation).items()}}

    def table(self) -> str:
        """A few lines for a terminal."""
        m = self.memorisation
        rows = [
            ("Frechet distance", f"{self.fd:.4g}"),
            ("KID", f"{self.kid:.4g} ± {self.kid_std:.2g}"),
            ("precision / recall", f"{self.precision:.3f} / {self.recall:.3f}"),
        ]
        if self.accuracy is not None:
            rows.append(("class accuracy", f"{self.accuracy:.3f}"))
        if self.class_entropy is not None:
            k = self.num_classes
            coverage = (
                f"{self.class_entropy:.3f} nats of ln {k} = {math.log(k):.3f}; {self.classes_present}/{k} present"
            )
            rows.append(("class coverage", coverage))
        nearest = (
            f"median {m.median:.3f} (train spacing {m.train_median:.3f}); {m.fraction:.1%} within {m.threshold:.3f}"
        )
        rows.append(("nearest training image", nearest))
        if self.read_as is not None:
            rows.append(("read as", self.read_as))
        head = f"{self.n} images, features: {self.extractor}, reference: {self.reference}"
        return "\n".join(
            [head, *(f"  {name:<24}{value}" for name, value in rows), *(f"warning: {w}" for w in self.warnings)]
        )


def sample_warnings(n: int, reference_count: int, dim: int) -> tuple[str, ...]:
    """Why scores of these counts cannot be compared with the literature (or with each other at another n)."""
    warnings = []
    if n < dim:
        warnings.append(
            f"{n} images < {dim} feature dimensions: their covariance is singular and the Frechet distance is "
            "biased upwards; compare scores only at equal n"
        )
    if reference_count < dim:
        warnings.append(f"the reference has only {reference_count} images < {dim} feature dimensions")
    return tuple(warnings)


def score(
    images: torch.Tensor,
    *,
    reference: Reference,
    extractor: Extractor,
    classifier: TrainedClassifier | None = None,
    labels: torch.Tensor | None = None,
    device: torch.device,
) -> Evaluation:
    """Score uint8 images (N, C, H, W) against the reference: Frechet distance, KID, precision and recall in the
    extractor's feature space (against the cached reference statistics), the distance of each image to its nearest
    training image in pixel space, and, given a classifier, the class coverage of its predictions and, given the
    requested labels, its accuracy."""
    if len(images) < 2:
        raise PixelDiffusionError(f"scoring needs at least 2 images, got {len(images)}")
    expected = reference.held_out.shape
    if tuple(images.shape[1:]) != expected:
        raise PixelDiffusionError(
            f"the images are {'x'.join(map(str, images.shape[1:]))} (channels x height x width), but "
            f"{reference.data.dataset} at {reference.geometry} is {'x'.join(map(str, expected))}"
        )
    stats = reference_statistics(extractor, reference, device=device)
    fake = batched(extractor.embed, images, device=device)
    mu, sigma = mean_and_covariance(fake)
    kid, kid_std = kernel_inception_distance(fake, stats.features)
    m = min(len(fake), len(stats.features))  # precision and recall compare sets of equal size
    real = stats.features[torch.randperm(len(stats.features), generator=torch.Generator().manual_seed(0))[:m]]
    precision, recall = precision_recall(real, fake[:m])
    train = reference.train.images
    scores = {}
    if classifier is not None:
        predicted = batched(classifier.logits, images, device=device).argmax(1)
        k = len(classifier.info.class_names)
        entropy, present = class_coverage(predicted, k)
        scores = {"class_entropy": entropy, "classes_present": present, "num_classes": k}
        if labels is not None:
            scores["accuracy"] = float((predicted == labels.cpu()).double().mean())
    return Evaluation(
        n=len(images),
        extractor=extractor.name,
        reference=f"{reference.name} at {reference.geometry}",
        fd=frechet_distance(mu, sigma, stats.mu, stats.sigma),
        kid=kid,
        kid_std=kid_std,
        precision=precision,
        recall=recall,
        memorisation=memorisation(to_model_range(images).flatten(1), to_model_range(train).flatten(1)),
        warnings=sample_warnings(len(images), stats.count, fake.shape[1]),
        **scores,
    )


def data_labels(n: int, reference: Reference, classes: tuple[str, ...]) -> list[int] | None:
    """n class indices in the proportions of the reference images' classes (class c for sample i when the classes'
    cumulative share first exceeds (i + 1/2) / n), so that the samples' mixture of classes is the data's: the
    Frechet distance compares with p(x) = sum_y p(y) p(x | y), and on unbalanced data (the emoji: 60% people)
    every class in turn would be a different distribution. None (every class in turn) when the reference has no
    labels or other classes than the model."""
    labels = reference.held_out.labels
    if labels is None or reference.held_out.class_names != classes:
        return None
    share = torch.bincount(labels, minlength=len(classes)).double().cumsum(0)
    share /= share[-1].clone()
    return torch.searchsorted(share, (torch.arange(n, dtype=torch.float64) + 0.5) / n, right=True).tolist()


def sample_and_score(
    pipe: Pipeline,
    config: SampleConfig,
    *,
    reference: Reference,
    extractor: Extractor,
    classifier: TrainedClassifier | None,
    processes: Process | None = None,
    progress: bool = False,
) -> Evaluation:
    """Sample config.n images with these settings (a class-conditional model's classes in the reference's
    proportions, `data_labels`) and `score` them, the requested classes given to the classifier; with `processes`,
    the sampling is shared out over them; `progress` shows a progress bar of the sampling."""
    labels = data_labels(config.n, reference, pipe.classes) if pipe.conditioning == "class" else None
    samples = pipe.sample(labels=labels, processes=processes, progress=progress, **asdict(config))
    return score(
        to_uint8(samples.images),
        reference=reference,
        extractor=extractor,
        classifier=classifier,
        labels=samples.cond if pipe.conditioning == "class" else None,
        device=pipe.device,
    )


def extractors(
    features: str,
    reference: Reference,
    *,
    inception_weights: str | Path | None = None,
    classifier: str | Path | None = None,
    device: torch.device,
) -> tuple[Extractor, TrainedClassifier | None]:
    """The feature extractor named by `features`, and the classifier that judges classes: required for classifier
    features, else used when the reference has labels and a classifier was trained (or given)."""
    if features not in FEATURES:
        raise ConfigError(f"unknown features {features!r}; choose one of {', '.join(FEATURES)}")
    labelled = reference.held_out.labels is not None
    if features == "classifier" and not labelled:
        raise PixelDiffusionError(
            f"{reference.data.dataset} has no class labels, so no classifier to take features from: "
            "use --features inception"
        )
    judge = None
    if labelled and (features == "classifier" or classifier or classifier_path(reference).is_file()):
        judge = classifier_for(reference, path=classifier, device=device)
    return (judge if features == "classifier" else load_inception(inception_weights, device=device)), judge


def log_evaluation(run_dir: str | Path, evaluation: Evaluation, *, step: int, elapsed: float, sampling: dict) -> dict:
    """Append the scores to the run's metrics.jsonl as one "kind": "eval" line; returns it."""
    record = {
        "kind": "eval",
        "step": step,
        "elapsed_s": round(elapsed, 2),
        **evaluation.record(),
        "sampling": sampling,
    }
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def evaluate_run(
    run_dir: str | Path,
    *,
    n: int = 1000,
    features: str = "classifier",
    inception_weights: str | Path | None = None,
    classifier: str | Path | None = None,
    data_dir: str | None = None,
    dataset: str | None = None,
    device: str | torch.device = "auto",
    processes: Process | None = None,
    progress: bool = False,
    **sampling,
) -> tuple[Evaluation, dict]:
    """Sample n images from the latest checkpoint of a run (every class in turn for a class-conditional model;
    `sampling`: SampleConfig fields such as sampler, steps, guidance, seed), score them against the held-out split
    of its dataset (read from data_dir if given) and log the scores; returns them and the logged line. With
    `processes` (a torchrun launch) they share the sampling out and the main process logs. Any other model that
    `Pipeline.from_pretrained` opens (a diffusers folder, hf://user/repo) is scored against `dataset` (default: the
    one it records) and nothing is logged; its record has no step."""
    from pixeldiffusion.interop.pretrained import UNKNOWN_DATASET

    run = (Path(run_dir) / "checkpoints").is_dir()
    if run:
        path = ckpt.latest_checkpoint(run_dir)
        _, meta = ckpt.load_checkpoint(path)
        pipe = Pipeline.from_checkpoint(path, device=device)
    else:
        pipe, meta = Pipeline.from_pretrained(run_dir, device=device), {"step": None, "elapsed": None}
    data = pipe.config.data if dataset is None else replace(pipe.config.data, dataset=dataset)
    if data.dataset == UNKNOWN_DATASET:
        raise PixelDiffusionError(f"{run_dir} does not record its dataset: give the one to compare with, --dataset")
    reference = Reference.of_run(replace(pipe.config, data=data), data_dir=data_dir)
    extractor, judge = extractors(
        features, reference, inception_weights=inception_weights, classifier=classifier, device=pipe.device
    )
    config = replace(pipe.config.sample, n=n, **sampling)
    evaluation = sample_and_score(
        pipe,
        config,
        reference=reference,
        extractor=extractor,
        classifier=judge,
        processes=processes,
        progress=progress,
    )
    record = {"step": meta["step"], "elapsed": meta["elapsed"], "sampling": sampling_settings(config)}
    if not run or (processes and not processes.is_main):
        return evaluation, record
    return evaluation, log_evaluation(run_dir, evaluation, **record)


def sampling_settings(config: SampleConfig) -> dict:
    """What decides the quality of samples, for the log."""
    return {k: getattr(config, k) for k in ("sampler", "steps", "guidance", "eta", "seed")}


def evaluate_images(
    path: str | Path,
    *,
    dataset: str,
    data_dir: str | None = None,
    pad: bool = False,
    features: str = "classifier",
    inception_weights: str | Path | None = None,
    classifier: str | Path | None = None,
    device: str = "auto",
) -> Evaluation:
    """Score images from anywhere against a dataset at their size (padded when pad): an .npz or .npy array as other
    libraries write them (see `read_arrays`; an .npz may add the requested "labels"), or a folder of pictures
    (brought to the dataset's channels). The evaluation's `read_as` says how they were read."""
    path, target = Path(path), resolve_device(device)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if not files:
            raise PixelDiffusionError(f"{path}: no PNG, JPEG or WebP pictures in it")
        with Image.open(files[0]) as first:
            size = first.width
        reference = Reference.of_dataset(dataset, data_dir=data_dir, image_size=size, pad=pad)
        channels = reference.held_out.shape[0]
        images = torch.from_numpy(decode_pictures([(str(p), p) for p in files], size=size, channels=channels))
        labels, read_as = None, f"{path}: {len(files)} pictures, at {size}x{size} {'grey' if channels == 1 else 'RGB'}"
    else:
        images, labels, read_as = read_arrays(path)
        reference = Reference.of_dataset(dataset, data_dir=data_dir, image_size=images.shape[-1], pad=pad)
    extractor, judge = extractors(
        features, reference, inception_weights=inception_weights, classifier=classifier, device=target
    )
    evaluation = score(
        images, reference=reference, extractor=extractor, classifier=judge, labels=labels, device=target
    )
    return replace(evaluation, read_as=read_as)


IMAGE_ARRAYS = ("images", "arr_0")  # names in an .npz: `sample --npz`'s; np.savez's first unnamed (guided-diffusion)


def read_arrays(path: Path) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(uint8 images (N, C, H, W), requested labels or None, how the images were read) of an .npy, or of an .npz
    holding them as "images", "arr_0" or its only array, with labels as "labels" (or "arr_1" beside "arr_0")."""
    if not path.is_file():
        raise PixelDiffusionError(f"{path}: no such file or folder")
    if path.suffix.lower() not in (".npz", ".npy"):
        raise PixelDiffusionError(f"{path}: --images takes an .npz, an .npy or a folder of PNGs")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            found, name = {"": loaded}, ""
        else:
            with loaded:
                found = {key: loaded[key] for key in loaded.files}
            only = next(iter(found)) if len(found) == 1 else None
            name = next((key for key in IMAGE_ARRAYS if key in found), only)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise PixelDiffusionError(f"cannot read {path} as .npz or .npy: {e}") from e
    if name is None:
        raise PixelDiffusionError(
            f"{path} has no array named 'images' or 'arr_0' (it has: {', '.join(found) or 'none'}); "
            "expected images as `pixeldiffusion sample --npz` writes them"
        )
    where = f"{path} '{name}'" if name else str(path)
    images, read_as = as_uint8_images(found[name], where=where)
    labels = found.get("labels", found.get("arr_1") if name == "arr_0" else None)
    if labels is not None and (labels.shape != (len(images),) or labels.dtype.kind not in "iu"):
        raise PixelDiffusionError(
            f"{path}: {len(images)} images but labels {labels.dtype} {labels.shape}; expected {len(images)} integers"
        )
    return images, None if labels is None else torch.from_numpy(labels.astype(np.int64)), read_as


def as_uint8_images(array: np.ndarray, *, where: str) -> tuple[torch.Tensor, str]:
    """uint8 images (N, C, H, W) of an array as other libraries write them, and a line saying how it was read.

    Layouts: (N, H, W, C) or (N, C, H, W) with C 1 or 3 (when both fit, the one whose images are square), and
    (N, H, W) grey. Values: uint8 (or other integers in 0..255), or floats in [0, 1], or in [-1, 1] when any is
    negative.
    """
    described = f"{where}: {array.dtype} {tuple(array.shape)}"
    expected = "expected (N, H, W, C) or (N, C, H, W) with C 1 or 3, or (N, H, W) grey"
    if array.ndim == 3:
        layout, array = "(N, H, W) grey", array[:, None]
    elif array.ndim == 4:
        _, a, b, c = array.shape
        layouts = [layout for layout, fits in (("NCHW", a in (1, 3)), ("NHWC", c in (1, 3))) if fits]
        if len(layouts) == 2:
            layouts = [layout for layout, square in (("NCHW", b == c), ("NHWC", a == b)) if square]
        if len(layouts) != 1:
            raise PixelDiffusionError(f"{described}: cannot tell which axis holds the channels; {expected}")
        layout = layouts[0]
        array = array if layout == "NCHW" else array.transpose(0, 3, 1, 2)
    else:
        raise PixelDiffusionError(f"{described}: {expected}")
    if not array.size:
        raise PixelDiffusionError(f"{described}: no images")
    if array.dtype.kind in "iu":
        if array.min() < 0 or array.max() > 255:
            raise PixelDiffusionError(f"{described}: integers from {array.min()} to {array.max()}, not pixels 0..255")
        pixels, values = torch.from_numpy(array.astype(np.uint8)), "pixels 0..255"
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise PixelDiffusionError(f"{described}: some values are NaN or infinite")
        low, high = float(array.min()), float(array.max())
        if low < -1 or high > 1:
            raise PixelDiffusionError(
                f"{described}: floats from {low:.4g} to {high:.4g}; expected [0, 1] or [-1, 1] (or uint8 0..255)"
            )
        x = torch.from_numpy(array.astype(np.float32))
        pixels, values = (
            (to_uint8(x * 2 - 1), "floats taken as [0, 1]") if low >= 0 else (to_uint8(x), "floats in [-1, 1]")
        )
    else:
        raise PixelDiffusionError(f"{described}: not numbers; expected uint8 pixels or floats in [0, 1] or [-1, 1]")
    return pixels.contiguous(), f"{described} read as {layout}, {values}"
