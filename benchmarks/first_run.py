"""How recognisable a run's samples are: sample N images with the run's own sampler and judge them with the
dataset's classifier (the one `eval` uses): its mean confidence (the largest softmax probability), the share of
images it is at least 90% sure of, the number of classes present and the entropy of the predicted classes, and
for a class-conditional run its accuracy on the requested classes.

    python benchmarks/first_run.py --run runs/digits --n 500

Prints one JSON line; measured before and after a change of the default recipe (README, "The first run").
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pixeldiffusion.data import to_model_range, to_uint8
from pixeldiffusion.evaluation.classifier import classifier_for
from pixeldiffusion.evaluation.metrics import class_coverage
from pixeldiffusion.evaluation.reference import Reference
from pixeldiffusion.pipeline import Pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/digits")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    pipe = Pipeline.from_run(args.run)
    judge = classifier_for(Reference.of_run(pipe.config), device=pipe.device)
    start = time.perf_counter()
    samples = pipe.sample(args.n, seed=args.seed)
    seconds = time.perf_counter() - start
    images = to_model_range(to_uint8(samples.images)).to(pipe.device)
    with torch.no_grad():
        probabilities = judge.logits(images).softmax(1).cpu()
    confidence, predicted = probabilities.max(1)
    entropy, present = class_coverage(predicted, probabilities.shape[1])
    record = {
        "run": args.run,
        "n": args.n,
        "sampler": f"{pipe.config.sample.sampler} {pipe.config.sample.steps}",
        "sampling_s": round(seconds, 1),
        "mean_confidence": round(float(confidence.mean()), 4),
        "share_confident_90": round(float((confidence >= 0.9).double().mean()), 4),
        "classes_present": present,
        "class_entropy": round(entropy, 4),
    }
    if pipe.conditioning == "class":
        record["accuracy"] = round(float((predicted == samples.cond.cpu()).double().mean()), 4)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
