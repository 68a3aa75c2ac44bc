"""Sample quality against the number of network evaluations (NFE) for every sampler, from one trained run.

For each sampler and each NFE it samples n images (every class in turn for a class-conditional run) from the
same noise, scores them with `pixeldiffusion eval`'s classifier Frechet distance, appends a JSON line to
--out and finally plots FD against NFE for every point in --out with the same run, n, grid and precision (so a
curve can be completed over several invocations; a repeated point keeps its latest line).

    python benchmarks/nfe_curve.py --run runs/mnist --data-dir ../shared/data/mnist --n 1000 \
        --nfe 5,10,20,50,100 --ddpm-nfe 1000 --plot docs/images/nfe-curve.png

Heun takes 2 * steps - 1 evaluations for `steps` grid steps, so its points sit at the odd NFE nearest above.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pixeldiffusion.evaluation.evaluate import extractors, sample_and_score, sampling_settings  # noqa: E402
from pixeldiffusion.evaluation.reference import Reference  # noqa: E402
from pixeldiffusion.pipeline import Pipeline  # noqa: E402
from pixeldiffusion.sampling import nfe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def steps_for(sampler: str, evaluations: int) -> int:
    """Grid steps that spend about `evaluations` network calls (Heun: the odd count at or above it)."""
    return (evaluations + 2) // 2 if sampler == "heun" else evaluations


def plot(records: list[dict], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for sampler in dict.fromkeys(r["sampling"]["sampler"] for r in records):
        points = sorted((r["nfe"], r["fd"]) for r in records if r["sampling"]["sampler"] == sampler)
        ax.plot(*zip(*points, strict=True), marker="o", label=sampler)
    ax.set(xscale="log", yscale="log", xlabel="network evaluations (NFE)", ylabel="Frechet distance (classifier)")
    ticks = sorted({r["nfe"] for r in records if r["sampling"]["sampler"] != "heun"} or {r["nfe"] for r in records})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    low, high = min(r["fd"] for r in records), max(r["fd"] for r in records)
    ax.set_yticks([v for v in (0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 20, 50, 100, 200) if low / 1.5 <= v <= high * 1.5])
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/mnist")
    p.add_argument("--data-dir")
    p.add_argument("--n", type=int, default=1000, help="images per point")
    p.add_argument("--nfe", default="5,10,20,50,100")
    p.add_argument("--samplers", default="ddim,dpmpp_2m,heun,ddpm")
    p.add_argument("--ddpm-nfe", default="1000", help="extra NFE for ddpm only (comma-separated, '' for none)")
    p.add_argument("--spacing", default="trailing")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    p.add_argument("--compile", action="store_true", help="torch.compile the network once for all points")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / f"nfe-curve-{time.strftime('%Y-%m-%d')}.jsonl")
    p.add_argument("--plot", type=Path, default=Path("docs/images/nfe-curve.png"))
    args = p.parse_args()

    pipe = Pipeline.from_run(args.run)
    reference = Reference.of_run(pipe.config, data_dir=args.data_dir)
    extractor, judge = extractors("classifier", reference, device=pipe.device)
    budgets = [int(v) for v in args.nfe.split(",")]
    for sampler in args.samplers.split(","):
        extra = [int(v) for v in args.ddpm_nfe.split(",") if v] if sampler == "ddpm" else []
        for evaluations in budgets + extra:
            steps = steps_for(sampler, evaluations)
            config = replace(
                pipe.config.sample,
                n=args.n,
                sampler=sampler,
                steps=steps,
                spacing=args.spacing,
                precision=args.precision,
                seed=args.seed,
                compile=args.compile,
                batch_size=args.batch_size,
                eta=0.0,
                guidance=1.0,
            )
            start = time.perf_counter()
            evaluation = sample_and_score(pipe, config, reference=reference, extractor=extractor, classifier=judge)
            record = {
                "run": str(args.run),
                "nfe": nfe(sampler, steps),
                "sampling": {**sampling_settings(config), "spacing": args.spacing, "precision": args.precision},
                **evaluation.record(),
                "seconds": round(time.perf_counter() - start, 1),
            }
            print(json.dumps(record), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
    curve = (str(args.run), args.n, args.spacing, args.precision)
    points = {}
    for line in args.out.read_text().splitlines():
        r = json.loads(line)
        if (r["run"], r["n"], r["sampling"]["spacing"], r["sampling"]["precision"]) == curve:
            points[r["sampling"]["sampler"], r["nfe"]] = r
    plot(
        list(points.values()),
        args.plot,
        f"{args.run}: classifier FD at n = {args.n} against NFE ({args.spacing} grid, {args.precision})",
    )


if __name__ == "__main__":
    main()
