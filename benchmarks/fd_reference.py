"""Reference values of the offline Frechet distance, so a score can be read: real held-out images and damaged
versions of them (blurred, noisy, a collapsed sample of few classes), at several sample counts, against the
dataset's test statistics in its own classifier's feature space.

    python benchmarks/fd_reference.py --dataset mnist --data-dir ../shared/data/mnist

The "real" images are training images (never seen by the reference statistics, which are of the test split),
so their distance is what a perfect generator of the training distribution would score at that n.
Prints JSON lines, one per (kind, n); needs the classifier (`pixeldiffusion train-classifier --dataset ...`).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from pixeldiffusion.data import to_model_range, to_uint8
from pixeldiffusion.evaluation.evaluate import extractors, score
from pixeldiffusion.evaluation.reference import Reference
from pixeldiffusion.process import resolve_device


def blurred(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """A Gaussian blur of standard deviation sigma pixels (5x5 kernel)."""
    x = torch.arange(-2, 3, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (k[:, None] * k[None, :] / k.sum() ** 2).expand(images.shape[1], 1, 5, 5)
    return F.conv2d(images.float(), kernel, padding=2, groups=images.shape[1]).round().clamp(0, 255).to(torch.uint8)


def noisy(images: torch.Tensor, std: float = 0.2, *, seed: int = 0) -> torch.Tensor:
    """Gaussian noise of standard deviation std in [-1, 1] units added to every pixel."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return to_uint8(to_model_range(images) + std * noise)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir")
    p.add_argument("--sizes", default="1000,2000,10000", help="sample counts, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    device = resolve_device("auto")
    reference = Reference.of_dataset(args.dataset, data_dir=args.data_dir)
    extractor, judge = extractors("classifier", reference, device=device)
    train = reference.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))
    few_classes = order[(train.labels[order] < 3)]  # a collapsed generator: only digits 0, 1 and 2
    for n in (int(v) for v in args.sizes.split(",")):
        picked = order[:n]
        kinds = {
            "real (training images)": train.images[picked],
            "blurred (sigma 1 px)": blurred(train.images[picked]),
            "noisy (std 0.2)": noisy(train.images[picked], seed=args.seed),
            "collapsed (3 classes)": train.images[few_classes[:n]],
        }
        for kind, images in kinds.items():
            result = score(images, reference=reference, extractor=extractor, classifier=judge, device=device)
            record = {"dataset": args.dataset, "kind": kind, "n": n, **result.record()}
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
