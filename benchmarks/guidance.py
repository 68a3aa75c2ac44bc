"""Guidance against class accuracy and diversity: sample K images of every class from a run at several
classifier-free guidance scales (a class-conditional run) and/or classifier guidance scales (a noisy classifier
from `train-classifier --noisy`, on any run), and judge them with the dataset's own classifier.

    python benchmarks/guidance.py --run runs/digits --per-class 100 --scales 0,1,2,4
    python benchmarks/guidance.py --run runs/uncond --classifier runs/uncond/classifier --classifier-scales 0,1,2,4

For each pair of scales (guidance s = 1: plain conditional, 0: unconditional) it prints one JSON line: the
classifier's accuracy on the requested classes overall and per class, and the diversity within each class (the
mean pixel distance between two samples of the class, RMS in [-1, 1] units) next to the same for real images of
that class, plus the images per second of the sampling and the Frechet distance, precision and recall of
`pixeldiffusion eval` in the classifier's feature space.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from pixeldiffusion.data import to_model_range, to_uint8
from pixeldiffusion.evaluation.evaluate import extractors, score
from pixeldiffusion.evaluation.reference import Reference
from pixeldiffusion.pipeline import Pipeline


def within_class_spread(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Per class, the mean RMS pixel distance between two different images of the class."""
    x = to_model_range(images).flatten(1)
    spread = []
    for c in range(num_classes):
        members = x[labels == c]
        d = torch.cdist(members, members) / members.shape[1] ** 0.5
        k = len(members)
        spread.append(float(d.sum() / (k * (k - 1))))
    return spread


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/digits")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--scales", default="1", help="classifier-free guidance scales (1 for an unconditional run)")
    p.add_argument("--classifier", help="a noisy classifier to guide with (train-classifier --noisy)")
    p.add_argument("--classifier-scales", default="", help="classifier guidance scales, with --classifier")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    pipe = Pipeline.from_run(args.run)
    reference = Reference.of_run(pipe.config)
    extractor, judge = extractors("classifier", reference, device=pipe.device)
    classes = len(judge.info.class_names)
    real = reference.held_out
    real_spread = within_class_spread(real.images, real.labels, classes)
    guidance_scales = [float(v) for v in args.scales.split(",")]
    classifier_scales = [float(v) for v in args.classifier_scales.split(",")] if args.classifier else [None]
    for s, c in itertools.product(guidance_scales, classifier_scales):
        guide = {"classifier": args.classifier, "classifier_scale": c} if args.classifier else {}
        start = time.perf_counter()
        samples = pipe.sample(
            per_class=args.per_class, guidance=s, sampler=args.sampler, steps=args.steps, seed=args.seed, **guide
        )
        seconds = time.perf_counter() - start
        images, labels = to_uint8(samples.images).cpu(), samples.cond.cpu()
        predicted = judge.logits(to_model_range(images).to(pipe.device)).argmax(1).cpu()
        per_class = [float((predicted[labels == c] == c).double().mean()) for c in range(classes)]
        spread = within_class_spread(images, labels, classes)
        quality = score(
            images, reference=reference, extractor=extractor, classifier=judge, labels=labels, device=pipe.device
        )
        print(
            json.dumps(
                {
                    "run": args.run,
                    "guidance": s,
                    "classifier_scale": c,
                    "sampler": f"{args.sampler} {args.steps}",
                    "n": len(images),
                    "images_per_s": round(len(images) / seconds, 2),
                    "accuracy": float((predicted == labels).double().mean()),
                    "accuracy_per_class": [round(a, 3) for a in per_class],
                    "spread_per_class": [round(v, 3) for v in spread],
                    "real_spread_per_class": [round(v, 3) for v in real_spread],
                    "spread_ratio_min": round(min(a / b for a, b in zip(spread, real_spread, strict=True)), 3),
                    "fd": quality.fd,
                    "precision": quality.precision,
                    "recall": quality.recall,
                    "classes_present": quality.classes_present,
                    "extractor": quality.extractor,
                    "reference": quality.reference,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
